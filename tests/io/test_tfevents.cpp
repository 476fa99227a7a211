// TensorBoard event files: CRC-32C, the Event encoding, and trimming on resume.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "io/tfevents.h"
#include "util/error.h"

namespace fs = std::filesystem;
using namespace hd;

namespace {

std::string fresh_dir(const std::string& name) {
  auto d = fs::temp_directory_path() / ("hd_test_tfevents_" + std::to_string(getpid())) / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

std::vector<std::string> events_files(const std::string& dir) {
  std::vector<std::string> out;
  for (auto& e : fs::directory_iterator(dir)) out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST(TfEvents, Crc32cKnownAnswers) {
  // RFC 3720 B.4 and the CRC catalogue's check value.
  EXPECT_EQ(io::crc32c("123456789", 9), 0xE3069283u);
  std::string zeros(32, '\0'), ones(32, '\xff');
  EXPECT_EQ(io::crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  EXPECT_EQ(io::crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  // Incremental = whole.
  EXPECT_EQ(io::crc32c("6789", 4, io::crc32c("12345", 5)), 0xE3069283u);
}

TEST(TfEvents, EncodingIsTheProtobufWireFormat) {
  // Event{wall_time=1.5, step=3, summary{value{tag="a", simple_value=2}}}, bytes by hand.
  std::string e = io::encode_scalars_event(1.5, 3, {{"a", 2.0}});
  const double wt = 1.5;
  const float v = 2.0f;
  std::string want = "\x09";
  want.append(reinterpret_cast<const char*>(&wt), 8);
  want += "\x10\x03";
  std::string value = std::string("\x0a\x01" "a" "\x15", 4);
  value.append(reinterpret_cast<const char*>(&v), 4);
  want += "\x2a" + std::string(1, static_cast<char>(value.size() + 2)) + "\x0a" +
          std::string(1, static_cast<char>(value.size())) + value;
  EXPECT_EQ(e, want);

  auto ev = io::decode_event(io::encode_version_event(7), "v");
  EXPECT_EQ(ev.file_version, "brain.Event:2");
  EXPECT_EQ(ev.wall_time, 7);
  ev = io::decode_event(io::encode_scalars_event(2, 123456789012, {{"train/loss", 0.25}, {"x", -1e30}}), "s");
  EXPECT_EQ(ev.step, 123456789012);
  ASSERT_EQ(ev.values.size(), 2u);
  EXPECT_EQ(ev.values[0].first, "train/loss");
  EXPECT_EQ(ev.values[0].second, 0.25);
  EXPECT_EQ(ev.values[1].second, static_cast<double>(-1e30f));
  EXPECT_THROW(io::decode_event(std::string("\x2a\x50", 2), "bad"), Error);
}

TEST(TfEvents, WriterReaderRoundTripAndDamagedTail) {
  auto dir = fresh_dir("roundtrip");
  std::string path;
  {
    io::EventsWriter w(dir);
    io::EventsWriter w2(dir);  // same second, same process: another name
    EXPECT_NE(w.path(), w2.path());
    path = w.path();
    EXPECT_EQ(fs::path(path).filename().string().rfind("events.out.tfevents.", 0), 0u);
    for (int s = 0; s < 5; ++s) w.add(s, {{"loss", 1.0 / (s + 1)}}, 100 + s);
  }
  bool complete = false;
  auto evs = io::read_events(path, &complete);
  EXPECT_TRUE(complete);
  ASSERT_EQ(evs.size(), 6u);
  EXPECT_EQ(evs[0].file_version, "brain.Event:2");
  EXPECT_EQ(evs[5].step, 4);
  EXPECT_EQ(evs[5].wall_time, 104);
  EXPECT_EQ(evs[5].values.at(0).second, static_cast<double>(0.2f));

  // Cut in the middle of the last record, then a flipped byte in the third: the records before
  // the damage are read, the rest reported as incomplete.
  const auto size = fs::file_size(path);
  fs::resize_file(path, size - 3);
  evs = io::read_events(path, &complete);
  EXPECT_FALSE(complete);
  EXPECT_EQ(evs.size(), 5u);
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(io::tfrecord(io::encode_version_event(0)).size() + 20));
    f.put('\x7f');
  }
  evs = io::read_events(path, &complete);
  EXPECT_FALSE(complete);
  EXPECT_EQ(evs.size(), 1u);

  std::ofstream(dir + "/not_events") << "hello, this is not a TFRecord file";
  try {
    io::read_events(dir + "/not_events");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not_events"), std::string::npos) << e.what();
  }
}

TEST(TfEvents, TrimKeepsStepsBeforeTheResumePoint) {
  auto dir = fresh_dir("trim");
  std::string a, b;
  {
    io::EventsWriter w(dir);
    a = w.path();
    for (int s = 0; s < 4; ++s) w.add(s, {{"loss", s}});
  }
  {
    io::EventsWriter w(dir);
    b = w.path();
    for (int s = 4; s < 8; ++s) w.add(s, {{"loss", s}});
  }
  std::ofstream(a, std::ios::app | std::ios::binary) << "torn";
  // Resume at step 3: a loses step 3 and its torn tail, b goes (no scalars left).
  EXPECT_EQ(io::trim_events_files(dir, 3), 1 + 4);
  EXPECT_FALSE(fs::exists(b));
  bool complete = false;
  auto evs = io::read_events(a, &complete);
  EXPECT_TRUE(complete);
  ASSERT_EQ(evs.size(), 4u);
  EXPECT_EQ(evs[0].file_version, "brain.Event:2");
  EXPECT_EQ(evs.back().step, 2);
  // Nothing to do: the file is left as it is.
  const auto before = fs::last_write_time(a);
  EXPECT_EQ(io::trim_events_files(dir, 3), 0);
  EXPECT_EQ(fs::last_write_time(a), before);
  EXPECT_EQ(events_files(dir).size(), 1u) << "no temporary left";
  // Starting over (step 0) removes every scalar.
  EXPECT_EQ(io::trim_events_files(dir, 0), 3);
  EXPECT_TRUE(events_files(dir).empty());
}
