// IDX reader: hand-made files (plain and gzip), every validation error, real Fashion-MNIST.
#include <gtest/gtest.h>

#include <filesystem>

#include "data/data_test_util.h"
#include "data/idx.h"

using namespace hd::data;
using namespace hd::data::testing;

namespace {

// 3 images of 2x3 pixels: image k has pixels 10k + (0..5).
std::vector<uint8_t> tiny_pixels() {
  std::vector<uint8_t> p;
  for (int k = 0; k < 3; ++k)
    for (int j = 0; j < 6; ++j) p.push_back(static_cast<uint8_t>(10 * k + j));
  return p;
}

std::vector<uint8_t> tiny_images() { return idx_bytes(0x00000803, {3, 2, 3}, tiny_pixels()); }
std::vector<uint8_t> tiny_labels() { return idx_bytes(0x00000801, {3}, {0, 2, 1}); }

// Runs fn, expecting an hd::Error whose message contains every one of `parts`.
template <class Fn>
void expect_error(Fn fn, const std::vector<std::string>& parts) {
  try {
    fn();
    FAIL() << "expected hd::Error containing '" << parts.front() << "'";
  } catch (const hd::Error& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << "\nmissing: " << p;
  }
}

}  // namespace

TEST(Idx, ParsesPlainAndGzip) {
  TempDir dir;
  for (bool gz : {false, true}) {
    SCOPED_TRACE(gz ? "gzip" : "plain");
    const std::string img = dir.file(gz ? "img.gz" : "img"), lab = dir.file(gz ? "lab.gz" : "lab");
    (gz ? write_gz : write_plain)(img, tiny_images());
    (gz ? write_gz : write_plain)(lab, tiny_labels());

    torch::Tensor images = read_idx_images(img);
    ASSERT_EQ(images.sizes(), (std::vector<int64_t>{3, 2, 3}));
    EXPECT_EQ(images.scalar_type(), torch::kUInt8);
    EXPECT_EQ(images[1][1][2].item<int>(), 15);  // image 1, row 1, col 2 -> 10 + 5
    EXPECT_EQ(images[2][0][0].item<int>(), 20);

    auto ds = open_idx(img, lab, {"a", "b", "c"});
    ASSERT_EQ(ds->size(), 3u);
    EXPECT_EQ(ds->label(0), 0);
    EXPECT_EQ(ds->label(1), 2);
    EXPECT_EQ(ds->label(2), 1);
    EXPECT_EQ(ds->class_names(), (std::vector<std::string>{"a", "b", "c"}));
    EXPECT_EQ(ds->source(2), img + "#2");
    torch::Tensor im = ds->image(2);
    ASSERT_EQ(im.sizes(), (std::vector<int64_t>{1, 2, 3}));
    EXPECT_TRUE(torch::equal(im[0], images[2]));
    // image() hands out a copy: scribbling on it must not change the data set.
    im.fill_(255);
    EXPECT_EQ(ds->image(2)[0][0][0].item<int>(), 20);
    EXPECT_THROW(ds->image(3), hd::Error);
  }
}

TEST(Idx, DefaultClassNamesCoverLargestLabel) {
  TempDir dir;
  write_plain(dir.file("i"), tiny_images());
  write_plain(dir.file("l"), tiny_labels());
  auto ds = open_idx(dir.file("i"), dir.file("l"), {});
  EXPECT_EQ(ds->class_names(), (std::vector<std::string>{"0", "1", "2"}));
}

TEST(Idx, TruncatedFilesNameTheFile) {
  TempDir dir;
  auto bytes = tiny_images();
  bytes.pop_back();
  write_plain(dir.file("short"), bytes);
  expect_error([&] { read_idx_images(dir.file("short")); }, {dir.file("short"), "truncated"});
  write_gz(dir.file("short.gz"), bytes);
  expect_error([&] { read_idx_images(dir.file("short.gz")); }, {dir.file("short.gz"), "truncated"});

  // A gzip stream cut in the middle: zlib reports the broken stream, we name the file.
  std::vector<uint8_t> big_payload(3 * 64 * 64);
  for (size_t i = 0; i < big_payload.size(); ++i) big_payload[i] = static_cast<uint8_t>((i * 7919) >> 3);
  write_gz(dir.file("full.gz"), idx_bytes(0x00000803, {3, 64, 64}, big_payload));
  auto gz = read_all(dir.file("full.gz"));
  gz.resize(gz.size() / 2);
  write_plain(dir.file("cut.gz"), gz);
  expect_error([&] { read_idx_images(dir.file("cut.gz")); }, {dir.file("cut.gz")});

  write_plain(dir.file("header"), {0, 0, 8, 3, 0, 0});
  expect_error([&] { read_idx_images(dir.file("header")); }, {dir.file("header"), "truncated"});
  write_plain(dir.file("empty"), {});
  expect_error([&] { read_idx_labels(dir.file("empty")); }, {dir.file("empty"), "truncated"});
}

TEST(Idx, TrailingDataIsAnError) {
  TempDir dir;
  auto bytes = tiny_images();
  bytes.push_back(0);
  write_gz(dir.file("long.gz"), bytes);
  expect_error([&] { read_idx_images(dir.file("long.gz")); }, {dir.file("long.gz"), "trailing data"});
  auto labels = tiny_labels();
  labels.insert(labels.end(), {1, 2});
  write_plain(dir.file("long_labels"), labels);
  expect_error([&] { read_idx_labels(dir.file("long_labels")); }, {dir.file("long_labels"), "trailing data", "2 bytes"});
}

TEST(Idx, BadMagicNamesTheFile) {
  TempDir dir;
  write_plain(dir.file("labels"), tiny_labels());
  expect_error([&] { read_idx_images(dir.file("labels")); }, {dir.file("labels"), "magic", "0x00000801"});
  write_plain(dir.file("images"), tiny_images());
  expect_error([&] { read_idx_labels(dir.file("images")); }, {dir.file("images"), "magic"});
  write_plain(dir.file("float"), idx_bytes(0x00000D03, {1, 1, 1}, {0, 0, 0, 0}));
  expect_error([&] { read_idx_images(dir.file("float")); }, {dir.file("float"), "element type"});
  write_plain(dir.file("text"), {'h', 'e', 'l', 'l', 'o', '\n'});
  expect_error([&] { read_idx_images(dir.file("text")); }, {dir.file("text"), "not an IDX file"});
}

TEST(Idx, CountMismatchNamesBothFiles) {
  TempDir dir;
  write_plain(dir.file("i"), tiny_images());
  write_plain(dir.file("l"), idx_bytes(0x00000801, {2}, {0, 1}));
  expect_error([&] { open_idx(dir.file("i"), dir.file("l"), {}); }, {dir.file("l"), dir.file("i"), "2 labels", "3 images"});
}

TEST(Idx, LabelOutOfRange) {
  TempDir dir;
  write_plain(dir.file("i"), tiny_images());
  write_plain(dir.file("l"), tiny_labels());
  expect_error([&] { open_idx(dir.file("i"), dir.file("l"), {"a", "b"}); }, {dir.file("l"), "label 2", "sample 1"});
}

TEST(Idx, AbsurdSizesRefusedBeforeAllocating) {
  TempDir dir;
  // 2^31 images of 28x28 would be 1.6 TB: must fail on the header, not on allocation.
  write_plain(dir.file("huge"), idx_bytes(0x00000803, {0x80000000u, 28, 28}, {1, 2, 3}));
  expect_error([&] { read_idx_images(dir.file("huge")); }, {dir.file("huge"), "limit"});
  write_plain(dir.file("wide"), idx_bytes(0x00000803, {1, 1, 0x10000000u}, {}));
  expect_error([&] { read_idx_images(dir.file("wide")); }, {dir.file("wide"), "implausible"});
  write_plain(dir.file("zero"), idx_bytes(0x00000803, {0, 28, 28}, {}));
  expect_error([&] { read_idx_images(dir.file("zero")); }, {dir.file("zero"), "no images"});
  write_plain(dir.file("hugelabels"), idx_bytes(0x00000801, {0xFFFFFFFFu}, {1}));
  expect_error([&] { read_idx_labels(dir.file("hugelabels")); }, {dir.file("hugelabels")});
}

TEST(Idx, MissingFile) {
  TempDir dir;
  expect_error([&] { read_idx_images(dir.file("nope.gz")); }, {dir.file("nope.gz"), "no such file"});
  expect_error([&] { open_fashion_mnist(dir.file("nowhere"), "train"); }, {dir.file("nowhere")});
  expect_error([&] { open_fashion_mnist(dir.path(), "train"); }, {"train-images-idx3-ubyte.gz"});
  expect_error([&] { open_fashion_mnist(dir.path(), "holdout"); }, {"holdout"});
}

TEST(Idx, FashionMnistFromUncompressedFiles) {
  TempDir dir;
  write_plain(dir.file("t10k-images-idx3-ubyte"), tiny_images());
  write_plain(dir.file("t10k-labels-idx1-ubyte"), tiny_labels());
  auto ds = open_fashion_mnist(dir.path(), "val");
  EXPECT_EQ(ds->size(), 3u);
  EXPECT_EQ(ds->class_names().size(), 10u);
  EXPECT_EQ(ds->name(), "fashion-mnist/test");
}

TEST(Idx, RealFashionMnist) {
  if (!std::filesystem::exists(std::string(kDefaultFashionMnistDir) + "/train-images-idx3-ubyte.gz"))
    GTEST_SKIP() << "Fashion-MNIST not installed (Debian package dataset-fashion-mnist)";
  for (const auto& [split, n] : {std::pair<std::string, int64_t>{"train", 60000}, {"test", 10000}}) {
    SCOPED_TRACE(split);
    auto ds = open_fashion_mnist(kDefaultFashionMnistDir, split);
    ASSERT_EQ(static_cast<int64_t>(ds->size()), n);
    EXPECT_EQ(ds->class_names(), fashion_mnist_classes());
    EXPECT_EQ(ds->class_names()[9], "Ankle boot");
    std::vector<int64_t> per_class(10, 0);
    for (size_t i = 0; i < ds->size(); ++i) {
      const int64_t l = ds->label(i);
      ASSERT_GE(l, 0);
      ASSERT_LT(l, 10);
      ++per_class[static_cast<size_t>(l)];
    }
    for (int64_t c : per_class) EXPECT_EQ(c, n / 10);  // Fashion-MNIST is exactly balanced
    torch::Tensor im = ds->image(0);
    EXPECT_EQ(im.sizes(), (std::vector<int64_t>{1, 28, 28}));
    EXPECT_EQ(im.scalar_type(), torch::kUInt8);
    EXPECT_GT(im.to(torch::kFloat).std().item<float>(), 10.0f);  // a real picture, not zeros
  }
  // The first training sample of Fashion-MNIST is an ankle boot (label 9).
  EXPECT_EQ(open_fashion_mnist()->label(0), 9);
}
