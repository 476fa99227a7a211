#include "data/decode_transform.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <torch/torch.h>

#include "data/image_codec.h"
#include "util/error.h"

namespace hd::data {

namespace {

// One output axis of an antialiased bilinear resize: output pixel o reads count[o] source pixels
// from first[o] on, with weights w[o * taps ..]. The arithmetic (float scale, centre, support,
// truncation, triangle filter, normalisation) is that of LibTorch's interpolate(bilinear,
// antialias=true) (PIL's), applied to the source range [lo, hi) that a crop would cut out, so
// that at scale 8/8 the result equals crop() + resize() of the generic path.
struct AxisPlan {
  std::vector<int64_t> first, count;
  std::vector<float> w;
  int64_t taps = 0;
  int64_t used_lo = 0, used_hi = 0;  // the source pixels any output reads
};

// The output axis has out_full pixels covering the source range [start, start + len); outputs
// [out_begin, out_begin + out_count) are computed. Sources are clamped to [lo, hi).
AxisPlan plan_axis(double start, double len, int64_t out_full, int64_t out_begin, int64_t out_count, int64_t lo,
                   int64_t hi) {
  AxisPlan p;
  const auto scale = static_cast<float>(len / static_cast<double>(out_full));
  const float support = scale >= 1.0f ? scale : 1.0f;
  const float invscale = scale >= 1.0f ? 1.0f / scale : 1.0f;
  const auto offset = static_cast<float>(start - static_cast<double>(lo));
  const int64_t in_size = hi - lo;
  p.taps = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  p.first.resize(static_cast<size_t>(out_count));
  p.count.resize(static_cast<size_t>(out_count));
  p.w.assign(static_cast<size_t>(out_count * p.taps), 0.0f);
  p.used_lo = hi;
  p.used_hi = lo;
  for (int64_t k = 0; k < out_count; ++k) {
    const float center = offset + scale * (static_cast<float>(out_begin + k) + 0.5f);
    const int64_t xmin = std::max<int64_t>(static_cast<int64_t>(center - support + 0.5f), 0);
    int64_t xsize = std::min<int64_t>(static_cast<int64_t>(center + support + 0.5f), in_size) - xmin;
    xsize = std::clamp<int64_t>(xsize, 1, p.taps);
    float* w = p.w.data() + k * p.taps;
    float total = 0;
    for (int64_t j = 0; j < xsize; ++j) {
      const float x = (static_cast<float>(j + xmin) - center + 0.5f) * invscale;
      w[j] = std::max(0.0f, 1.0f - std::abs(x));
      total += w[j];
    }
    if (total != 0)
      for (int64_t j = 0; j < xsize; ++j) w[j] /= total;
    p.first[static_cast<size_t>(k)] = lo + xmin;
    p.count[static_cast<size_t>(k)] = xsize;
    p.used_lo = std::min(p.used_lo, lo + xmin);
    p.used_hi = std::max(p.used_hi, lo + xmin + xsize);
  }
  return p;
}

// The source rectangle (in full-size pixels) that becomes the output, and how.
struct Geometry {
  double y0 = 0, x0 = 0, h = 0, w = 0;  // source window (a crop, or the whole image for eval)
  int64_t out_h = 0, out_w = 0;         // the window's size after the resize
  int64_t out_top = 0, out_left = 0;    // eval: the center crop inside the resized window
  bool flip = false;
};

// Four floats in one SIMD register (GCC / Clang vector extension: SSE on x86-64, NEON on ARM),
// loadable from any float address.
typedef float Float4 __attribute__((vector_size(16), aligned(4)));

// Resize (one AxisPlan per axis), flip, / 255, channel conversion and normalisation of an RGB
// region, written to a new float32 [channels, size, size] tensor. Vertical pass first, over whole
// contiguous rows (uint8 -> float multiply-adds the compiler vectorises), so that the horizontal
// pass runs on the output rows only; it takes a pixel's three channels as one 4-float vector.
torch::Tensor resample(const ImageRegion& region, const AxisPlan& py, const AxisPlan& px, bool flip,
                       const TransformConfig& cfg, torch::Tensor out) {
  const int64_t oh = static_cast<int64_t>(py.first.size()), ow = static_cast<int64_t>(px.first.size());
  const int64_t row_stride = region.hwc.stride(0);  // the pixels of a row are contiguous
  const uint8_t* pixels = region.hwc.data_ptr<uint8_t>();
  const int64_t cols = px.used_hi - px.used_lo, col0 = px.used_lo - region.left;
  const int64_t n = cols * 3;

  const int64_t channels = cfg.channels;
  if (!out.defined()) out = torch::empty({channels, oh, ow}, torch::kFloat);
  float* dst = out.data_ptr<float>();
  const int64_t plane = oh * ow;
  float scale[3] = {0, 0, 0}, bias[3] = {0, 0, 0};
  for (int64_t c = 0; c < channels; ++c) {
    scale[c] = static_cast<float>(1.0 / (255.0 * cfg.std[static_cast<size_t>(c)]));
    bias[c] = static_cast<float>(-cfg.mean[static_cast<size_t>(c)] / cfg.std[static_cast<size_t>(c)]);
  }
  std::vector<float> acc(static_cast<size_t>(n)), rgbx(static_cast<size_t>(cols * 4), 0.0f);
  std::vector<float> ring(static_cast<size_t>(py.taps * n));
  std::vector<int64_t> ring_row(static_cast<size_t>(py.taps), -1);
  for (int64_t r = 0; r < oh; ++r) {
    // Vertical: one row of the window's columns, interleaved RGB floats. Each source row is
    // converted to float once, into a ring of py.taps rows (the rows one output reads are
    // consecutive, and their first one never moves back).
    float* a = acc.data();
    std::fill(a, a + n, 0.0f);
    const float* wy = py.w.data() + r * py.taps;
    const int64_t first = py.first[static_cast<size_t>(r)];
    for (int64_t j = 0, nj = py.count[static_cast<size_t>(r)]; j < nj; ++j) {
      const int64_t y = first + j;
      float* f = ring.data() + (y % py.taps) * n;
      if (ring_row[static_cast<size_t>(y % py.taps)] != y) {
        const uint8_t* s = pixels + (y - region.top) * row_stride + col0 * 3;
        for (int64_t i = 0; i < n; ++i) f[i] = static_cast<float>(s[i]);
        ring_row[static_cast<size_t>(y % py.taps)] = y;
      }
      const float w = wy[j];
      for (int64_t i = 0; i < n; ++i) a[i] += w * f[i];
    }
    float* q = rgbx.data();
    for (int64_t x = 0; x < cols; ++x) {
      q[x * 4 + 0] = a[x * 3 + 0];
      q[x * 4 + 1] = a[x * 3 + 1];
      q[x * 4 + 2] = a[x * 3 + 2];
    }
    // Horizontal, flip and the per-channel affine map (x / 255 - mean) / std.
    for (int64_t o = 0; o < ow; ++o) {
      const float* wx = px.w.data() + o * px.taps;
      const auto* p = reinterpret_cast<const Float4*>(q + (px.first[static_cast<size_t>(o)] - px.used_lo) * 4);
      Float4 v = {0, 0, 0, 0};
      for (int64_t j = 0, nj = px.count[static_cast<size_t>(o)]; j < nj; ++j) v += wx[j] * p[j];
      const int64_t x = r * ow + (flip ? ow - 1 - o : o);
      if (channels == 3) {
        for (int c = 0; c < 3; ++c) dst[c * plane + x] = v[c] * scale[c] + bias[c];
      } else {  // ITU-R BT.601 luma, as convert_channels
        dst[x] = (v[0] * 0.299f + v[1] * 0.587f + v[2] * 0.114f) * scale[0] + bias[0];
      }
    }
  }
  return out;
}

}  // namespace

int jpeg_scale_for(double window_h, double window_w, int64_t out_h, int64_t out_w) {
  // Only 1/8, 1/4 and 1/2: libjpeg-turbo has SIMD inverse DCTs for those (and 8/8); the other
  // scales use plain C kernels (and 12x12, 14x14 ones for subsampled chroma), and measured no
  // faster than decoding at full size.
  for (int m : {1, 2, 4})
    if (window_h * m / 8.0 >= static_cast<double>(out_h) && window_w * m / 8.0 >= static_cast<double>(out_w)) return m;
  return 8;
}

torch::Tensor decode_transform(const uint8_t* data, size_t size, const std::string& source, const TransformConfig& cfg,
                               std::mt19937_64& rng, torch::Tensor out) {
  validate(cfg);
  if (out.defined() && (out.scalar_type() != torch::kFloat || !out.is_contiguous() || out.dim() != 3 ||
                        out.size(0) != cfg.channels || out.size(1) != cfg.size || out.size(2) != cfg.size))
    throw Error("decode_transform: `out` must be a contiguous float32 [" + std::to_string(cfg.channels) + ", " +
                std::to_string(cfg.size) + ", " + std::to_string(cfg.size) + "] tensor, got " + c10::str(out.sizes()));
  // The generic path, for what the one-step path does not cover.
  auto generic = [&] {
    torch::Tensor img = transform_image(decode_image(data, size, source), cfg, rng);
    return out.defined() ? out.copy_(img) : img;
  };
  JpegInfo info;
  if (!read_jpeg_info(data, size, source, info) || info.cmyk) return generic();

  Geometry g;
  if (cfg.train) {
    const CropBox box =
        random_resized_crop_params(info.height, info.width, cfg.scale_min, cfg.scale_max, cfg.ratio_min, cfg.ratio_max, rng);
    g.y0 = static_cast<double>(box.top);
    g.x0 = static_cast<double>(box.left);
    g.h = static_cast<double>(box.height);
    g.w = static_cast<double>(box.width);
    g.out_h = g.out_w = cfg.size;
    g.flip = uniform01(rng) < cfg.hflip;
  } else {
    const auto [rh, rw] = shorter_side_size(info.height, info.width, eval_resize_size(cfg.size, cfg.crop_pct));
    if (rh < cfg.size || rw < cfg.size) return generic();  // center_crop would pad
    g.h = static_cast<double>(info.height);
    g.w = static_cast<double>(info.width);
    g.out_h = rh;
    g.out_w = rw;
    g.out_top = static_cast<int64_t>(std::nearbyint(static_cast<double>(rh - cfg.size) / 2.0));
    g.out_left = static_cast<int64_t>(std::nearbyint(static_cast<double>(rw - cfg.size) / 2.0));
  }

  // Everything below is in the coordinates of the image decoded at m/8.
  // Reduced scales for training only: evaluation decodes at full size, so that its numbers are
  // those of a PIL / torchvision pipeline.
  const int m = cfg.train && cfg.jpeg_dct_scaling ? jpeg_scale_for(g.h, g.w, g.out_h, g.out_w) : 8;
  const double f = m / 8.0;
  const int64_t sh = jpeg_scaled_size(info.height, m), sw = jpeg_scaled_size(info.width, m);
  // The window's pixel range: exact at 8/8; at a reduced scale, the scaled pixels it overlaps.
  const auto lo_y = static_cast<int64_t>(std::floor(g.y0 * f)), lo_x = static_cast<int64_t>(std::floor(g.x0 * f));
  const int64_t hi_y = std::min<int64_t>(static_cast<int64_t>(std::ceil((g.y0 + g.h) * f)), sh);
  const int64_t hi_x = std::min<int64_t>(static_cast<int64_t>(std::ceil((g.x0 + g.w) * f)), sw);
  const AxisPlan py = plan_axis(g.y0 * f, g.h * f, g.out_h, g.out_top, cfg.size, lo_y, hi_y);
  const AxisPlan px = plan_axis(g.x0 * f, g.w * f, g.out_w, g.out_left, cfg.size, lo_x, hi_x);
  thread_local std::vector<uint8_t> buffer;  // one per loader worker, reused for every image
  const ImageRegion region =
      decode_jpeg_region(data, size, source, m, py.used_lo, py.used_hi, px.used_lo, px.used_hi, buffer);
  torch::Tensor result = resample(region, py, px, g.flip, cfg, out);
  // A huge photo's window is not kept for the rest of the run.
  if (buffer.capacity() > (size_t{64} << 20)) std::vector<uint8_t>().swap(buffer);
  return result;
}

}  // namespace hd::data
