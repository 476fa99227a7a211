// Image transforms for training and evaluation, matching timm / torchvision semantics:
//   train: RandomResizedCrop(size, scale, ratio) -> RandomHorizontalFlip(hflip) -> Normalize
//   eval:  Resize(floor(size / crop_pct)) -> CenterCrop(size) -> Normalize
// Geometric functions operate on float [C,H,W] tensors with values in [0,1] and are usable on
// their own; transform_image() chains them.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include <torch/types.h>

namespace hd::data {

struct TransformConfig {
  int64_t size = 224;  // output is [channels, size, size]
  bool train = false;
  // RandomResizedCrop: fraction of the image area and aspect-ratio range (torchvision defaults).
  double scale_min = 0.08, scale_max = 1.0;
  double ratio_min = 3.0 / 4, ratio_max = 4.0 / 3;
  double hflip = 0.5;        // probability of a horizontal flip (train only)
  double crop_pct = 0.875;   // eval: resize the shorter side to floor(size / crop_pct), then center crop
  int64_t channels = 3;      // 1 or 3 (see convert_channels)
  std::vector<double> mean{0.485, 0.456, 0.406}, std{0.229, 0.224, 0.225};  // ImageNet statistics
  // Training from JPEG files (decode_transform): decode at libjpeg's reduced DCT scale M/8 when
  // the crop stays at least `size` pixels on both sides, instead of at full size. Off (and for
  // evaluation): the pixels are those of a full-size decode, as transform_image(decode_image()).
  bool jpeg_dct_scaling = true;
};

// Throws hd::Error ("transform config: ...") if the configuration cannot work: size < 1, empty or
// inverted scale / ratio ranges, hflip outside [0,1], crop_pct <= 0, channels not 1 or 3, mean / std
// length != channels, a zero std.
void validate(const TransformConfig& cfg);

// A crop window in pixels.
struct CropBox {
  int64_t top = 0, left = 0, height = 0, width = 0;
};

// Uniform double in [0,1) and integer in [0,n) from a 64-bit engine. Written out (rather than
// std::uniform_*_distribution, whose algorithms are implementation-defined) so that a seed gives
// the same augmentations with every standard library.
double uniform01(std::mt19937_64& rng);
int64_t uniform_int(std::mt19937_64& rng, int64_t n);

// torchvision.transforms.RandomResizedCrop.get_params: up to 10 attempts at a window whose area
// is uniform in [scale_min, scale_max] * H*W and whose aspect ratio is log-uniform in
// [ratio_min, ratio_max] (rounded half-to-even as Python's round()); if none fits, the central
// crop with the aspect ratio clamped into the range.
CropBox random_resized_crop_params(int64_t height, int64_t width, double scale_min, double scale_max,
                                   double ratio_min, double ratio_max, std::mt19937_64& rng);

// img[:, top:top+h, left:left+w] (a view). The box must lie inside the image.
torch::Tensor crop(const torch::Tensor& chw, const CropBox& box);

// Bilinear resize of float [C,H,W] to [C,out_h,out_w] (align_corners = false) with antialiasing
// when downscaling, i.e. torchvision's F.resize(..., antialias=True), which matches the PIL
// resampling timm trains with far better than plain bilinear (when upscaling both are the same).
// Same size returns the input.
torch::Tensor resize(const torch::Tensor& chw, int64_t out_h, int64_t out_w);

// Output (height, width) of torchvision's Resize(size) for an int size: the shorter side becomes
// `size`, the longer one int(size * long / short) (truncated, as torchvision).
std::pair<int64_t, int64_t> shorter_side_size(int64_t height, int64_t width, int64_t size);

// resize() to shorter_side_size().
torch::Tensor resize_shorter_side(const torch::Tensor& chw, int64_t size);

// The eval resize target of timm: floor(size / crop_pct).
int64_t eval_resize_size(int64_t size, double crop_pct);

// torchvision CenterCrop: top = round((H - h) / 2), left = round((W - w) / 2) with Python's
// half-to-even rounding; an image smaller than the crop is first zero-padded symmetrically
// (the extra pixel, if odd, on the bottom / right), as torchvision does.
torch::Tensor center_crop(const torch::Tensor& chw, int64_t out_h, int64_t out_w);

// Mirror left-right.
torch::Tensor hflip(const torch::Tensor& chw);

// Channel conversion: same count is a no-op; 1 -> 3 repeats the gray plane; 3 -> 1 is ITU-R
// BT.601 luma 0.299 R + 0.587 G + 0.114 B (PIL's convert("L") / torchvision's Grayscale weights),
// so an RGB data set can feed a model trained on gray images. Anything else throws hd::Error.
torch::Tensor convert_channels(const torch::Tensor& chw, int64_t channels);

// (x - mean[c]) / std[c] per channel; mean / std must have one entry per channel.
torch::Tensor normalize(const torch::Tensor& chw, const std::vector<double>& mean, const std::vector<double>& std);

// The full pipeline: uint8 [C,H,W] (or floating point in [0,1]) -> float32 [channels,size,size],
// contiguous and normalised. Uses rng only when cfg.train. Throws hd::Error on a bad input tensor
// or configuration.
torch::Tensor transform_image(const torch::Tensor& u8_chw, const TransformConfig& cfg, std::mt19937_64& rng);

}  // namespace hd::data
