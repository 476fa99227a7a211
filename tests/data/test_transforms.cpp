// Transforms: each building block on hand-computed tensors, the composed pipeline, and parity with
// torchvision (when /usr/bin/python3 has it).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <turbojpeg.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "data/data_test_util.h"
#include "data/image_codec.h"
#include "data/transforms.h"

using namespace hd::data;
using namespace hd::data::testing;

namespace {

TransformConfig gray_identity_config(int64_t size) {
  TransformConfig cfg;
  cfg.size = size;
  cfg.crop_pct = 1.0;
  cfg.channels = 1;
  cfg.mean = {0.0};
  cfg.std = {1.0};
  return cfg;
}

torch::Tensor pattern_u8(int64_t c, int64_t h, int64_t w) {
  return (torch::arange(c * h * w).view({c, h, w}) * 37 % 256).to(torch::kUInt8);
}

}  // namespace

TEST(Transforms, RandomResizedCropParamsInRange) {
  const double smin = 0.08, smax = 1.0, rmin = 3.0 / 4, rmax = 4.0 / 3;
  int fallbacks = 0;
  for (auto [h, w] : {std::pair<int64_t, int64_t>{300, 400}, {480, 360}, {256, 256}}) {
    for (uint64_t seed = 0; seed < 400; ++seed) {
      std::mt19937_64 rng(seed);
      CropBox b = random_resized_crop_params(h, w, smin, smax, rmin, rmax, rng);
      ASSERT_GE(b.top, 0);
      ASSERT_GE(b.left, 0);
      ASSERT_GE(b.height, 1);
      ASSERT_GE(b.width, 1);
      ASSERT_LE(b.top + b.height, h);
      ASSERT_LE(b.left + b.width, w);
      const double area = double(b.height) * double(b.width) / (double(h) * double(w));
      const double ratio = double(b.width) / double(b.height);
      // Sides are >= ~70 px here, so rounding to whole pixels moves area/ratio by < 3 %.
      EXPECT_GE(area, smin * 0.97);
      EXPECT_LE(area, smax * 1.03);
      EXPECT_GE(ratio, rmin * 0.97);
      EXPECT_LE(ratio, rmax * 1.03);
      if (b.height == h || b.width == w) ++fallbacks;
    }
  }
  EXPECT_LT(fallbacks, 200);  // most crops are genuinely random windows
  // Same seed, same window.
  std::mt19937_64 r1(42), r2(42);
  CropBox a = random_resized_crop_params(300, 400, smin, smax, rmin, rmax, r1);
  CropBox b = random_resized_crop_params(300, 400, smin, smax, rmin, rmax, r2);
  EXPECT_EQ(std::tie(a.top, a.left, a.height, a.width), std::tie(b.top, b.left, b.height, b.width));
}

TEST(Transforms, RandomResizedCropFallbackIsCentralClampedCrop) {
  // No window of area >= 8 % with ratio in [3/4, 4/3] fits in 10x500: torchvision's fallback.
  std::mt19937_64 rng(7);
  CropBox wide = random_resized_crop_params(10, 500, 0.08, 1.0, 3.0 / 4, 4.0 / 3, rng);
  EXPECT_EQ(std::tie(wide.top, wide.left, wide.height, wide.width), std::make_tuple(0L, 243L, 10L, 13L));
  CropBox tall = random_resized_crop_params(500, 10, 0.08, 1.0, 3.0 / 4, 4.0 / 3, rng);
  EXPECT_EQ(std::tie(tall.top, tall.left, tall.height, tall.width), std::make_tuple(243L, 0L, 13L, 10L));
  // scale fixed at 1 and the image's own ratio in range: the whole image every time.
  CropBox whole = random_resized_crop_params(30, 40, 1.0, 1.0, 4.0 / 3, 4.0 / 3, rng);
  EXPECT_EQ(std::tie(whole.top, whole.left, whole.height, whole.width), std::make_tuple(0L, 0L, 30L, 40L));
}

TEST(Transforms, UniformHelpers) {
  std::mt19937_64 rng(1);
  std::vector<int> hist(5, 0);
  for (int i = 0; i < 5000; ++i) {
    double u = uniform01(rng);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    ++hist[static_cast<size_t>(uniform_int(rng, 5))];
  }
  for (int c : hist) EXPECT_NEAR(c, 1000, 150);
}

TEST(Transforms, HflipKnownTensor) {
  torch::Tensor x = torch::arange(12, torch::kFloat).view({2, 2, 3});
  torch::Tensor expected = torch::tensor({2.f, 1.f, 0.f, 5.f, 4.f, 3.f, 8.f, 7.f, 6.f, 11.f, 10.f, 9.f}).view({2, 2, 3});
  EXPECT_TRUE(torch::equal(hflip(x), expected));
}

TEST(Transforms, ShorterSideAndEvalSizes) {
  EXPECT_EQ(shorter_side_size(480, 640, 256), std::make_pair(int64_t{256}, int64_t{341}));
  EXPECT_EQ(shorter_side_size(640, 480, 256), std::make_pair(int64_t{341}, int64_t{256}));
  EXPECT_EQ(shorter_side_size(100, 100, 64), std::make_pair(int64_t{64}, int64_t{64}));
  EXPECT_EQ(eval_resize_size(224, 0.875), 256);
  EXPECT_EQ(eval_resize_size(224, 0.9), 248);
  EXPECT_EQ(eval_resize_size(224, 0.95), 235);
  EXPECT_EQ(eval_resize_size(28, 1.0), 28);
}

TEST(Transforms, CenterCropRoundsHalfToEven) {
  torch::Tensor x = torch::arange(9, torch::kFloat).view({1, 1, 9});
  // (9 - 4) / 2 = 2.5 -> Python round() gives 2, so columns 2..5.
  EXPECT_TRUE(torch::equal(center_crop(x, 1, 4), torch::tensor({2.f, 3.f, 4.f, 5.f}).view({1, 1, 4})));
  torch::Tensor y = torch::arange(7, torch::kFloat).view({1, 7, 1});
  // (7 - 4) / 2 = 1.5 -> 2.
  EXPECT_TRUE(torch::equal(center_crop(y, 4, 1), torch::tensor({2.f, 3.f, 4.f, 5.f}).view({1, 4, 1})));
  // Larger crop than image: zero padding, extra pixel at the bottom/right (torchvision).
  torch::Tensor z = torch::ones({1, 1, 2});
  EXPECT_TRUE(torch::equal(center_crop(z, 2, 5), torch::tensor({0.f, 1.f, 1.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f}).view({1, 2, 5})));
}

TEST(Transforms, EvalResizeAndCenterCropHandComputed) {
  // 2x2 image [[0,1],[2,3]] = 2y + x. Resize shorter side to 4 (upscaling: antialias is moot),
  // bilinear with align_corners=false samples source coordinates (i + 0.5) / 2 - 0.5, clamped:
  // 0, 0.25, 0.75, 1 per axis; the image is linear so out[y][x] = 2 p[y] + p[x].
  // Center crop 2 takes rows/cols 1..2: p = 0.25, 0.75.
  torch::Tensor x = torch::tensor({0.f, 1.f, 2.f, 3.f}).view({1, 2, 2});
  torch::Tensor r = resize_shorter_side(x, 4);
  ASSERT_EQ(r.sizes(), (std::vector<int64_t>{1, 4, 4}));
  const float p[4] = {0.f, 0.25f, 0.75f, 1.f};
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) EXPECT_NEAR(r[0][i][j].item<float>(), 2 * p[i] + p[j], 1e-6) << i << "," << j;
  torch::Tensor c = center_crop(r, 2, 2);
  torch::Tensor expected = torch::tensor({0.75f, 1.25f, 1.75f, 2.25f}).view({1, 2, 2});
  EXPECT_TRUE(torch::allclose(c, expected, 0, 1e-6)) << c;

  // The same through transform_image on uint8 (values / 255), size 2, crop_pct 0.5 -> resize 4.
  TransformConfig cfg = gray_identity_config(2);
  cfg.crop_pct = 0.5;
  std::mt19937_64 rng(0);
  torch::Tensor u8 = torch::tensor({0, 51, 102, 153}, torch::kUInt8).view({1, 2, 2});  // 51 * (2y + x)
  torch::Tensor out = transform_image(u8, cfg, rng);
  EXPECT_TRUE(torch::allclose(out, expected * (51.f / 255.f), 0, 1e-6)) << out;

  // Downscaling a constant image stays constant (antialias weights are normalised).
  torch::Tensor flat = torch::full({3, 40, 60}, 0.3f);
  EXPECT_TRUE(torch::allclose(resize(flat, 7, 9), torch::full({3, 7, 9}, 0.3f), 0, 1e-6));
}

TEST(Transforms, EvalIsIdentityForMnistSize) {
  torch::Tensor u8 = pattern_u8(1, 28, 28);
  std::mt19937_64 rng(0);
  torch::Tensor out = transform_image(u8, gray_identity_config(28), rng);
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{1, 28, 28}));
  EXPECT_EQ(out.scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::equal(out, u8.to(torch::kFloat) / 255.0f));
}

TEST(Transforms, NormalizeValues) {
  TransformConfig cfg;
  cfg.size = 4;
  cfg.crop_pct = 1.0;
  torch::Tensor u8 = torch::full({3, 4, 4}, 128, torch::kUInt8);
  std::mt19937_64 rng(0);
  torch::Tensor out = transform_image(u8, cfg, rng);
  for (int c = 0; c < 3; ++c) {
    const float expected = static_cast<float>((128.0 / 255.0 - cfg.mean[c]) / cfg.std[c]);
    EXPECT_NEAR(out[c].min().item<float>(), expected, 1e-5);
    EXPECT_NEAR(out[c].max().item<float>(), expected, 1e-5);
  }
  EXPECT_NEAR(out[0][0][0].item<float>(), (128.0 / 255.0 - 0.485) / 0.229, 1e-5);
  EXPECT_THROW(normalize(torch::zeros({2, 3, 3}), {0.5}, {0.5}), hd::Error);
}

TEST(Transforms, ChannelConversion) {
  // 1 -> 3: the gray plane repeated.
  TransformConfig cfg;
  cfg.size = 6;
  cfg.crop_pct = 1.0;
  cfg.mean = {0, 0, 0};
  cfg.std = {1, 1, 1};
  torch::Tensor gray = pattern_u8(1, 6, 6);
  std::mt19937_64 rng(0);
  torch::Tensor out = transform_image(gray, cfg, rng);
  ASSERT_EQ(out.size(0), 3);
  for (int c = 0; c < 3; ++c) EXPECT_TRUE(torch::equal(out[c], gray[0].to(torch::kFloat) / 255.0f));
  // 3 -> 1: BT.601 luma.
  torch::Tensor red = torch::zeros({3, 2, 2});
  red[0].fill_(1.0);
  red[2].fill_(0.5);
  torch::Tensor l = convert_channels(red, 1);
  ASSERT_EQ(l.size(0), 1);
  EXPECT_NEAR(l[0][0][0].item<float>(), 0.299 + 0.5 * 0.114, 1e-6);
  TransformConfig to_gray = gray_identity_config(2);
  torch::Tensor rgb_u8 = torch::full({3, 2, 2}, 255, torch::kUInt8);
  EXPECT_NEAR(transform_image(rgb_u8, to_gray, rng).max().item<float>(), 1.0, 1e-5);
  // Anything else is refused.
  EXPECT_THROW(transform_image(torch::zeros({2, 4, 4}, torch::kUInt8), cfg, rng), hd::Error);
  EXPECT_THROW(transform_image(torch::zeros({4, 4}, torch::kUInt8), cfg, rng), hd::Error);
}

TEST(Transforms, ConfigValidation) {
  TransformConfig ok;
  EXPECT_NO_THROW(validate(ok));
  auto bad = [](auto mutate) {
    TransformConfig c;
    mutate(c);
    return c;
  };
  EXPECT_THROW(validate(bad([](TransformConfig& c) { c.size = 0; })), hd::Error);
  EXPECT_THROW(validate(bad([](TransformConfig& c) { c.scale_min = 0.9, c.scale_max = 0.5; })), hd::Error);
  EXPECT_THROW(validate(bad([](TransformConfig& c) { c.ratio_min = 0; })), hd::Error);
  EXPECT_THROW(validate(bad([](TransformConfig& c) { c.hflip = 1.5; })), hd::Error);
  EXPECT_THROW(validate(bad([](TransformConfig& c) { c.crop_pct = 0; })), hd::Error);
  EXPECT_THROW(validate(bad([](TransformConfig& c) { c.channels = 2; })), hd::Error);
  EXPECT_THROW(validate(bad([](TransformConfig& c) { c.mean = {0.5}; })), hd::Error);
  EXPECT_THROW(validate(bad([](TransformConfig& c) { c.std = {1, 0, 1}; })), hd::Error);
}

TEST(Transforms, TrainPipelineShapesAndDeterminism) {
  TransformConfig cfg;
  cfg.train = true;
  cfg.size = 32;
  torch::Tensor img = pattern_u8(3, 50, 70);
  std::mt19937_64 a(5), b(5), c(6);
  torch::Tensor x = transform_image(img, cfg, a);
  EXPECT_EQ(x.sizes(), (std::vector<int64_t>{3, 32, 32}));
  EXPECT_TRUE(x.is_contiguous());
  EXPECT_TRUE(torch::equal(x, transform_image(img, cfg, b)));
  EXPECT_FALSE(torch::equal(x, transform_image(img, cfg, c)));
  // The flip decision consumes the same randomness either way: hflip = 1 is the mirror image of
  // hflip = 0 for the same seed.
  TransformConfig flip = cfg, noflip = cfg;
  flip.hflip = 1.0;
  noflip.hflip = 0.0;
  std::mt19937_64 r1(9), r2(9);
  EXPECT_TRUE(torch::equal(transform_image(img, flip, r1), hflip(transform_image(img, noflip, r2))));
}

// Runs an inline Python script with /usr/bin/python3 comparing against torchvision:
// eval Resize+CenterCrop+Normalize on several shapes, resized_crop with our crop box, and JPEG
// decoding against PIL.
TEST(Transforms, MatchesTorchvision) {
  if (std::system("test -x /usr/bin/python3") != 0) GTEST_SKIP() << "no /usr/bin/python3";
  TempDir dir;

  struct Case {
    int64_t h, w, size;
    double crop_pct;
  };
  const std::vector<Case> cases = {{300, 400, 224, 0.875}, {150, 180, 224, 0.9}, {28, 28, 28, 1.0}, {97, 61, 32, 0.875}};
  std::ofstream script(dir.file("check.py"));
  // Exit status 77 (one Python start-up instead of a separate probe) means "cannot import".
  script << "import sys\n"
            "try:\n"
            "    import numpy as np, torch, torchvision.transforms as T, torchvision.transforms.functional as F\n"
            "    from PIL import Image\n"
            "except Exception:\n"
            "    sys.exit(77)\n"
            "d = sys.argv[1]\n"
            "def load(name, shape): return torch.from_numpy(np.fromfile(d + '/' + name, dtype=np.uint8).reshape(shape))\n"
            "def save(name, t): t.contiguous().numpy().astype(np.float32).tofile(d + '/' + name)\n"
            "mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]\n";
  std::mt19937_64 rng(123);
  for (size_t k = 0; k < cases.size(); ++k) {
    const Case& c = cases[k];
    torch::Tensor img = (torch::rand({3, c.h, c.w}) * 255).round().to(torch::kUInt8).contiguous();
    write_file_bytes(dir.file("img" + std::to_string(k)),
                     std::vector<uint8_t>(img.data_ptr<uint8_t>(), img.data_ptr<uint8_t>() + img.numel()));
    TransformConfig cfg;
    cfg.size = c.size;
    cfg.crop_pct = c.crop_pct;
    torch::Tensor ours = transform_image(img, cfg, rng);
    write_file_bytes(dir.file("ours" + std::to_string(k)),
                     std::vector<uint8_t>(reinterpret_cast<uint8_t*>(ours.data_ptr<float>()),
                                          reinterpret_cast<uint8_t*>(ours.data_ptr<float>() + ours.numel())));
    // timm's eval transform (with antialias, as PIL), applied to the float image.
    script << "x = load('img" << k << "', (3, " << c.h << ", " << c.w << ")).float() / 255\n"
           << "t = T.Compose([T.Resize(" << eval_resize_size(c.size, c.crop_pct) << ", antialias=True), T.CenterCrop("
           << c.size << "), T.Normalize(mean, std)])\n"
           << "save('ref" << k << "', t(x))\n";
  }
  // RandomResizedCrop's resize on an explicit box, then flip.
  torch::Tensor img = (torch::rand({3, 120, 90}) * 255).round().to(torch::kUInt8).contiguous();
  write_file_bytes(dir.file("rrc_img"), std::vector<uint8_t>(img.data_ptr<uint8_t>(), img.data_ptr<uint8_t>() + img.numel()));
  CropBox box = random_resized_crop_params(120, 90, 0.08, 1.0, 0.75, 4.0 / 3, rng);
  torch::Tensor ours_rrc = hflip(resize(crop(img.to(torch::kFloat) / 255, box), 64, 64)).contiguous();
  script << "x = load('rrc_img', (3, 120, 90)).float() / 255\n"
         << "save('rrc_ref', F.hflip(F.resized_crop(x, " << box.top << ", " << box.left << ", " << box.height << ", "
         << box.width << ", [64, 64], antialias=True)))\n";
  // JPEG decoding: libjpeg-turbo through TurboJPEG vs PIL, both default (islow DCT, fancy upsampling).
  auto pic = (torch::rand({3, 33, 47}) * 60 + torch::linspace(0, 190, 47).view({1, 1, -1})).to(torch::kUInt8).contiguous();
  write_file_bytes(dir.file("pic.jpg"), encode_jpeg(pic, 85));
  torch::Tensor ours_jpeg = load_image(dir.file("pic.jpg"));
  script << "im = np.asarray(Image.open(d + '/pic.jpg').convert('RGB')).transpose(2, 0, 1).astype(np.float32)\n"
         << "im.tofile(d + '/pil_jpeg')\n";
  // A CMYK (Adobe YCCK) JPEG, converted to RGB by PIL.
  {
    std::vector<uint8_t> cmyk(20 * 12 * 4);
    for (size_t i = 0; i < cmyk.size(); ++i) cmyk[i] = static_cast<uint8_t>((i * 29 + (i % 4) * 60) % 256);
    tjhandle tj = tjInitCompress();
    unsigned char* out = nullptr;
    unsigned long size = 0;
    ASSERT_EQ(tjCompress2(tj, cmyk.data(), 20, 0, 12, TJPF_CMYK, &out, &size, TJSAMP_444, 90, 0), 0);
    write_file_bytes(dir.file("cmyk.jpg"), std::vector<uint8_t>(out, out + size));
    tjFree(out);
    tjDestroy(tj);
  }
  torch::Tensor ours_cmyk = load_image(dir.file("cmyk.jpg"));
  script << "im = Image.open(d + '/cmyk.jpg')\n"
         << "assert im.mode == 'CMYK', im.mode\n"
         << "np.asarray(im.convert('RGB')).transpose(2, 0, 1).astype(np.float32).tofile(d + '/pil_cmyk')\n";
  script.close();

  const std::string cmd = "/usr/bin/python3 " + dir.file("check.py") + " " + dir.path() + " 2>&1";
  const int status = std::system(cmd.c_str());
  if (WIFEXITED(status) && WEXITSTATUS(status) == 77) GTEST_SKIP() << "/usr/bin/python3 cannot import torchvision / PIL / numpy";
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << cmd;

  auto load_f32 = [&](const std::string& name, std::vector<int64_t> shape) {
    auto bytes = read_all(dir.file(name));
    torch::Tensor t = torch::empty(shape, torch::kFloat);
    EXPECT_EQ(bytes.size(), static_cast<size_t>(t.numel()) * 4) << name;
    std::memcpy(t.data_ptr<float>(), bytes.data(), std::min<size_t>(bytes.size(), t.numel() * 4));
    return t;
  };
  for (size_t k = 0; k < cases.size(); ++k) {
    const Case& c = cases[k];
    torch::Tensor ours = load_f32("ours" + std::to_string(k), {3, c.size, c.size});
    torch::Tensor ref = load_f32("ref" + std::to_string(k), {3, c.size, c.size});
    EXPECT_LT((ours - ref).abs().max().item<float>(), 1e-4) << "case " << k << " (" << c.h << "x" << c.w << ")";
  }
  torch::Tensor rrc_ref = load_f32("rrc_ref", {3, 64, 64});
  EXPECT_LT((ours_rrc - rrc_ref).abs().max().item<float>(), 1e-5);
  torch::Tensor pil = load_f32("pil_jpeg", {3, 33, 47});
  EXPECT_LE((ours_jpeg.to(torch::kFloat) - pil).abs().max().item<float>(), 1.0f);
  torch::Tensor pil_cmyk = load_f32("pil_cmyk", {3, 12, 20});
  EXPECT_LE((ours_cmyk.to(torch::kFloat) - pil_cmyk).abs().max().item<float>(), 1.0f);
}
