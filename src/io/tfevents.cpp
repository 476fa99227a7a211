#include "io/tfevents.h"

#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "util/atomic_file.h"
#include "util/error.h"

namespace hd::io {

namespace fs = std::filesystem;

namespace {

constexpr const char* kFileVersion = "brain.Event:2";
constexpr const char* kPrefix = "events.out.tfevents.";

std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}

// Protobuf wire format: varints, fixed 64/32-bit little-endian, length-delimited fields.
void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void put_key(std::string& out, int field, int wire_type) { put_varint(out, (static_cast<uint64_t>(field) << 3) | wire_type); }
template <typename T>
void put_fixed(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // little-endian hosts only (x86-64, aarch64)
  out.append(b, sizeof(T));
}
void put_bytes(std::string& out, int field, const std::string& s) {
  put_key(out, field, 2);
  put_varint(out, s.size());
  out += s;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string event_header(double wall_time, int64_t step) {
  std::string e;
  put_key(e, 1, 1);
  put_fixed<double>(e, wall_time);
  if (step != 0) {
    put_key(e, 2, 0);
    put_varint(e, static_cast<uint64_t>(step));
  }
  return e;
}

// Bounded reader of a protobuf message.
struct Cursor {
  const uint8_t* p;
  const uint8_t* end;
  const std::string& where;

  [[noreturn]] void fail(const std::string& what) const { throw Error(where + ": malformed Event record: " + what); }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p >= end) fail("truncated varint");
      const uint8_t b = *p++;
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    fail("varint longer than 10 bytes");
  }
  template <typename T>
  T fixed() {
    if (static_cast<size_t>(end - p) < sizeof(T)) fail("truncated fixed-size field");
    T v;
    std::memcpy(&v, p, sizeof(T));
    p += sizeof(T);
    return v;
  }
  Cursor sub() {
    const uint64_t n = varint();
    if (n > static_cast<uint64_t>(end - p)) fail("field length past the end of the message");
    Cursor c{p, p + n, where};
    p += n;
    return c;
  }
  void skip(int wire_type) {
    switch (wire_type) {
      case 0: varint(); break;
      case 1: fixed<uint64_t>(); break;
      case 2: sub(); break;
      case 5: fixed<uint32_t>(); break;
      default: fail("unsupported wire type " + std::to_string(wire_type));
    }
  }
};

// Reads one TFRecord from f (at most `left` bytes remain in the file). Returns false at a clean
// end of file; sets `damaged` (and returns false) for a truncated or corrupt record.
bool read_record(std::FILE* f, uint64_t& left, std::string& data, bool& damaged) {
  damaged = false;
  if (left == 0) return false;
  unsigned char head[12];
  if (left < 12 || std::fread(head, 1, 12, f) != 12) return damaged = true, false;
  uint64_t len;
  uint32_t len_crc;
  std::memcpy(&len, head, 8);
  std::memcpy(&len_crc, head + 8, 4);
  if (masked_crc32c(head, 8) != len_crc || len > left - 12 || left - 12 - len < 4) return damaged = true, false;
  data.resize(len);
  uint32_t data_crc;
  if ((len && std::fread(data.data(), 1, len, f) != len) || std::fread(&data_crc, 1, 4, f) != 4 ||
      masked_crc32c(data.data(), len) != data_crc)
    return damaged = true, false;
  left -= 12 + len + 4;
  return true;
}

bool is_events_file(const fs::path& p) { return p.filename().string().rfind(kPrefix, 0) == 0; }

}  // namespace

uint32_t crc32c(const void* data, size_t size, uint32_t crc) {
  static const auto table = make_crc32c_table();
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

uint32_t masked_crc32c(const void* data, size_t size) {
  const uint32_t c = crc32c(data, size);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

std::string encode_version_event(double wall_time) {
  std::string e = event_header(wall_time, 0);
  put_bytes(e, 3, kFileVersion);
  return e;
}

std::string encode_scalars_event(double wall_time, int64_t step, const Scalars& values) {
  std::string summary;
  for (const auto& [tag, v] : values) {
    std::string value;
    put_bytes(value, 1, tag);
    put_key(value, 2, 5);
    put_fixed<float>(value, static_cast<float>(v));
    put_bytes(summary, 1, value);
  }
  std::string e = event_header(wall_time, step);
  put_bytes(e, 5, summary);
  return e;
}

std::string tfrecord(const std::string& data) {
  std::string r;
  const uint64_t len = data.size();
  put_fixed<uint64_t>(r, len);
  put_fixed<uint32_t>(r, masked_crc32c(&len, 8));
  r += data;
  put_fixed<uint32_t>(r, masked_crc32c(data.data(), data.size()));
  return r;
}

EventsWriter::EventsWriter(const std::string& dir) {
  char host[256] = "localhost";
  if (gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "localhost");
  host[sizeof host - 1] = '\0';
  const std::string base = (fs::path(dir) / (kPrefix + std::to_string(static_cast<long long>(std::time(nullptr))) +
                                             "." + host + "." + std::to_string(getpid())))
                               .string();
  // "x": never reuse a name (two starts within a second in one folder get different files).
  for (int n = 0; n < 1000 && !file_; ++n) {
    path_ = n ? base + "." + std::to_string(n) : base;
    file_ = std::fopen(path_.c_str(), "wbx");
    if (!file_ && errno != EEXIST) break;
  }
  if (!file_) throw Error(path_ + ": cannot create the TensorBoard events file: " + std::strerror(errno));
  const std::string r = tfrecord(encode_version_event(now_seconds()));
  if (std::fwrite(r.data(), 1, r.size(), file_) != r.size()) throw Error(path_ + ": write failed");
}

EventsWriter::~EventsWriter() {
  if (file_) std::fclose(file_);
}

void EventsWriter::add(int64_t step, const Scalars& values, double wall_time) {
  const std::string r = tfrecord(encode_scalars_event(wall_time < 0 ? now_seconds() : wall_time, step, values));
  if (std::fwrite(r.data(), 1, r.size(), file_) != r.size())
    throw Error(path_ + ": write failed: " + std::strerror(errno));
}

void EventsWriter::flush() {
  if (std::fflush(file_) != 0) throw Error(path_ + ": write failed: " + std::strerror(errno));
}

void write_scalars(const std::string& dir, int64_t step, const Scalars& values) {
  EventsWriter w(dir);
  w.add(step, values);
  w.flush();
}

Event decode_event(const std::string& data, const std::string& where) {
  Event ev;
  Cursor c{reinterpret_cast<const uint8_t*>(data.data()), reinterpret_cast<const uint8_t*>(data.data()) + data.size(),
           where};
  while (c.p < c.end) {
    const uint64_t key = c.varint();
    const int field = static_cast<int>(key >> 3), wt = static_cast<int>(key & 7);
    if (field == 1 && wt == 1) {
      ev.wall_time = c.fixed<double>();
    } else if (field == 2 && wt == 0) {
      ev.step = static_cast<int64_t>(c.varint());
    } else if (field == 3 && wt == 2) {
      Cursor s = c.sub();
      ev.file_version.assign(reinterpret_cast<const char*>(s.p), static_cast<size_t>(s.end - s.p));
    } else if (field == 5 && wt == 2) {
      Cursor summary = c.sub();
      while (summary.p < summary.end) {
        const uint64_t k = summary.varint();
        if (k != ((1 << 3) | 2)) {
          summary.skip(static_cast<int>(k & 7));
          continue;
        }
        Cursor value = summary.sub();
        std::string tag;
        double v = 0;
        bool has_value = false;
        while (value.p < value.end) {
          const uint64_t vk = value.varint();
          if (vk == ((1 << 3) | 2)) {
            Cursor t = value.sub();
            tag.assign(reinterpret_cast<const char*>(t.p), static_cast<size_t>(t.end - t.p));
          } else if (vk == ((2 << 3) | 5)) {
            v = value.fixed<float>();
            has_value = true;
          } else {
            value.skip(static_cast<int>(vk & 7));
          }
        }
        if (has_value) ev.values.emplace_back(tag, v);
      }
    } else {
      c.skip(wt);
    }
  }
  return ev;
}

std::vector<Event> read_events(const std::string& path, bool* complete) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw Error(path + ": cannot open: " + std::strerror(errno));
  std::error_code ec;
  uint64_t left = fs::file_size(path, ec);
  std::vector<Event> out;
  std::string data;
  bool damaged = false;
  try {
    while (read_record(f, left, data, damaged))
      out.push_back(decode_event(data, path + " record " + std::to_string(out.size())));
  } catch (...) {
    std::fclose(f);
    throw;
  }
  std::fclose(f);
  if (damaged && out.empty()) throw Error(path + ": not a TFRecord file (its first record is damaged)");
  if (complete) *complete = !damaged;
  return out;
}

int64_t trim_events_files(const std::string& dir, int64_t next_step) {
  int64_t dropped = 0;
  std::error_code ec;
  std::vector<fs::path> files;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    if (is_events_file(it->path()) && it->is_regular_file()) files.push_back(it->path());
  for (const auto& p : files) {
    const std::string path = p.string();
    // Pass 1: what stays (streamed: a long run's file need not fit in memory twice).
    int64_t keep_scalars = 0, drop = 0;
    bool damaged = false;
    {
      std::FILE* f = std::fopen(path.c_str(), "rb");
      if (!f) continue;
      uint64_t left = fs::file_size(p, ec);
      std::string data;
      int64_t i = 0;
      try {
        while (read_record(f, left, data, damaged)) {
          Event ev = decode_event(data, path + " record " + std::to_string(i++));
          if (ev.values.empty()) continue;
          if (ev.step < next_step) ++keep_scalars;
          else ++drop;
        }
      } catch (const Error&) {
        damaged = true;  // a record that decodes badly ends the file as a damaged tail does
      }
      std::fclose(f);
    }
    if (drop == 0 && !damaged) continue;
    dropped += drop;
    if (keep_scalars == 0) {
      fs::remove(p, ec);
      continue;
    }
    // Pass 2: copy the records that stay.
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) throw Error(path + ": cannot open: " + std::strerror(errno));
    try {
      atomic_write_file(path, [&](std::FILE* out) {
        uint64_t left = fs::file_size(p);
        std::string data;
        bool bad = false;
        int64_t i = 0;
        while (read_record(f, left, data, bad)) {
          Event ev;
          try {
            ev = decode_event(data, path + " record " + std::to_string(i++));
          } catch (const Error&) {
            break;
          }
          if (!ev.values.empty() && ev.step >= next_step) continue;
          const std::string r = tfrecord(data);
          if (std::fwrite(r.data(), 1, r.size(), out) != r.size()) throw Error("write failed");
        }
      });
    } catch (...) {
      std::fclose(f);
      throw;
    }
    std::fclose(f);
  }
  return dropped;
}

}  // namespace hd::io
