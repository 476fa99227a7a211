// libFuzzer harness: safetensors reader (header and tensor data), plus a write/read round trip
// of whatever it accepted.
#include <cstdint>
#include <cstring>

#include <torch/torch.h>

#include "fuzz/fuzz_util.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = hd::fuzz::write_input("in.safetensors", data, size);
  hd::fuzz::expect_only_hd_errors("safetensors", [&] {
    auto f = hd::io::SafeTensorsFile::open(path);
    for (const auto& t : f.tensors()) {
      // Every accepted entry is consistent with the file: in bounds, exact byte size.
      if (t.end < t.begin || f.data_start() + t.end > f.file_size()) std::abort();
      if (!f.contains(t.name) || f.info(t.name).name != t.name) std::abort();
    }
    auto all = f.load_all();
    for (size_t i = 0; i < all.size(); ++i) {
      const auto& info = f.tensors()[i];
      const auto& t = all[i].second;
      if (static_cast<uint64_t>(t.nbytes()) != info.end - info.begin) std::abort();
      if (t.sizes().vec() != info.shape) std::abort();
    }
    // What the reader accepts, the writer must write back and the reader read identically.
    const std::string out = hd::fuzz::scratch_dir() + "/out.safetensors";
    hd::io::save_safetensors(out, all, f.metadata());
    auto g = hd::io::SafeTensorsFile::open(out);
    if (g.metadata() != f.metadata() || g.tensors().size() != all.size()) std::abort();
    for (const auto& [name, t] : all) {
      auto u = g.load(name);
      if (u.scalar_type() != t.scalar_type() || u.sizes() != t.sizes() ||
          (t.nbytes() && std::memcmp(u.data_ptr(), t.data_ptr(), t.nbytes()) != 0))
        std::abort();
    }
  });
  return 0;
}
