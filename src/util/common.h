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
// n <= 0 means "all hardware threads" (divided among LOCAL_WORLD_SIZE processes). Returns the count in effect.
int set_threads(int n);

// LibTorch's OpenMP threads spin between parallel regions by default, and Debian's OpenBLAS runs
// its own pthreads for every matrix product: on a small machine the two pools fight for the
// cores and a training step runs 2-4x slower (measured on 2 cores). libgomp reads
// OMP_WAIT_POLICY only when it is loaded, so if the variable is unset this sets it to PASSIVE and
// re-executes the program (same arguments) once. A user's own setting is left alone. Returns
// only if no re-execution happened.
void ensure_passive_openmp(char** argv);

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
