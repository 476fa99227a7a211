// libFuzzer harness: PNG / JPEG decoding (decode_image, what every ImageFolder sample goes
// through; load_image only adds reading the file).
#include <cstdint>
#include <cstdlib>

#include <torch/torch.h>

#include "data/image_codec.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  hd::fuzz::expect_only_hd_errors("image", [&] {
    auto t = hd::data::decode_image(data, size, "fuzz-input");
    if (t.dim() != 3 || t.size(0) != 3 || t.scalar_type() != torch::kUInt8 || !t.is_contiguous()) std::abort();
    if (t.size(1) * t.size(2) > hd::data::kMaxImagePixels) std::abort();
  });
  return 0;
}
