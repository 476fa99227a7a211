#include "util/common.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>

#include <torch/torch.h>

namespace hd {

int set_threads(int n) {
  if (n <= 0) {
    n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    // Several processes of one job on this machine (torchrun and `hybrid-distill launch` set
    // LOCAL_WORLD_SIZE) share its cores instead of each taking all of them.
    if (const char* local = std::getenv("LOCAL_WORLD_SIZE")) {
      const int w = std::atoi(local);
      if (w > 1) n = std::max(1, n / w);
    }
  }
  torch::set_num_threads(n);
  return torch::get_num_threads();
}

void ensure_passive_openmp(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  ::setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  ::execv("/proc/self/exe", argv);
  // execv only returns on failure (no /proc, say): carry on with the spinning default.
}

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

std::string human_bytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  char buf[64];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.2f %s", v, units[u]);
  return buf;
}

std::string with_commas(uint64_t n) {
  std::string s = std::to_string(n);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

}  // namespace hd
