#include "io/tar.h"

#include <cstring>

#include "util/error.h"

namespace hd::io {

namespace {

constexpr uint64_t kBlock = 512;

uint64_t padded(uint64_t n) { return (n + kBlock - 1) / kBlock * kBlock; }

// A NUL-terminated (or full-width) header string field.
std::string field_string(const uint8_t* p, size_t n) {
  size_t len = 0;
  while (len < n && p[len]) ++len;
  return std::string(reinterpret_cast<const char*>(p), len);
}

// Printable form of a name for messages (archives are untrusted: no control bytes in terminals).
std::string printable(const std::string& s) {
  std::string out;
  for (char c : s.substr(0, 200)) out += (c >= 32 && c < 127) ? c : '?';
  return s.size() > 200 ? out + "..." : out;
}

}  // namespace

TarReader::TarReader(std::string source, uint64_t size, ReadAt read_at)
    : source_(std::move(source)), size_(size), read_at_(std::move(read_at)) {}

void TarReader::fail(uint64_t at, const std::string& what) const {
  throw Error(source_ + ": " + what + " (tar header at offset " + std::to_string(at) + ")");
}

bool TarReader::next(TarMember& m) {
  std::string long_name;
  bool has_long_name = false;
  uint64_t pax_size = 0;
  bool has_pax_size = false;
  while (!done_) {
    if (pos_ >= size_) {
      if (has_long_name || has_pax_size) fail(pos_, "truncated: the archive ends after an extended header");
      done_ = true;
      return false;
    }
    const uint64_t at = pos_;
    if (size_ - at < kBlock)
      fail(at, "truncated: " + std::to_string(size_ - at) + " bytes where a 512-byte header block should be");
    uint8_t h[kBlock];
    read_at_(at, h, kBlock);
    bool zero = true;
    for (uint8_t b : h) zero = zero && b == 0;
    if (zero) {
      done_ = true;
      return false;
    }

    // Numbers: octal ASCII (leading spaces, then digits, then spaces / NULs) or, for large
    // values, GNU base-256 (first byte 0x80, the rest big-endian).
    auto number = [&](size_t off, size_t n, const char* what) -> uint64_t {
      const uint8_t* p = h + off;
      if (p[0] & 0x80) {
        if (p[0] != 0x80) fail(at, std::string("negative or malformed base-256 ") + what);
        uint64_t v = 0;
        for (size_t i = 1; i < n; ++i) {
          if (v >> 55) fail(at, std::string(what) + " is too large");
          v = (v << 8) | p[i];
        }
        return v;
      }
      size_t i = 0;
      while (i < n && p[i] == ' ') ++i;
      uint64_t v = 0;
      for (; i < n && p[i] >= '0' && p[i] <= '7'; ++i) {
        if (v >> 60) fail(at, std::string(what) + " is too large");
        v = v * 8 + static_cast<uint64_t>(p[i] - '0');
      }
      for (; i < n; ++i)
        if (p[i] != ' ' && p[i] != 0)
          fail(at, at == 0 ? "not a tar archive (malformed header)" : std::string("corrupt header: malformed ") + what);
      return v;
    };

    const uint64_t stored = number(148, 8, "checksum");
    uint64_t sum = 0;
    int64_t signed_sum = 0;  // some old tars summed signed chars
    for (size_t i = 0; i < kBlock; ++i) {
      const uint8_t b = (i >= 148 && i < 156) ? ' ' : h[i];
      sum += b;
      signed_sum += static_cast<int8_t>(b);
    }
    if (stored != sum && static_cast<int64_t>(stored) != signed_sum)
      fail(at, at == 0 ? "not a tar archive (header checksum mismatch)" : "corrupt header (checksum mismatch)");

    uint64_t size = number(124, 12, "size");
    if (has_pax_size) size = pax_size;
    const char type = static_cast<char>(h[156]);
    std::string name;
    if (has_long_name) {
      name = long_name;
    } else {
      name = field_string(h, 100);
      const std::string prefix = field_string(h + 345, 155);
      if (std::memcmp(h + 257, "ustar\0", 6) == 0 && !prefix.empty()) name = prefix + "/" + name;
    }
    const uint64_t data = at + kBlock;
    if (size > size_ - data)
      fail(at, "truncated: member '" + printable(name) + "' has " + std::to_string(size) + " bytes at offset " +
                   std::to_string(data) + " but the archive ends at " + std::to_string(size_));
    // The padding of the last member may be missing: that member is still whole.
    pos_ = std::min(size_, data + padded(size));

    if (type == 'L' || type == 'x') {
      const bool pax = type == 'x';
      const uint64_t limit = pax ? kMaxPaxHeaderBytes : kMaxTarNameBytes;
      if (size > limit)
        fail(at, std::string(pax ? "pax header" : "GNU long name") + " of " + std::to_string(size) + " bytes (at most " +
                     std::to_string(limit) + ")");
      std::string buf(size, '\0');
      if (size) read_at_(data, buf.data(), size);
      if (!pax) {
        long_name = buf.substr(0, buf.find('\0'));
        has_long_name = true;
        continue;
      }
      // Records "LENGTH key=value\n", LENGTH counting the whole record.
      for (size_t p = 0; p < buf.size();) {
        size_t q = p;
        uint64_t len = 0;
        while (q < buf.size() && buf[q] >= '0' && buf[q] <= '9' && q - p < 8) len = len * 10 + (buf[q++] - '0');
        if (q == p || q >= buf.size() || buf[q] != ' ' || len <= q - p + 1 || len > buf.size() - p ||
            buf[p + len - 1] != '\n')
          fail(at, "malformed pax header record at byte " + std::to_string(p));
        const std::string rec = buf.substr(q + 1, p + len - 1 - (q + 1));
        const auto eq = rec.find('=');
        if (eq == std::string::npos) fail(at, "malformed pax header record at byte " + std::to_string(p));
        const std::string key = rec.substr(0, eq), value = rec.substr(eq + 1);
        if (key == "path") {
          if (value.size() > kMaxTarNameBytes) fail(at, "pax path longer than " + std::to_string(kMaxTarNameBytes) + " bytes");
          long_name = value;
          has_long_name = true;
        } else if (key == "size") {
          if (value.empty() || value.size() > 18 || value.find_first_not_of("0123456789") != std::string::npos)
            fail(at, "malformed pax size '" + printable(value) + "'");
          pax_size = std::stoull(value);
          has_pax_size = true;
        }
        p += len;
      }
      continue;
    }
    has_long_name = has_pax_size = false;
    if (type == '0' || type == '\0' || type == '7') {
      m.name = std::move(name);
      m.offset = data;
      m.size = size;
      m.header = at;
      return true;
    }
    // Directories, links, devices, FIFOs, global pax headers, GNU long link names: no data of
    // a sample (their size, if any, was skipped above).
  }
  return false;
}

void TarWriter::add(const std::string& name, const void* data, uint64_t size) {
  if (name.empty() || name.size() >= 100) throw Error("tar member name '" + name + "' must have 1 to 99 bytes");
  if (size >= (uint64_t{1} << 33)) throw Error("tar member '" + name + "' is larger than 8 GiB");
  char h[kBlock] = {};
  std::memcpy(h, name.data(), name.size());
  std::snprintf(h + 100, 8, "%07o", 0644);
  std::snprintf(h + 108, 8, "%07o", 0);
  std::snprintf(h + 116, 8, "%07o", 0);
  std::snprintf(h + 124, 12, "%011llo", static_cast<unsigned long long>(size));
  std::snprintf(h + 136, 12, "%011o", 0);
  std::memset(h + 148, ' ', 8);
  h[156] = '0';
  std::memcpy(h + 257, "ustar\0" "00", 8);
  unsigned sum = 0;
  for (char c : h) sum += static_cast<uint8_t>(c);
  std::snprintf(h + 148, 8, "%06o", sum);  // six digits, NUL, and the space left from above
  const char zeros[kBlock] = {};
  if (std::fwrite(h, 1, kBlock, f_) != kBlock || (size && std::fwrite(data, 1, size, f_) != size) ||
      std::fwrite(zeros, 1, padded(size) - size, f_) != padded(size) - size)
    throw Error("tar member '" + name + "': write failed");
}

void TarWriter::finish() {
  const char zeros[2 * kBlock] = {};
  if (std::fwrite(zeros, 1, sizeof zeros, f_) != sizeof zeros) throw Error("tar end blocks: write failed");
}

}  // namespace hd::io
