// Strict parsing of numbers from text (command-line values, environment variables).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace hd {

// The whole of `s` as a base-10 integer (optional sign); nullopt for anything else, including
// empty text, trailing characters and out-of-range values.
std::optional<int64_t> parse_int(const std::string& s);

}  // namespace hd
