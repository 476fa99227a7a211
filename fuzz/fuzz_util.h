// Shared by the libFuzzer harnesses: a per-process scratch folder and the exception policy.
//
// Policy: an input may be refused, but only with hd::Error (whose message names the file);
// anything else escaping a parser (std::out_of_range from a library, c10::Error, a YAML
// exception, ...) is a bug and aborts, so that libFuzzer records the input as a crash.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <string>

#include "util/error.h"

namespace hd::fuzz {

// A folder of its own for this process (removed at exit), so that parallel fuzzers (-jobs)
// do not share files.
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    auto d = std::filesystem::temp_directory_path() / ("hd_fuzz_" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    static struct Cleanup {
      std::filesystem::path p;
      ~Cleanup() {
        std::error_code ec;
        std::filesystem::remove_all(p, ec);
      }
    } cleanup{d};
    return d.string();
  }();
  return dir;
}

// Writes the bytes to scratch_dir()/name and returns the path.
inline std::string write_input(const std::string& name, const uint8_t* data, size_t size) {
  std::string path = scratch_dir() + "/" + name;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
  return path;
}

// Runs fn; hd::Error is an accepted outcome, any other exception aborts with its message.
template <class F>
void expect_only_hd_errors(const char* what, F&& fn) {
  try {
    fn();
  } catch (const hd::Error&) {
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: exception other than hd::Error escaped: %s\n", what, e.what());
    std::abort();
  } catch (...) {
    std::fprintf(stderr, "%s: non-standard exception escaped\n", what);
    std::abort();
  }
}

}  // namespace hd::fuzz
