#include "util/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>

#include "util/error.h"

namespace hd {

namespace {
std::string errno_text() { return std::strerror(errno); }

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}
}  // namespace

void atomic_write_file(const std::string& path, const std::function<void(std::FILE*)>& write) {
  namespace fs = std::filesystem;
  fs::path target(path);
  fs::path dir = target.parent_path();
  std::random_device rd;
  std::string tmp = (dir / ("." + target.filename().string() + ".tmp" + std::to_string(rd()))).string();
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw Error(path + ": cannot create temporary file " + tmp + ": " + errno_text());
  auto fail = [&](const std::string& what) {
    std::string msg = path + ": " + what;
    std::fclose(f);
    std::remove(tmp.c_str());
    throw Error(msg);
  };
  try {
    write(f);
  } catch (const std::exception& e) {
    fail(std::string("write failed: ") + e.what());
  }
  if (std::fflush(f) != 0) fail("write failed: " + errno_text());
  if (std::ferror(f)) fail("write failed (disk full?)");
  if (::fsync(::fileno(f)) != 0) fail("fsync failed: " + errno_text());
  if (std::fclose(f) != 0) {
    std::remove(tmp.c_str());
    throw Error(path + ": close failed: " + errno_text());
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string err = errno_text();
    std::remove(tmp.c_str());
    throw Error(path + ": rename of temporary file failed: " + err);
  }
  fsync_dir(dir.string());
}

}  // namespace hd
