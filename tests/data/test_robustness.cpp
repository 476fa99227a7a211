// Data files claiming more than they hold: refused with the file's name before (or instead of)
// allocating what the header announces.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <zlib.h>

#include <filesystem>
#include <random>

#include "data/data_test_util.h"
#include "data/idx.h"
#include "data/image_codec.h"
#include "test_util.h"

using namespace hd::data;
using namespace hd::data::testing;

namespace {

using hd::testing::error_of;

void append_chunk(std::vector<uint8_t>& png, const char* type, const std::vector<uint8_t>& data) {
  append_be32(png, static_cast<uint32_t>(data.size()));
  std::vector<uint8_t> body(type, type + 4);
  body.insert(body.end(), data.begin(), data.end());
  png.insert(png.end(), body.begin(), body.end());
  append_be32(png, static_cast<uint32_t>(crc32(0, body.data(), static_cast<uInt>(body.size()))));
}

// A well-formed PNG header announcing width x height 8-bit gray pixels, with `raw` (compressed
// here) as its only image data.
std::vector<uint8_t> gray_png(uint32_t width, uint32_t height, const std::vector<uint8_t>& raw) {
  std::vector<uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  std::vector<uint8_t> ihdr;
  append_be32(ihdr, width);
  append_be32(ihdr, height);
  ihdr.insert(ihdr.end(), {8, 0, 0, 0, 0});  // depth 8, gray, deflate, filter 0, no interlace
  append_chunk(png, "IHDR", ihdr);
  uLongf n = compressBound(static_cast<uLong>(raw.size()));
  std::vector<uint8_t> z(n);
  compress(z.data(), &n, raw.data(), static_cast<uLong>(raw.size()));
  z.resize(n);
  append_chunk(png, "IDAT", z);
  append_chunk(png, "IEND", {});
  return png;
}

}  // namespace

TEST(DataRobustness, GzipIdxClaimingMoreThanItHoldsIsTruncated) {
  TempDir dir;
  // 1 MiB of incompressible pixels behind a header announcing 200,000 images (157 MB): the gzip
  // file is large enough to pass the compression-ratio bound, so only reading can tell.
  std::vector<uint8_t> pixels(1 << 20);
  std::mt19937 rng(1);
  for (auto& p : pixels) p = static_cast<uint8_t>(rng());
  write_gz(dir.file("lying.gz"), idx_bytes(0x00000803, {200000, 28, 28}, pixels));
  std::string msg = error_of([&] { read_idx_images(dir.file("lying.gz")); });
  EXPECT_NE(msg.find(dir.file("lying.gz") + ": truncated"), std::string::npos) << msg;
  EXPECT_NE(msg.find("found 1048576"), std::string::npos) << msg;
  // The same with labels.
  write_gz(dir.file("labels.gz"), idx_bytes(0x00000801, {100000000}, pixels));
  msg = error_of([&] { read_idx_labels(dir.file("labels.gz")); });
  EXPECT_NE(msg.find(dir.file("labels.gz") + ": truncated"), std::string::npos) << msg;
}

TEST(DataRobustness, PngClaimingHugeSizeIsRefusedBeforeAllocating) {
  // 10000 x 10000 pixels (under the pixel limit) announced with 100 bytes of data.
  auto bomb = gray_png(10000, 10000, std::vector<uint8_t>(100, 0));
  std::string msg = error_of([&] { decode_image(bomb.data(), bomb.size(), "bomb.png"); });
  EXPECT_NE(msg.find("bomb.png: truncated or corrupt PNG: 10000x10000"), std::string::npos) << msg;
  // Over the pixel limit: refused on the header alone.
  auto huge = gray_png(100000, 100000, {0});
  msg = error_of([&] { decode_image(huge.data(), huge.size(), "huge.png"); });
  EXPECT_NE(msg.find("huge.png"), std::string::npos) << msg;
  EXPECT_NE(msg.find("exceeds the limit"), std::string::npos) << msg;
  // A genuine, maximally compressible image still decodes.
  auto flat = encode_png(torch::zeros({3, 600, 700}, torch::kUInt8));
  auto img = decode_image(flat.data(), flat.size(), "flat.png");
  EXPECT_EQ(img.sizes(), (std::vector<int64_t>{3, 600, 700}));
  auto exact = gray_png(3, 2, {0, 1, 2, 3, 0, 4, 5, 6});
  EXPECT_EQ(decode_image(exact.data(), exact.size(), "exact.png").sizes(), (std::vector<int64_t>{3, 2, 3}));
}

TEST(DataRobustness, ImageFileTooLargeIsRefusedBeforeReading) {
  TempDir dir;
  const std::string path = dir.file("huge.jpg");
  write_plain(path, {0xFF, 0xD8, 0xFF});
  std::filesystem::resize_file(path, kMaxImageFileBytes + 1);  // sparse: no disk space used
  std::string msg = error_of([&] { load_image(path); });
  EXPECT_NE(msg.find(path + ": file of"), std::string::npos) << msg;
  EXPECT_NE(msg.find("accepted for an image"), std::string::npos) << msg;
}

TEST(DataRobustness, FifoNamedLikeAnImageDoesNotHang) {
  TempDir dir;
  const std::string path = dir.file("pipe.png");
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
  std::string msg = error_of([&] { load_image(path); });
  EXPECT_NE(msg.find(path + ": not a regular file"), std::string::npos) << msg;
}

// Every committed fuzz input (fuzz/corpus/{idx,image}/: seeds and the inputs of past crashes)
// decodes, or is refused with an hd::Error naming the source. Same input handling as the
// harnesses (fuzz/fuzz_idx.cpp: the first byte selects gzip compression).
TEST(DataRobustness, FuzzCorpusDecodesOrGivesHdError) {
  const std::filesystem::path corpus = std::filesystem::path(HD_TEST_DATA_DIR) / ".." / ".." / "fuzz" / "corpus";
  TempDir dir;
  int n = 0;
  auto expect_ok_or_named = [&](const std::filesystem::path& input, const std::string& source,
                                const std::function<void()>& f) {
    std::string msg = "(accepted)";
    try {
      f();
    } catch (const hd::Error& e) {
      msg = e.what();
    } catch (const std::exception& e) {
      msg = std::string("not an hd::Error: ") + e.what();
    }
    EXPECT_TRUE(msg == "(accepted)" || msg.rfind(source + ": ", 0) == 0) << input << ": " << msg;
    ++n;
  };
  for (const auto& e : std::filesystem::directory_iterator(corpus / "idx")) {
    auto bytes = read_all(e.path().string());
    if (bytes.empty()) continue;
    const std::string path = dir.file("in.idx");
    std::vector<uint8_t> rest(bytes.begin() + 1, bytes.end());
    if (bytes[0] & 1) write_gz(path, rest);
    else write_plain(path, rest);
    expect_ok_or_named(e.path(), path, [&] { read_idx_images(path); });
    expect_ok_or_named(e.path(), path, [&] { read_idx_labels(path); });
  }
  for (const auto& e : std::filesystem::directory_iterator(corpus / "image")) {
    auto bytes = read_all(e.path().string());
    expect_ok_or_named(e.path(), "fuzz-input", [&] { decode_image(bytes.data(), bytes.size(), "fuzz-input"); });
  }
  EXPECT_GE(n, 10);
}
