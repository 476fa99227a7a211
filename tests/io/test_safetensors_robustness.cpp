// safetensors inputs that once went wrong, or could hang: each must give an hd::Error naming the
// file (regression tests, including inputs found by fuzz/fuzz_safetensors).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "io/safetensors.h"
#include "util/error.h"

namespace fs = std::filesystem;
using namespace hd;

namespace {

std::string temp_path(const std::string& name) {
  auto dir = fs::temp_directory_path() / ("hd_st_robust_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return (dir / name).string();
}

std::string error_of(const std::string& path) {
  try {
    auto f = io::SafeTensorsFile::open(path);
    f.load_all();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("not an hd::Error: ") + e.what();
  }
  return "(accepted)";
}

}  // namespace

TEST(SafeTensorsRobustness, FifoDoesNotHang) {
  const std::string path = temp_path("pipe.safetensors");
  std::remove(path.c_str());
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
  EXPECT_EQ(error_of(path), path + ": not a regular file");
  std::remove(path.c_str());
}

// Every committed fuzz input (seeds and the inputs of past crashes, fuzz/corpus/safetensors/)
// loads, or is refused with an hd::Error naming the file.
TEST(SafeTensorsRobustness, FuzzCorpusLoadsOrGivesHdError) {
  const fs::path corpus = fs::path(HD_TEST_DATA_DIR) / ".." / ".." / "fuzz" / "corpus" / "safetensors";
  ASSERT_TRUE(fs::is_directory(corpus)) << corpus;
  int n = 0;
  for (const auto& e : fs::directory_iterator(corpus)) {
    const std::string msg = error_of(e.path().string());
    EXPECT_TRUE(msg == "(accepted)" || msg.rfind(e.path().string() + ": ", 0) == 0) << e.path() << ": " << msg;
    ++n;
  }
  EXPECT_GE(n, 5);
}
