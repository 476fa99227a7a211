// libFuzzer harness: IDX image and label files, plain and gzip-compressed.
// The first input byte selects how the rest is stored: odd = gzip-compressed by the harness (so
// that mutations explore the IDX structure behind a valid gzip stream), even = written as it is
// (which also covers corrupt gzip streams, from the .gz seeds).
#include <zlib.h>

#include <cstdint>
#include <cstdlib>
#include <vector>

#include <torch/torch.h>

#include "data/idx.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool compress = data[0] & 1;
  ++data;
  --size;
  std::string path;
  if (compress) {
    path = hd::fuzz::scratch_dir() + "/in.idx.gz";
    gzFile f = gzopen(path.c_str(), "wb");
    if (!f) std::abort();
    if (size && gzwrite(f, data, static_cast<unsigned>(size)) != static_cast<int>(size)) std::abort();
    gzclose(f);
  } else {
    path = hd::fuzz::write_input("in.idx", data, size);
  }
  hd::fuzz::expect_only_hd_errors("idx images", [&] {
    auto t = hd::data::read_idx_images(path);
    if (t.dim() != 3 || t.scalar_type() != torch::kUInt8 || t.numel() == 0) std::abort();
  });
  hd::fuzz::expect_only_hd_errors("idx labels", [&] {
    auto t = hd::data::read_idx_labels(path);
    if (t.dim() != 1 || t.scalar_type() != torch::kInt64 || t.numel() == 0) std::abort();
    if (t.min().item<int64_t>() < 0 || t.max().item<int64_t>() > 255) std::abort();
  });
  return 0;
}
