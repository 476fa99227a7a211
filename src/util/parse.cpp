#include "util/parse.h"

#include <stdexcept>

namespace hd {

std::optional<int64_t> parse_int(const std::string& s) {
  size_t pos = 0;
  int64_t v = 0;
  try {
    v = std::stoll(s, &pos);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  if (pos == 0 || pos != s.size()) return std::nullopt;
  return v;
}

}  // namespace hd
