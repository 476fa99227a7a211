// Small shared helpers: errors, timing, thread setup, atomic file writes.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>

namespace hd {

// Every user-facing failure (bad file, bad option, bad config) is an hd::Error whose message
// names the offending file / key and what is wrong. main() prints it and exits non-zero.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Sets LibTorch's intra-op thread count (Debian's LibTorch defaults to 1 thread).
// n <= 0 means "all hardware threads". Returns the count in effect.
int set_threads(int n);

// Wall-clock stopwatch.
class Timer {
 public:
  Timer() : start_(std::chrono::steady_clock::now()) {}
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  void reset() { start_ = std::chrono::steady_clock::now(); }

 private:
  std::chrono::steady_clock::time_point start_;
};

// Writes a file atomically: `write` fills a temporary file next to `path`, which is then
// flushed, fsync'ed and renamed over `path` (and the directory fsync'ed). If anything fails
// (full disk, killed process) the previous content of `path` is left untouched and the
// temporary is removed; the error names `path`.
void atomic_write_file(const std::string& path, const std::function<void(std::FILE*)>& write);

// "1.50 GiB" style.
std::string human_bytes(uint64_t bytes);

// Number formatting for tables: "12,345,678".
std::string with_commas(uint64_t n);

}  // namespace hd
