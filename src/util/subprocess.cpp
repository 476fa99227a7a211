#include "util/subprocess.h"

#include <cstdio>
#include <memory>

namespace hd {

nlohmann::json json_result_of(const std::string& command, const std::string& what) {
  std::unique_ptr<FILE, int (*)(FILE*)> p(popen(command.c_str(), "r"), pclose);
  if (!p) {
    std::fprintf(stderr, "%s: cannot run %s\n", what.c_str(), command.c_str());
    return nullptr;
  }
  std::string out;
  char buf[4096];
  while (std::fgets(buf, sizeof buf, p.get())) out += buf;
  const size_t end = out.find_last_not_of("\n\r ");
  if (end != std::string::npos) {
    const size_t start = out.rfind('\n', end);
    const size_t from = start == std::string::npos ? 0 : start + 1;
    try {
      return nlohmann::json::parse(out.substr(from, end + 1 - from));
    } catch (const std::exception&) {
    }
  }
  std::fprintf(stderr, "%s failed; its output:\n%s\n", what.c_str(), out.c_str());
  return nullptr;
}

}  // namespace hd
