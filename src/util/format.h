// Number formatting for messages and tables.
#pragma once

#include <cstdint>
#include <string>

namespace hd {

// "1.50 GiB" style.
std::string human_bytes(uint64_t bytes);

// "12,345,678".
std::string with_commas(uint64_t n);

}  // namespace hd
