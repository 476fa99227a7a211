// JPEG region decoding and the one-step decode + transform, checked against the generic path
// (decode_image + transform_image, itself checked against torchvision in test_transforms).
#include <gtest/gtest.h>

#include <random>

#include <torch/torch.h>

#include "data/decode_transform.h"
#include "data/image_codec.h"
#include "data/transforms.h"
#include "test_util.h"

using namespace hd::data;
using hd::testing::error_of;

namespace {

// A photo-like RGB image: smooth colour gradients, edges and some noise (uint8 [3,h,w]).
torch::Tensor photo(int64_t h, int64_t w, int seed) {
  torch::manual_seed(seed);
  auto y = torch::linspace(0, 1, h).view({1, -1, 1});
  auto x = torch::linspace(0, 1, w).view({1, 1, -1});
  auto c = torch::rand({3, 1, 1}) * 6.0;
  auto img = 127 + 80 * torch::sin(x * (5 + seed % 3) + c) * torch::cos(y * 4 - c) + 40 * ((x + y) > 0.9).to(torch::kFloat) +
             torch::randn({3, h, w}) * 8;
  return img.round().clamp(0, 255).to(torch::kUInt8).contiguous();
}

std::vector<uint8_t> jpeg_of(int64_t h, int64_t w, int seed, bool gray = false) {
  torch::Tensor img = photo(h, w, seed);
  if (gray) img = img.narrow(0, 0, 1).contiguous();
  return encode_jpeg(img, 90);
}

double max_abs(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

}  // namespace

TEST(DecodeTransform, RegionDecodeEqualsTheCropOfAFullDecode) {
  for (bool gray : {false, true})
    for (auto [h, w] : {std::pair<int64_t, int64_t>{97, 123}, {375, 500}}) {
      const auto bytes = jpeg_of(h, w, 3, gray);
      const torch::Tensor full = decode_image(bytes.data(), bytes.size(), "x.jpg").permute({1, 2, 0});
      for (auto [y0, y1, x0, x1] : std::vector<std::array<int64_t, 4>>{
               {0, h, 0, w}, {0, 1, 0, 1}, {17, 61, 33, 90}, {h - 5, h, w - 7, w}, {8, 9, 16, 17}, {1, h - 1, 1, w - 1}}) {
        const ImageRegion r = decode_jpeg_region(bytes.data(), bytes.size(), "x.jpg", 8, y0, y1, x0, x1);
        ASSERT_EQ(r.top, y0);
        ASSERT_EQ(r.left, x0);
        ASSERT_EQ(r.hwc.size(0), y1 - y0);
        ASSERT_EQ(r.hwc.size(1), x1 - x0);
        EXPECT_EQ(r.image_height, h);
        EXPECT_EQ(r.image_width, w);
        const torch::Tensor expect = full.slice(0, y0, y1).slice(1, x0, x1);
        EXPECT_TRUE(torch::equal(r.hwc, expect)) << "gray " << gray << " " << h << "x" << w << " rows [" << y0 << ","
                                                 << y1 << ") cols [" << x0 << "," << x1 << ")";
      }
    }
}

TEST(DecodeTransform, ScaledRegionSizesFollowLibjpeg) {
  const auto bytes = jpeg_of(375, 500, 1);
  for (int m : {1, 2, 3, 4, 5, 6, 7}) {
    const int64_t sh = jpeg_scaled_size(375, m), sw = jpeg_scaled_size(500, m);
    EXPECT_EQ(sh, (375 * m + 7) / 8);
    const ImageRegion r = decode_jpeg_region(bytes.data(), bytes.size(), "x.jpg", m, 0, sh, 0, sw);
    EXPECT_EQ(r.image_height, sh);
    EXPECT_EQ(r.image_width, sw);
    EXPECT_EQ(r.hwc.size(0), sh);
    EXPECT_EQ(r.hwc.size(1), sw);
    // A reduced-scale decode is a low-passed, subsampled version of the image: close to the
    // antialiased resize of the full decode.
    const torch::Tensor full = decode_image(bytes.data(), bytes.size(), "x.jpg").to(torch::kFloat) / 255;
    const torch::Tensor ref = resize(full, sh, sw);
    const torch::Tensor got = r.hwc.permute({2, 0, 1}).to(torch::kFloat) / 255;
    EXPECT_LT((got - ref).abs().mean().item<double>(), 0.03) << m;
  }
}

TEST(DecodeTransform, ScaleChoiceKeepsTheWindowAtLeastTheOutput) {
  EXPECT_EQ(jpeg_scale_for(448, 448, 224, 224), 4);
  EXPECT_EQ(jpeg_scale_for(447, 448, 224, 224), 8);  // 447 * 4/8 < 224 (and 5/8 .. 7/8 are not used)
  EXPECT_EQ(jpeg_scale_for(1792, 1800, 224, 224), 1);
  EXPECT_EQ(jpeg_scale_for(1791, 1800, 224, 224), 2);
  EXPECT_EQ(jpeg_scale_for(100, 100, 224, 224), 8);   // upscaled: full size
  EXPECT_EQ(jpeg_scale_for(768, 1024, 256, 341), 4);  // eval of a 1024x768 photo at 224
}

TEST(DecodeTransform, WithoutDctScalingEqualsTheGenericPath) {
  const auto bytes = jpeg_of(375, 500, 7);
  const torch::Tensor decoded = decode_image(bytes.data(), bytes.size(), "x.jpg");
  for (int64_t channels : {3, 1})
    for (bool train : {true, false})
      for (int64_t size : {224, 96, 600}) {
        TransformConfig cfg;
        cfg.train = train;
        cfg.size = size;
        cfg.channels = channels;
        cfg.jpeg_dct_scaling = false;
        if (channels == 1) {
          cfg.mean = {0.5};
          cfg.std = {0.25};
        }
        for (uint64_t seed = 0; seed < (train ? 8u : 1u); ++seed) {
          std::mt19937_64 a(seed), b(seed);
          const torch::Tensor expect = transform_image(decoded, cfg, a);
          const torch::Tensor got = decode_transform(bytes.data(), bytes.size(), "x.jpg", cfg, b);
          ASSERT_EQ(got.sizes(), expect.sizes());
          EXPECT_LT(max_abs(got, expect), 2e-5) << "channels " << channels << " train " << train << " size " << size
                                                << " seed " << seed;
          EXPECT_EQ(a(), b()) << "the same random draws";
        }
      }
}

TEST(DecodeTransform, DctScalingStaysCloseToTheExactResultAndOnlyTrains) {
  const auto bytes = jpeg_of(375, 500, 11);
  const torch::Tensor decoded = decode_image(bytes.data(), bytes.size(), "x.jpg");
  for (bool train : {true, false}) {
    TransformConfig cfg;
    cfg.train = train;
    cfg.size = train ? 48 : 64;  // small outputs: a reduced scale would serve every window
    double worst = 0;
    for (uint64_t seed = 0; seed < 16; ++seed) {
      std::mt19937_64 a(seed), b(seed);
      const torch::Tensor expect = transform_image(decoded, cfg, a);
      const torch::Tensor got = decode_transform(bytes.data(), bytes.size(), "x.jpg", cfg, b);
      ASSERT_EQ(got.sizes(), expect.sizes());
      if (!train) EXPECT_LT(max_abs(got, expect), 2e-5) << "evaluation decodes at full size";
      // In units of the input range [0, 1] (the normalised values are divided by std ~0.225).
      worst = std::max(worst, (got - expect).abs().mean().item<double>() * 0.225);
      EXPECT_EQ(a(), b());
    }
    if (train) {
      EXPECT_LT(worst, 0.02);
      EXPECT_GT(worst, 1e-3) << "the reduced scale was not used";
    }
  }
}

TEST(DecodeTransform, WritesIntoTheGivenSlot) {
  const auto bytes = jpeg_of(100, 120, 5);
  TransformConfig cfg;
  cfg.train = true;
  cfg.size = 32;
  torch::Tensor batch = torch::zeros({2, 3, 32, 32});
  std::mt19937_64 a(1), b(1);
  const torch::Tensor got = decode_transform(bytes.data(), bytes.size(), "x.jpg", cfg, a, batch[1]);
  EXPECT_EQ(got.data_ptr(), batch[1].data_ptr());
  EXPECT_TRUE(torch::equal(batch[1], decode_transform(bytes.data(), bytes.size(), "x.jpg", cfg, b)));
  EXPECT_EQ(batch[0].abs().sum().item<float>(), 0.0f);
  std::mt19937_64 c(1);
  torch::Tensor wrong = torch::zeros({3, 31, 32});
  EXPECT_NE(error_of([&] { decode_transform(bytes.data(), bytes.size(), "x.jpg", cfg, c, wrong); }).find("contiguous float32 [3, 32, 32]"),
            std::string::npos);
}

TEST(DecodeTransform, PngTakesTheGenericPath) {
  const torch::Tensor img = photo(60, 80, 2);
  const auto bytes = encode_png(img);
  TransformConfig cfg;
  cfg.train = true;
  cfg.size = 32;
  std::mt19937_64 a(5), b(5);
  const torch::Tensor expect = transform_image(img, cfg, a);
  const torch::Tensor got = decode_transform(bytes.data(), bytes.size(), "x.png", cfg, b);
  EXPECT_TRUE(torch::equal(got, expect));
}

TEST(DecodeTransform, TruncatedOrCorruptJpegsFailWhateverTheWindow) {
  auto bytes = jpeg_of(375, 500, 4);
  bytes.resize(bytes.size() * 2 / 3);  // the bottom third is missing
  TransformConfig cfg;
  cfg.train = true;
  cfg.size = 64;
  cfg.scale_min = cfg.scale_max = 0.05;  // small crops, most of them in the part that is there
  for (uint64_t seed = 0; seed < 6; ++seed) {
    std::mt19937_64 rng(seed);
    const std::string msg = error_of([&] { decode_transform(bytes.data(), bytes.size(), "cut.jpg", cfg, rng); });
    EXPECT_NE(msg.find("cut.jpg: cannot decode JPEG"), std::string::npos) << msg;
    EXPECT_NE(msg.find("Premature end"), std::string::npos) << msg;
  }
  const std::vector<uint8_t> junk = {0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x02, 0x12, 0x34};
  std::mt19937_64 rng(0);
  EXPECT_NE(error_of([&] { decode_transform(junk.data(), junk.size(), "junk.jpg", cfg, rng); }).find("junk.jpg: invalid JPEG"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              const auto ok = jpeg_of(40, 40, 1);
              decode_jpeg_region(ok.data(), ok.size(), "w.jpg", 8, 0, 41, 0, 10);
            }).find("w.jpg: cannot decode JPEG rows [0,41)"),
            std::string::npos);
}
