// libFuzzer harness: tar archives as WebDataset shards. The reader walks the headers (ustar,
// pax, GNU long names, base-256 sizes) of the input held in memory; the shard scan groups the
// members into samples and checks labels and image signatures, failing on the first bad sample
// and, again, skipping bad samples.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "data/webdataset.h"
#include "fuzz/fuzz_util.h"
#include "io/tar.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto read_at = [&](uint64_t off, void* buf, size_t n) {
    // The reader promises to stay inside the archive.
    if (off > size || n > size - off) std::abort();
    if (n) std::memcpy(buf, data + off, n);
  };
  hd::fuzz::expect_only_hd_errors("tar", [&] {
    hd::io::TarReader r("in.tar", size, read_at);
    hd::io::TarMember m;
    uint64_t last = 0;
    while (r.next(m)) {
      if (m.offset > size || m.size > size - m.offset || m.offset < last + 512) std::abort();
      if (m.name.size() > hd::io::kMaxTarNameBytes) std::abort();
      last = m.offset;
    }
  });
  for (bool skip_bad : {false, true}) {
    hd::fuzz::expect_only_hd_errors("shard", [&] {
      auto scan = hd::data::scan_shard("in.tar", size, read_at, skip_bad ? 0 : 3, skip_bad);
      for (const auto& s : scan.samples)
        if (s.offset > size || s.size > size - s.offset || s.label < 0 || s.label >= hd::data::kMaxShardClasses)
          std::abort();
    });
  }
  return 0;
}
