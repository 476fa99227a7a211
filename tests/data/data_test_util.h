// Helpers shared by the data-pipeline tests: hand-made IDX files, a synthetic in-memory data set
// (temporary folders come from tests/test_util.h).
#pragma once

#include <unistd.h>
#include <zlib.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "data/dataset.h"
#include "test_util.h"
#include "util/error.h"

namespace hd::data::testing {

using hd::testing::TempDir;

inline void append_be32(std::vector<uint8_t>& out, uint32_t v) {
  out.push_back(static_cast<uint8_t>(v >> 24));
  out.push_back(static_cast<uint8_t>(v >> 16));
  out.push_back(static_cast<uint8_t>(v >> 8));
  out.push_back(static_cast<uint8_t>(v));
}

// IDX bytes: magic, dims, payload (any of which may be deliberately inconsistent).
inline std::vector<uint8_t> idx_bytes(uint32_t magic, const std::vector<uint32_t>& dims,
                                      const std::vector<uint8_t>& payload) {
  std::vector<uint8_t> out;
  append_be32(out, magic);
  for (uint32_t d : dims) append_be32(out, d);
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

inline void write_plain(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw std::runtime_error("cannot write " + path);
  if (!bytes.empty()) std::fwrite(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
}

inline void write_gz(const std::string& path, const std::vector<uint8_t>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  if (!f) throw std::runtime_error("cannot write " + path);
  if (!bytes.empty()) gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(f);
}

inline std::vector<uint8_t> read_all(const std::string& path) {
  std::vector<uint8_t> out;
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw std::runtime_error("cannot read " + path);
  int c;
  while ((c = std::fgetc(f)) != EOF) out.push_back(static_cast<uint8_t>(c));
  std::fclose(f);
  return out;
}

// An in-memory data set: sample i is a [channels,h,w] uint8 image whose pixels encode i
// (channel c, row y, col x = (i + 7c + 3y + x) mod 256), label i mod classes. `fail` lists indices
// whose image() throws hd::Error("<source>: synthetic failure"). Counts image() calls.
class SyntheticDataset : public Dataset {
 public:
  SyntheticDataset(size_t n, int64_t channels = 1, int64_t h = 8, int64_t w = 8, int64_t classes = 3,
                   std::set<size_t> fail = {})
      : n_(n), c_(channels), h_(h), w_(w), classes_(classes), fail_(std::move(fail)) {}

  size_t size() const override { return n_; }
  int64_t label(size_t i) const override { return static_cast<int64_t>(i) % classes_; }
  torch::Tensor image(size_t i) const override {
    calls_++;
    if (delay_us_ > 0) ::usleep(static_cast<useconds_t>(delay_us_));
    if (fail_.count(i)) throw Error(source(i) + ": synthetic failure");
    return expected_image(i);
  }
  torch::Tensor expected_image(size_t i) const {
    auto c = torch::arange(c_).view({-1, 1, 1}) * 7;
    auto y = torch::arange(h_).view({1, -1, 1}) * 3;
    auto x = torch::arange(w_).view({1, 1, -1});
    return ((c + y + x + static_cast<int64_t>(i)) % 256).to(torch::kUInt8).contiguous();
  }
  std::string source(size_t i) const override { return "synthetic#" + std::to_string(i); }
  std::vector<std::string> class_names() const override {
    std::vector<std::string> names;
    for (int64_t c = 0; c < classes_; ++c) names.push_back("c" + std::to_string(c));
    return names;
  }
  std::string name() const override { return "synthetic"; }

  int64_t calls() const { return calls_.load(); }
  void set_delay_us(int us) { delay_us_ = us; }

 private:
  size_t n_;
  int64_t c_, h_, w_, classes_;
  std::set<size_t> fail_;
  mutable std::atomic<int64_t> calls_{0};
  int delay_us_ = 0;
};

}  // namespace hd::data::testing
