// Helpers every test suite may use: temporary folders, the message of an expected hd::Error,
// whole files as strings.
#pragma once

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>

#include "util/error.h"

namespace hd::testing {

// A fresh folder under the system temp directory, removed with everything in it on destruction.
class TempDir {
 public:
  explicit TempDir(const std::string& tag = "hd_test") {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            (tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string path() const { return path_.string(); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// A fresh, empty folder TMP/hd_test_SUITE/NAME that stays after the test (for looking into a
// failed run); the next run of the test empties it first.
inline std::string scratch(const std::string& suite, const std::string& name) {
  auto d = std::filesystem::temp_directory_path() / ("hd_test_" + suite) / name;
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d.string();
}

// The message of the hd::Error that `f` throws; "" when it throws none.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const hd::Error& e) {
    return e.what();
  }
  return "";
}

inline std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

inline bool contains(const std::string& s, const std::string& what) { return s.find(what) != std::string::npos; }

}  // namespace hd::testing
