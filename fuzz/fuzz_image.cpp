// libFuzzer harness: PNG / JPEG decoding (decode_image, what every ImageFolder sample goes
// through; load_image only adds reading the file) and the loader's one-step decode + transform
// (decode_transform: JPEG header, region decoding at full and reduced DCT scales, resampling).
#include <cstdint>
#include <cstdlib>

#include <torch/torch.h>

#include "data/decode_transform.h"
#include "data/image_codec.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  hd::fuzz::expect_only_hd_errors("image", [&] {
    auto t = hd::data::decode_image(data, size, "fuzz-input");
    if (t.dim() != 3 || t.size(0) != 3 || t.scalar_type() != torch::kUInt8 || !t.is_contiguous()) std::abort();
    if (t.size(1) * t.size(2) > hd::data::kMaxImagePixels) std::abort();
  });
  hd::fuzz::expect_only_hd_errors("image/decode_transform", [&] {
    // The input's last byte picks the training crop (seed) and the output size, so that small
    // and large crops, reduced DCT scales and evaluation geometry are all reached.
    hd::data::TransformConfig cfg;
    const unsigned knob = size ? data[size - 1] : 0;
    cfg.train = (knob & 1) != 0;
    cfg.size = 8 + (knob >> 1) % 48;
    std::mt19937_64 rng(knob);
    auto t = hd::data::decode_transform(data, size, "fuzz-input", cfg, rng);
    if (t.dim() != 3 || t.size(0) != 3 || t.size(1) != cfg.size || t.size(2) != cfg.size) std::abort();
    if (!torch::isfinite(t).all().item<bool>()) std::abort();
  });
  return 0;
}
