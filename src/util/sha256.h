// SHA-256 (FIPS 180-4): content keys of cached data (the teacher cache's entries).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace hd {

class Sha256 {
 public:
  Sha256();
  Sha256& update(const void* data, size_t size);
  Sha256& update(const std::string& s) { return update(s.data(), s.size()); }
  // The digest; the object is spent afterwards (update/digest again is a logic error).
  std::array<uint8_t, 32> digest();
  // Lowercase hex of digest().
  std::string hex();

 private:
  void block(const uint8_t* p);
  std::array<uint32_t, 8> h_;
  std::array<uint8_t, 64> buf_{};
  size_t used_ = 0;
  uint64_t bytes_ = 0;
};

// SHA-256 of a file's content (read in large chunks); hd::Error names the file if unreadable.
std::array<uint8_t, 32> sha256_file(const std::string& path);

}  // namespace hd
