// JPEG/PNG decoding and ImageFolder, on files the tests write themselves.
#include <gtest/gtest.h>
#include <png.h>
#include <turbojpeg.h>

#include <cstring>
#include <filesystem>

#include "data/data_test_util.h"
#include "data/dataset.h"
#include "data/image_codec.h"
#include "data/image_folder.h"
#include "data/loader.h"
#include "test_util.h"

using namespace hd::data;
using namespace hd::data::testing;
namespace fs = std::filesystem;

namespace {

// A smooth RGB test picture (JPEG-friendly) with a different pattern per channel.
torch::Tensor test_picture(int64_t h, int64_t w, int64_t channels = 3, int seed = 0) {
  auto y = torch::arange(h, torch::kFloat).view({1, -1, 1});
  auto x = torch::arange(w, torch::kFloat).view({1, 1, -1});
  auto c = torch::arange(channels, torch::kFloat).view({-1, 1, 1});
  auto v = 127.5 + 100 * torch::sin(x * 0.11 + c * 1.3 + seed) * torch::cos(y * 0.07 - c * 0.5);
  return v.round().clamp(0, 255).to(torch::kUInt8).contiguous();
}

using hd::testing::error_of;

void mkdirs(const std::string& p) { fs::create_directories(p); }

}  // namespace

TEST(ImageCodec, PngRoundTripIsExact) {
  for (int64_t c : {1, 3}) {
    torch::Tensor img = test_picture(17, 23, c);
    auto bytes = encode_png(img);
    torch::Tensor back = decode_image(bytes.data(), bytes.size(), "mem.png");
    ASSERT_EQ(back.sizes(), (std::vector<int64_t>{3, 17, 23}));
    EXPECT_EQ(back.scalar_type(), torch::kUInt8);
    // Gray is expanded by repeating the plane; colour comes back bit-exact.
    EXPECT_TRUE(torch::equal(back, img.expand({3, 17, 23}))) << "channels " << c;
  }
}

TEST(ImageCodec, JpegDecodesCloseToSource) {
  torch::Tensor img = test_picture(40, 56);
  auto bytes = encode_jpeg(img, 95);
  torch::Tensor back = decode_image(bytes.data(), bytes.size(), "mem.jpg");
  ASSERT_EQ(back.sizes(), (std::vector<int64_t>{3, 40, 56}));
  const double err = (back.to(torch::kFloat) - img.to(torch::kFloat)).abs().mean().item<double>();
  EXPECT_LT(err, 3.0);
  // Gray JPEG -> three equal planes.
  torch::Tensor gray = test_picture(16, 16, 1);
  auto gbytes = encode_jpeg(gray, 95);
  torch::Tensor gback = decode_image(gbytes.data(), gbytes.size(), "gray.jpg");
  ASSERT_EQ(gback.size(0), 3);
  EXPECT_TRUE(torch::equal(gback[0], gback[1]));
  EXPECT_TRUE(torch::equal(gback[1], gback[2]));
  EXPECT_LT((gback[0].to(torch::kFloat) - gray[0].to(torch::kFloat)).abs().mean().item<double>(), 3.0);
}

TEST(ImageCodec, PngAlphaIsDroppedNotComposited) {
  // RGBA with alpha 0 everywhere: compositing on black would give zeros, PIL's convert("RGB")
  // (and we) keep the colours.
  torch::Tensor rgb = test_picture(5, 7);
  torch::Tensor rgba = torch::cat({rgb, torch::zeros({1, 5, 7}, torch::kUInt8)}, 0).permute({1, 2, 0}).contiguous();
  png_image img;
  std::memset(&img, 0, sizeof(img));
  img.version = PNG_IMAGE_VERSION;
  img.width = 7;
  img.height = 5;
  img.format = PNG_FORMAT_RGBA;
  png_alloc_size_t size = 0;
  ASSERT_TRUE(png_image_write_to_memory(&img, nullptr, &size, 0, rgba.data_ptr<uint8_t>(), 0, nullptr));
  std::vector<uint8_t> bytes(size);
  ASSERT_TRUE(png_image_write_to_memory(&img, bytes.data(), &size, 0, rgba.data_ptr<uint8_t>(), 0, nullptr));
  torch::Tensor back = decode_image(bytes.data(), size, "alpha.png");
  EXPECT_TRUE(torch::equal(back, rgb));
}

TEST(ImageCodec, CmykJpegConvertedLikePil) {
  // TurboJPEG writes CMYK as Adobe-style YCCK; decoding gives RGB = C*K/255 on the stored values
  // (what PIL's convert("RGB") gives, checked against PIL in Transforms.MatchesTorchvision).
  const int w = 16, h = 8;
  std::vector<unsigned char> px(w * h * 4);
  for (int i = 0; i < w * h; ++i) {
    px[4 * i] = static_cast<unsigned char>(i * 13 % 256);
    px[4 * i + 1] = static_cast<unsigned char>(i * 7 % 256);
    px[4 * i + 2] = 200;
    px[4 * i + 3] = static_cast<unsigned char>(128 + i % 100);
  }
  tjhandle tj = tjInitCompress();
  ASSERT_NE(tj, nullptr);
  unsigned char* out = nullptr;
  unsigned long size = 0;
  ASSERT_EQ(tjCompress2(tj, px.data(), w, 0, h, TJPF_CMYK, &out, &size, TJSAMP_444, 100, 0), 0) << tjGetErrorStr2(tj);
  std::vector<uint8_t> bytes(out, out + size);
  tjFree(out);
  tjDestroy(tj);
  torch::Tensor rgb = decode_image(bytes.data(), bytes.size(), "cmyk.jpg");
  ASSERT_EQ(rgb.sizes(), (std::vector<int64_t>{3, h, w}));
  for (int i = 0; i < w * h; ++i)
    for (int c = 0; c < 3; ++c) {
      const int expected = (px[4 * i + c] * px[4 * i + 3] + 127) / 255;
      ASSERT_NEAR(rgb[c][i / w][i % w].item<int>(), expected, 3) << "pixel " << i << " channel " << c;
    }
}

TEST(ImageCodec, ErrorsNameTheSource) {
  // Every failure below must leave this thread able to decode a valid JPEG afterwards.
  const torch::Tensor good_pic = test_picture(24, 24);
  const auto good = encode_jpeg(good_pic, 95);
  auto expect_recovers = [&] {
    EXPECT_EQ(decode_image(good.data(), good.size(), "good.jpg").sizes(), (std::vector<int64_t>{3, 24, 24}));
  };
  std::vector<uint8_t> junk = {'G', 'I', 'F', '8', '9', 'a', 1, 2, 3};
  std::string msg = error_of([&] { decode_image(junk.data(), junk.size(), "/x/anim.png"); });
  EXPECT_NE(msg.find("/x/anim.png"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not a JPEG or PNG"), std::string::npos) << msg;

  std::vector<uint8_t> bad_jpeg = {0xFF, 0xD8, 0xFF, 0xE0, 0, 16, 'J', 'F', 'I', 'F', 0, 1, 1};
  msg = error_of([&] { decode_image(bad_jpeg.data(), bad_jpeg.size(), "/x/broken.jpg"); });
  EXPECT_NE(msg.find("/x/broken.jpg"), std::string::npos) << msg;
  expect_recovers();
  std::vector<uint8_t> bad_dqt = {0xFF, 0xD8, 0xFF, 0xDB, 1, 2, 3, 4, 5};
  msg = error_of([&] { decode_image(bad_dqt.data(), bad_dqt.size(), "/x/dqt.jpg"); });
  EXPECT_NE(msg.find("/x/dqt.jpg"), std::string::npos) << msg;
  expect_recovers();

  // Truncated JPEG: libjpeg would gray-fill the missing part with only a warning.
  auto jpeg = encode_jpeg(test_picture(64, 64), 90);
  jpeg.resize(jpeg.size() * 2 / 3);
  msg = error_of([&] { decode_image(jpeg.data(), jpeg.size(), "/x/cut.jpg"); });
  EXPECT_NE(msg.find("/x/cut.jpg"), std::string::npos) << msg;
  EXPECT_NE(msg.find("Premature end"), std::string::npos) << msg;
  expect_recovers();

  auto png = encode_png(test_picture(32, 32));
  png.resize(png.size() / 2);
  msg = error_of([&] { decode_image(png.data(), png.size(), "/x/cut.png"); });
  EXPECT_NE(msg.find("/x/cut.png"), std::string::npos) << msg;

  msg = error_of([&] { decode_image(nullptr, 0, "/x/empty.jpg"); });
  EXPECT_NE(msg.find("/x/empty.jpg"), std::string::npos) << msg;
  msg = error_of([&] { load_image("/nonexistent/dir/a.jpg"); });
  EXPECT_NE(msg.find("/nonexistent/dir/a.jpg"), std::string::npos) << msg;
}

// root/
//   cat/a.jpg  cat/b.PNG  cat/notes.txt  cat/._a.jpg (hidden, garbage)
//   dog/gray.png  dog/x.jpeg  dog/sub/y.png
//   .ipynb_checkpoints/z.png (hidden class)
class ImageFolderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root = dir.file("root");
    mkdirs(root + "/cat");
    mkdirs(root + "/dog/sub");
    mkdirs(root + "/.ipynb_checkpoints");
    write_file_bytes(root + "/cat/a.jpg", encode_jpeg(test_picture(20, 30, 3, 1), 95));
    cat_png = test_picture(12, 9, 3, 2);
    write_file_bytes(root + "/cat/b.PNG", encode_png(cat_png));
    write_plain(root + "/cat/notes.txt", {'h', 'i'});
    write_plain(root + "/cat/._a.jpg", {0, 5, 22, 7});
    gray = test_picture(10, 11, 1, 3);
    write_file_bytes(root + "/dog/gray.png", encode_png(gray));
    write_file_bytes(root + "/dog/x.jpeg", encode_jpeg(test_picture(8, 8, 3, 4), 95));
    write_file_bytes(root + "/dog/sub/y.png", encode_png(test_picture(6, 5, 3, 5)));
    write_file_bytes(root + "/.ipynb_checkpoints/z.png", encode_png(test_picture(6, 5, 3, 5)));
  }
  TempDir dir;
  std::string root;
  torch::Tensor cat_png, gray;
};

TEST_F(ImageFolderTest, ListsClassesAndFilesSorted) {
  auto ds = open_image_folder(root);
  EXPECT_EQ(ds->class_names(), (std::vector<std::string>{"cat", "dog"}));
  ASSERT_EQ(ds->size(), 5u);
  const std::vector<std::string> expected = {"cat/a.jpg", "cat/b.PNG", "dog/gray.png", "dog/sub/y.png", "dog/x.jpeg"};
  const std::vector<int64_t> labels = {0, 0, 1, 1, 1};
  for (size_t i = 0; i < ds->size(); ++i) {
    EXPECT_EQ(ds->source(i), (fs::path(root) / expected[i]).string());
    EXPECT_EQ(ds->label(i), labels[i]);
  }
  EXPECT_EQ(ds->name(), "image-folder:" + root);
}

TEST_F(ImageFolderTest, DecodesLazilyToRgb) {
  auto ds = open_image_folder(root);
  torch::Tensor a = ds->image(0);
  EXPECT_EQ(a.sizes(), (std::vector<int64_t>{3, 20, 30}));
  EXPECT_TRUE(torch::equal(ds->image(1), cat_png));
  torch::Tensor g = ds->image(2);  // grayscale PNG expanded to 3 identical planes
  ASSERT_EQ(g.sizes(), (std::vector<int64_t>{3, 10, 11}));
  for (int c = 0; c < 3; ++c) EXPECT_TRUE(torch::equal(g[c], gray[0]));
  // Files are read on demand: replacing one after opening is visible, removing one is an error
  // naming it.
  fs::remove(root + "/dog/x.jpeg");
  std::string msg = error_of([&] { ds->image(4); });
  EXPECT_NE(msg.find(root + "/dog/x.jpeg"), std::string::npos) << msg;
}

TEST_F(ImageFolderTest, CorruptFileErrorNamesPath) {
  write_plain(root + "/dog/bad.jpg", {0xFF, 0xD8, 0xFF, 0xDB, 1, 2, 3, 4, 5});
  auto ds = open_image_folder(root);
  ASSERT_EQ(ds->source(2), root + "/dog/bad.jpg");
  std::string msg = error_of([&] { ds->image(2); });
  EXPECT_NE(msg.find(root + "/dog/bad.jpg"), std::string::npos) << msg;
}

TEST_F(ImageFolderTest, SkipBadDropsAndCounts) {
  write_plain(root + "/dog/bad.jpg", {0xFF, 0xD8, 0xFF, 0xDB, 1, 2, 3, 4, 5});
  auto ds = open_image_folder(root);  // 6 samples, index 2 is bad
  LoaderConfig cfg;
  cfg.batch_size = 4;
  cfg.drop_last = false;
  cfg.shuffle = false;
  cfg.num_workers = 2;
  cfg.transform.size = 8;
  cfg.skip_bad = true;
  DataLoader loader(ds, cfg);
  loader.start_epoch(0);
  Batch b;
  ASSERT_TRUE(loader.next(b));
  EXPECT_EQ(b.skipped, 1);
  EXPECT_EQ(b.images.size(0), 3);
  EXPECT_EQ(b.labels.size(0), 3);
  EXPECT_EQ(b.indices[2].item<int64_t>(), 3);  // 0, 1, (2 dropped), 3
  ASSERT_TRUE(loader.next(b));
  EXPECT_EQ(b.skipped, 0);
  EXPECT_EQ(b.images.size(0), 2);
  EXPECT_FALSE(loader.next(b));
  EXPECT_EQ(loader.skipped_total(), 1);

  // Without skip_bad the same file stops the epoch with its path.
  cfg.skip_bad = false;
  DataLoader strict(ds, cfg);
  strict.start_epoch(0);
  std::string msg = error_of([&] { strict.next(b); });
  EXPECT_NE(msg.find(root + "/dog/bad.jpg"), std::string::npos) << msg;
  EXPECT_FALSE(strict.next(b));
}

TEST_F(ImageFolderTest, FolderErrorsNameTheFolder) {
  std::string msg = error_of([&] { open_image_folder(dir.file("missing")); });
  EXPECT_NE(msg.find(dir.file("missing")), std::string::npos) << msg;

  mkdirs(dir.file("empty"));
  msg = error_of([&] { open_image_folder(dir.file("empty")); });
  EXPECT_NE(msg.find(dir.file("empty")), std::string::npos) << msg;
  EXPECT_NE(msg.find("no class subfolders"), std::string::npos) << msg;

  mkdirs(dir.file("noimages/cls"));
  write_plain(dir.file("noimages/cls/readme.md"), {'x'});
  msg = error_of([&] { open_image_folder(dir.file("noimages")); });
  EXPECT_NE(msg.find(dir.file("noimages/cls")), std::string::npos) << msg;
}

TEST_F(ImageFolderTest, PngNamedJpgIsDecodedBySignature) {
  write_file_bytes(root + "/cat/c.jpg", encode_png(cat_png));
  auto ds = open_image_folder(root);
  ASSERT_EQ(ds->source(2), root + "/cat/c.jpg");
  EXPECT_TRUE(torch::equal(ds->image(2), cat_png));
}

TEST_F(ImageFolderTest, OpenDatasetSpecs) {
  // A folder without split subfolders is used as is for every split.
  EXPECT_EQ(open_dataset(root, "train")->size(), 5u);
  EXPECT_EQ(open_dataset("folder:" + root, "val")->size(), 5u);
  // With split subfolders the requested split is used; a missing split is an error.
  mkdirs(dir.file("splits/train/a"));
  mkdirs(dir.file("splits/val/a"));
  mkdirs(dir.file("splits/val/b"));
  write_file_bytes(dir.file("splits/train/a/1.png"), encode_png(cat_png));
  write_file_bytes(dir.file("splits/val/a/1.png"), encode_png(cat_png));
  write_file_bytes(dir.file("splits/val/b/1.png"), encode_png(cat_png));
  EXPECT_EQ(open_dataset(dir.file("splits"), "train")->class_names().size(), 1u);
  EXPECT_EQ(open_dataset(dir.file("splits"), "val")->class_names().size(), 2u);
  std::string msg = error_of([&] { open_dataset(dir.file("splits"), "test"); });
  EXPECT_NE(msg.find(dir.file("splits/test")), std::string::npos) << msg;

  msg = error_of([&] { open_dataset("imagenet-21k", "train"); });
  EXPECT_NE(msg.find("imagenet-21k"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unknown data set"), std::string::npos) << msg;
  msg = error_of([&] { open_dataset(root, "dev"); });
  EXPECT_NE(msg.find("dev"), std::string::npos) << msg;
  msg = error_of([&] { open_dataset("fashion-mnist:" + dir.file("nothing"), "train"); });
  EXPECT_NE(msg.find(dir.file("nothing")), std::string::npos) << msg;
}

TEST(OpenDataset, DefaultFashionMnist) {
  if (!fs::exists(std::string("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")))
    GTEST_SKIP() << "Fashion-MNIST not installed";
  auto ds = open_dataset("fashion-mnist", "val");
  EXPECT_EQ(ds->size(), 10000u);
  EXPECT_EQ(open_dataset("fashion-mnist:/usr/share/datasets/fashion-mnist", "test")->size(), 10000u);
}
