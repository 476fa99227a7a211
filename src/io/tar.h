// A bounded reader and a small writer of tar archives (POSIX ustar, pax and GNU long names), the
// container of WebDataset shards. Only what shards need: regular files, their names, offsets and
// sizes; the reader never loads member data itself.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>

namespace hd::io {

struct TarMember {
  std::string name;     // full path inside the archive (prefix/name, pax "path" or GNU long name)
  uint64_t offset = 0;  // of the member's data in the archive
  uint64_t size = 0;
  uint64_t header = 0;  // offset of its (first) header block, for messages
};

// Longest member name accepted (pax / GNU long names); longer ones are refused.
constexpr uint64_t kMaxTarNameBytes = 4096;
// Largest pax extended header accepted.
constexpr uint64_t kMaxPaxHeaderBytes = 1 << 20;

// Walks the headers of an archive of `size` bytes; data is read through `read_at` (which must
// read exactly n bytes at offset, offset + n <= size). Member data is skipped, never read.
// Directories, links, devices and global pax headers are passed over; next() returns regular
// files only. The archive ends at a zero block or exactly at the end of the data.
// Every failure throws hd::Error starting with `source` and naming the offset and, where known,
// the member: a header with a bad checksum or a malformed number ("not a tar archive" at offset
// 0), a member whose data runs past the end ("truncated"), an over-long name.
class TarReader {
 public:
  using ReadAt = std::function<void(uint64_t offset, void* buf, size_t n)>;
  TarReader(std::string source, uint64_t size, ReadAt read_at);

  // The next regular file; false at the end of the archive.
  bool next(TarMember& m);
  // Where the next header is read (after next() returned false: where the archive ended).
  uint64_t position() const { return pos_; }
  const std::string& source() const { return source_; }

 private:
  [[noreturn]] void fail(uint64_t at, const std::string& what) const;

  std::string source_;
  uint64_t size_;
  ReadAt read_at_;
  uint64_t pos_ = 0;
  bool done_ = false;
};

// Writes a ustar archive: add() appends one regular file (name < 100 bytes, mode 0644, owner 0,
// mtime 0, so that the same inputs give the same bytes), finish() the two end blocks.
// Throws hd::Error on a name that does not fit or a failed write.
class TarWriter {
 public:
  explicit TarWriter(std::FILE* f) : f_(f) {}
  void add(const std::string& name, const void* data, uint64_t size);
  void finish();

 private:
  std::FILE* f_;
};

}  // namespace hd::io
