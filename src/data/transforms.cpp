#include "data/transforms.h"

#include <cmath>
#include <limits>

#include <torch/torch.h>

#include "util/error.h"

namespace hd::data {

namespace {

// Python's round() for the non-negative values used here: half to even. std::nearbyint rounds
// half to even in the default floating-point environment (FE_TONEAREST), which we never change.
int64_t py_round(double v) { return static_cast<int64_t>(std::nearbyint(v)); }

std::string shape_of(const torch::Tensor& t) { return c10::str(t.sizes()); }

void check_chw(const torch::Tensor& t, const char* fn) {
  if (!t.defined() || t.dim() != 3 || t.size(0) < 1 || t.size(1) < 1 || t.size(2) < 1)
    throw Error(std::string(fn) + ": expected a non-empty [C,H,W] image tensor, got " +
                (t.defined() ? "shape " + shape_of(t) : std::string("an undefined tensor")));
}

void check_float_chw(const torch::Tensor& t, const char* fn) {
  check_chw(t, fn);
  if (!t.is_floating_point())
    throw Error(std::string(fn) + ": expected a floating-point image, got " + std::string(c10::toString(t.scalar_type())));
}

// uint8 -> float in [0,1] (ToTensor); floating inputs are taken to be in [0,1] already.
torch::Tensor to_float01(const torch::Tensor& img) {
  if (img.scalar_type() == torch::kUInt8) return img.to(torch::kFloat).div_(255.0);
  if (img.is_floating_point()) return img.to(torch::kFloat);
  throw Error("transform_image: expected a uint8 or floating-point image, got " +
              std::string(c10::toString(img.scalar_type())));
}

}  // namespace

void validate(const TransformConfig& cfg) {
  auto fail = [](const std::string& what) { throw Error("transform config: " + what); };
  if (cfg.size < 1) fail("size must be >= 1 (got " + std::to_string(cfg.size) + ")");
  if (!(cfg.scale_min > 0 && cfg.scale_min <= cfg.scale_max))
    fail("scale range must satisfy 0 < scale_min <= scale_max (got " + std::to_string(cfg.scale_min) + ", " +
         std::to_string(cfg.scale_max) + ")");
  if (!(cfg.ratio_min > 0 && cfg.ratio_min <= cfg.ratio_max))
    fail("ratio range must satisfy 0 < ratio_min <= ratio_max (got " + std::to_string(cfg.ratio_min) + ", " +
         std::to_string(cfg.ratio_max) + ")");
  if (!(cfg.hflip >= 0 && cfg.hflip <= 1)) fail("hflip probability must be in [0,1] (got " + std::to_string(cfg.hflip) + ")");
  if (!(cfg.crop_pct > 0 && std::isfinite(cfg.crop_pct))) fail("crop_pct must be > 0 (got " + std::to_string(cfg.crop_pct) + ")");
  if (cfg.channels != 1 && cfg.channels != 3) fail("channels must be 1 or 3 (got " + std::to_string(cfg.channels) + ")");
  if (static_cast<int64_t>(cfg.mean.size()) != cfg.channels || static_cast<int64_t>(cfg.std.size()) != cfg.channels)
    fail("mean and std need one value per channel (" + std::to_string(cfg.channels) + "), got " +
         std::to_string(cfg.mean.size()) + " and " + std::to_string(cfg.std.size()));
  for (double s : cfg.std)
    if (!(s != 0 && std::isfinite(s))) fail("std values must be finite and non-zero");
}

double uniform01(std::mt19937_64& rng) {
  // The top 53 bits give every double in [0,1) that is a multiple of 2^-53, uniformly.
  return static_cast<double>(rng() >> 11) * 0x1.0p-53;
}

int64_t uniform_int(std::mt19937_64& rng, int64_t n) {
  if (n <= 0) throw std::invalid_argument("uniform_int: n must be positive");
  const uint64_t un = static_cast<uint64_t>(n);
  // Rejection sampling: discard the top partial block of 2^64 so every value is equally likely.
  const uint64_t limit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % un;
  uint64_t v;
  do v = rng();
  while (v >= limit);
  return static_cast<int64_t>(v % un);
}

CropBox random_resized_crop_params(int64_t height, int64_t width, double scale_min, double scale_max,
                                   double ratio_min, double ratio_max, std::mt19937_64& rng) {
  if (height < 1 || width < 1)
    throw Error("random_resized_crop_params: empty image " + std::to_string(height) + "x" + std::to_string(width));
  const double area = static_cast<double>(height) * static_cast<double>(width);
  const double log_r0 = std::log(ratio_min), log_r1 = std::log(ratio_max);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target_area = area * (scale_min + (scale_max - scale_min) * uniform01(rng));
    const double aspect = std::exp(log_r0 + (log_r1 - log_r0) * uniform01(rng));
    const int64_t w = py_round(std::sqrt(target_area * aspect));
    const int64_t h = py_round(std::sqrt(target_area / aspect));
    if (0 < w && w <= width && 0 < h && h <= height) {
      CropBox box;
      box.height = h;
      box.width = w;
      box.top = uniform_int(rng, height - h + 1);
      box.left = uniform_int(rng, width - w + 1);
      return box;
    }
  }
  // Fallback: central crop of the whole image, aspect ratio clamped into [ratio_min, ratio_max].
  const double in_ratio = static_cast<double>(width) / static_cast<double>(height);
  CropBox box;
  if (in_ratio < ratio_min) {
    box.width = width;
    box.height = py_round(static_cast<double>(width) / ratio_min);
  } else if (in_ratio > ratio_max) {
    box.height = height;
    box.width = py_round(static_cast<double>(height) * ratio_max);
  } else {
    box.width = width;
    box.height = height;
  }
  box.top = (height - box.height) / 2;
  box.left = (width - box.width) / 2;
  return box;
}

torch::Tensor crop(const torch::Tensor& chw, const CropBox& box) {
  check_chw(chw, "crop");
  if (box.top < 0 || box.left < 0 || box.height < 1 || box.width < 1 || box.top + box.height > chw.size(1) ||
      box.left + box.width > chw.size(2))
    throw Error("crop: box (top " + std::to_string(box.top) + ", left " + std::to_string(box.left) + ", " +
                std::to_string(box.height) + "x" + std::to_string(box.width) + ") outside image " + shape_of(chw));
  return chw.narrow(1, box.top, box.height).narrow(2, box.left, box.width);
}

torch::Tensor resize(const torch::Tensor& chw, int64_t out_h, int64_t out_w) {
  check_float_chw(chw, "resize");
  if (out_h < 1 || out_w < 1)
    throw Error("resize: invalid output size " + std::to_string(out_h) + "x" + std::to_string(out_w));
  if (chw.size(1) == out_h && chw.size(2) == out_w) return chw;
  namespace F = torch::nn::functional;
  // antialias exists in InterpolateFuncOptions since LibTorch 1.11 (and in 2.x) and requires a 4-D
  // input. When no side shrinks, the antialiased kernel equals plain bilinear up to float rounding
  // (< 1e-6) but runs ~3x slower, so it is used only when downscaling (the common small-image
  // training case, RandomResizedCrop of a 28x28 image back to 28x28, is all upscaling).
  const bool downscale = out_h < chw.size(1) || out_w < chw.size(2);
  return F::interpolate(chw.unsqueeze(0), F::InterpolateFuncOptions()
                                              .size(std::vector<int64_t>{out_h, out_w})
                                              .mode(torch::kBilinear)
                                              .align_corners(false)
                                              .antialias(downscale))
      .squeeze(0);
}

std::pair<int64_t, int64_t> shorter_side_size(int64_t height, int64_t width, int64_t size) {
  if (height < 1 || width < 1 || size < 1)
    throw Error("resize: invalid sizes (image " + std::to_string(height) + "x" + std::to_string(width) + ", target " +
                std::to_string(size) + ")");
  const bool portrait = width <= height;
  const int64_t short_side = portrait ? width : height, long_side = portrait ? height : width;
  // Python: int(size * long / short); the integer product is exact, the division a correctly
  // rounded double, the cast truncation: identical in C++.
  const auto new_long = static_cast<int64_t>(static_cast<double>(size * long_side) / static_cast<double>(short_side));
  return portrait ? std::make_pair(new_long, size) : std::make_pair(size, new_long);
}

torch::Tensor resize_shorter_side(const torch::Tensor& chw, int64_t size) {
  check_chw(chw, "resize_shorter_side");
  auto [h, w] = shorter_side_size(chw.size(1), chw.size(2), size);
  return resize(chw, h, w);
}

int64_t eval_resize_size(int64_t size, double crop_pct) {
  if (!(crop_pct > 0)) throw Error("eval_resize_size: crop_pct must be > 0");
  return static_cast<int64_t>(std::floor(static_cast<double>(size) / crop_pct));
}

torch::Tensor center_crop(const torch::Tensor& chw, int64_t out_h, int64_t out_w) {
  check_chw(chw, "center_crop");
  if (out_h < 1 || out_w < 1)
    throw Error("center_crop: invalid output size " + std::to_string(out_h) + "x" + std::to_string(out_w));
  torch::Tensor img = chw;
  int64_t h = img.size(1), w = img.size(2);
  if (out_h > h || out_w > w) {
    const int64_t pad_w = std::max<int64_t>(out_w - w, 0), pad_h = std::max<int64_t>(out_h - h, 0);
    // constant_pad_nd pads the last dimension first: (left, right, top, bottom).
    img = torch::constant_pad_nd(img, {pad_w / 2, (pad_w + 1) / 2, pad_h / 2, (pad_h + 1) / 2}, 0);
    h = img.size(1);
    w = img.size(2);
  }
  CropBox box;
  box.height = out_h;
  box.width = out_w;
  box.top = py_round(static_cast<double>(h - out_h) / 2.0);
  box.left = py_round(static_cast<double>(w - out_w) / 2.0);
  return crop(img, box);
}

torch::Tensor hflip(const torch::Tensor& chw) {
  check_chw(chw, "hflip");
  return chw.flip({2});
}

torch::Tensor convert_channels(const torch::Tensor& chw, int64_t channels) {
  check_chw(chw, "convert_channels");
  const int64_t c = chw.size(0);
  if (c == channels) return chw;
  if (c == 1 && channels == 3) return chw.expand({3, chw.size(1), chw.size(2)}).contiguous();
  if (c == 3 && channels == 1) {
    if (!chw.is_floating_point()) throw Error("convert_channels: RGB to gray needs a floating-point image");
    return (chw[0] * 0.299 + chw[1] * 0.587 + chw[2] * 0.114).unsqueeze(0);
  }
  throw Error("convert_channels: cannot convert a " + std::to_string(c) + "-channel image to " +
              std::to_string(channels) + " channels");
}

torch::Tensor normalize(const torch::Tensor& chw, const std::vector<double>& mean, const std::vector<double>& std) {
  check_float_chw(chw, "normalize");
  const auto c = static_cast<size_t>(chw.size(0));
  if (mean.size() != c || std.size() != c)
    throw Error("normalize: image has " + std::to_string(c) + " channels but mean/std have " +
                std::to_string(mean.size()) + "/" + std::to_string(std.size()) + " values");
  // Same arithmetic as torchvision's Normalize: mean / std cast to the image dtype, then (x-m)/s.
  if (chw.scalar_type() == torch::kFloat) {
    // Hand-written for float32 (every pipeline image): one pass and one allocation instead of
    // building mean/std tensors and two broadcast ops, which dominated for 28x28 images.
    torch::Tensor in = chw.contiguous();
    torch::Tensor out = torch::empty(in.sizes(), torch::kFloat);
    const int64_t plane = in.size(1) * in.size(2);
    const float* src = in.data_ptr<float>();
    float* dst = out.data_ptr<float>();
    for (size_t ch = 0; ch < c; ++ch) {
      const float m = static_cast<float>(mean[ch]), s = static_cast<float>(std[ch]);
      for (int64_t i = 0; i < plane; ++i) dst[i] = (src[i] - m) / s;
      src += plane;
      dst += plane;
    }
    return out;
  }
  auto opts = torch::TensorOptions().dtype(chw.scalar_type());
  torch::Tensor m = torch::tensor(mean, torch::kDouble).to(opts).view({-1, 1, 1});
  torch::Tensor s = torch::tensor(std, torch::kDouble).to(opts).view({-1, 1, 1});
  return (chw - m) / s;
}

torch::Tensor transform_image(const torch::Tensor& u8_chw, const TransformConfig& cfg, std::mt19937_64& rng) {
  validate(cfg);
  check_chw(u8_chw, "transform_image");
  const int64_t c = u8_chw.size(0);
  if (c != cfg.channels && !(c == 1 && cfg.channels == 3) && !(c == 3 && cfg.channels == 1))
    throw Error("transform_image: cannot convert a " + std::to_string(c) + "-channel image to " +
                std::to_string(cfg.channels) + " channels");

  torch::Tensor x;
  if (cfg.train) {
    const CropBox box = random_resized_crop_params(u8_chw.size(1), u8_chw.size(2), cfg.scale_min, cfg.scale_max,
                                                   cfg.ratio_min, cfg.ratio_max, rng);
    // Crop before converting to float: only the window's pixels are converted.
    x = to_float01(crop(u8_chw, box));
    // Reducing channels first means resizing 1 plane instead of 3; the geometric ops act on each
    // plane independently, so the order does not change the result.
    if (cfg.channels < c) x = convert_channels(x, cfg.channels);
    x = resize(x, cfg.size, cfg.size);
    if (uniform01(rng) < cfg.hflip) x = hflip(x);
  } else {
    x = to_float01(u8_chw);
    if (cfg.channels < c) x = convert_channels(x, cfg.channels);
    x = center_crop(resize_shorter_side(x, eval_resize_size(cfg.size, cfg.crop_pct)), cfg.size, cfg.size);
  }
  // Expanding channels last: gray images are resized as one plane, then repeated.
  x = convert_channels(x, cfg.channels);
  return normalize(x, cfg.mean, cfg.std);  // float32: contiguous by construction
}

}  // namespace hd::data
