// TensorBoard event files (events.out.tfevents.*): scalars written without TensorFlow or protobuf.
//
// A file is a sequence of TFRecords
//   uint64 length | uint32 masked_crc32c(length) | data[length] | uint32 masked_crc32c(data)
// (little-endian), each data an `Event` protobuf message. Only the few fields TensorBoard needs
// for scalars are encoded, by hand:
//   Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//   Summary { repeated Value value = 1; }
//   Value   { string tag = 1; float simple_value = 2; }
// The first record of a file is an Event with file_version "brain.Event:2".
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace hd::io {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord uses; `crc` continues a
// previous value (0 to start).
uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0);
// TFRecord's masking of a CRC: ((crc >> 15) | (crc << 17)) + 0xa282ead8.
uint32_t masked_crc32c(const void* data, size_t size);

using Scalars = std::vector<std::pair<std::string, double>>;

// The serialised Event messages.
std::string encode_version_event(double wall_time);
std::string encode_scalars_event(double wall_time, int64_t step, const Scalars& values);
// One TFRecord around `data`.
std::string tfrecord(const std::string& data);

// Appends scalars to a new events file in a folder. Not thread-safe.
class EventsWriter {
 public:
  // Creates DIR/events.out.tfevents.<unix time>.<host>.<pid>[.<n>] (a fresh name, never an
  // existing file) with the file_version record. Throws hd::Error naming the file.
  explicit EventsWriter(const std::string& dir);
  ~EventsWriter();
  EventsWriter(const EventsWriter&) = delete;
  EventsWriter& operator=(const EventsWriter&) = delete;

  // One Event at `step` holding every (tag, value) as a float scalar; wall_time < 0: now.
  void add(int64_t step, const Scalars& values, double wall_time = -1);
  // Hands the buffered records to the file system; throws hd::Error naming the file on failure.
  void flush();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
};

// One Event with `values` at `step`, in a new events file of `dir` (e.g. an evaluation's results
// next to the training scalars of the same run folder).
void write_scalars(const std::string& dir, int64_t step, const Scalars& values);

// A decoded Event (only the fields above). Used to trim files on resume, and by tests.
struct Event {
  double wall_time = 0;
  int64_t step = 0;
  std::string file_version;
  Scalars values;  // the summary's simple_value scalars (as float, widened)
};

// Decodes one Event message; throws hd::Error (mentioning `where`) on malformed bytes.
Event decode_event(const std::string& data, const std::string& where);

// Reads the records of an events file, each decoded. A truncated or corrupt tail (a process
// killed while writing) ends the list and sets *complete to false; a file that is not a TFRecord
// file from its first record on throws hd::Error naming it. Record lengths are bounded by the
// file's size before anything is allocated.
std::vector<Event> read_events(const std::string& path, bool* complete = nullptr);

// Resuming a run at `next_step`: every events.out.tfevents.* file in `dir` is rewritten
// (atomically) without the scalar records of steps >= next_step (and without a damaged tail), so
// that the steps the resumed run writes again are not duplicated; files left with no scalars are
// removed. Returns the number of records dropped.
int64_t trim_events_files(const std::string& dir, int64_t next_step);

}  // namespace hd::io
