#include "data/mosaic.h"

#include <algorithm>
#include <random>
#include <string>

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "data/loader.h"
#include "data/transforms.h"
#include "util/error.h"

namespace hd::data {

namespace {

constexpr uint64_t kMosaicSalt = 0x6D6F736169632D32ULL;  // "mosaic-2"

std::string geometry(const MosaicConfig& c) {
  return std::to_string(c.img_size) + "-px image with " + std::to_string(c.patch) + "-px patches";
}

}  // namespace

MosaicDataset::MosaicDataset(std::shared_ptr<const Dataset> base, MosaicConfig cfg)
    : base_(std::move(base)), cfg_(cfg) {
  if (!base_ || base_->size() == 0) throw Error("mosaic: the base data set is empty");
  if (cfg_.channels != 1 && cfg_.channels != 3)
    throw Error("mosaic: channels must be 1 or 3, not " + std::to_string(cfg_.channels));
  if (cfg_.img_size <= 0 || cfg_.patch <= 0 || cfg_.min_cells <= 0)
    throw Error("mosaic: img_size, patch and min_cells must be positive");
  if (cfg_.img_size % cfg_.patch != 0)
    throw Error("mosaic: a " + geometry(cfg_) + " has no whole grid of patches (img_size must be a multiple of patch)");
  const int64_t g = grid();
  if (g < 2 * cfg_.min_cells)
    throw Error("mosaic: a " + geometry(cfg_) + " has a " + std::to_string(g) + "x" + std::to_string(g) +
                " grid; a 2x2 mosaic with at least " + std::to_string(cfg_.min_cells) +
                " patches per quadrant side needs at least " + std::to_string(2 * cfg_.min_cells) + " per side");
  for (int64_t m = cfg_.min_cells; m <= g - cfg_.min_cells; ++m) cuts_.push_back(m * cfg_.patch);
}

MosaicSample MosaicDataset::compose(const std::array<int64_t, 4>& items, int64_t cx, int64_t cy) const {
  auto valid = [&](int64_t c) { return std::find(cuts_.begin(), cuts_.end(), c) != cuts_.end(); };
  if (!valid(cx) || !valid(cy))
    throw Error("mosaic: cut (" + std::to_string(cx) + ", " + std::to_string(cy) + ") of a " + geometry(cfg_) +
                " is not a patch boundary leaving " + std::to_string(cfg_.min_cells) + " patches per quadrant side");
  const int64_t S = cfg_.img_size, P = cfg_.patch;
  MosaicSample s;
  s.cx = cx;
  s.cy = cy;
  s.items = items;
  s.image = torch::empty({cfg_.channels, S, S});
  s.labels = torch::empty({S / P, S / P}, torch::kLong);
  const int64_t x0[4] = {0, cx, 0, cx}, y0[4] = {0, 0, cy, cy};
  const int64_t w[4] = {cx, S - cx, cx, S - cx}, h[4] = {cy, cy, S - cy, S - cy};
  for (int q = 0; q < 4; ++q) {
    const auto idx = items[q];
    if (idx < 0 || static_cast<size_t>(idx) >= base_->size())
      throw Error("mosaic: item " + std::to_string(idx) + " is outside " + base_->name() + " (" +
                  std::to_string(base_->size()) + " images)");
    auto raw = base_->image(static_cast<size_t>(idx));
    auto x = raw.to(torch::kFloat).div_(255.0);
    // Gray <-> RGB as the model's transforms do: reduce before resizing, expand after.
    if (x.size(0) > cfg_.channels) x = convert_channels(x, cfg_.channels);
    x = convert_channels(resize(x, h[q], w[q]), cfg_.channels);
    s.image.slice(1, y0[q], y0[q] + h[q]).slice(2, x0[q], x0[q] + w[q]).copy_(x);
    s.labels.slice(0, y0[q] / P, (y0[q] + h[q]) / P).slice(1, x0[q] / P, (x0[q] + w[q]) / P)
        .fill_(base_->label(static_cast<size_t>(idx)));
  }
  return s;
}

MosaicSample MosaicDataset::get(int64_t i) const {
  if (i < 0) throw Error("mosaic: negative sample index " + std::to_string(i));
  std::mt19937_64 rng(splitmix64(splitmix64(cfg_.seed ^ kMosaicSalt) ^ static_cast<uint64_t>(i)));
  const auto n = static_cast<int64_t>(base_->size());
  std::array<int64_t, 4> items{};
  for (auto& it : items) it = uniform_int(rng, n);
  const auto nc = static_cast<int64_t>(cuts_.size());
  const int64_t cx = cuts_[uniform_int(rng, nc)];
  const int64_t cy = cuts_[uniform_int(rng, nc)];
  return compose(items, cx, cy);
}

MosaicBatch MosaicDataset::batch(int64_t begin, int64_t count) const {
  if (begin < 0 || count < 0) throw Error("mosaic: negative batch range");
  const int64_t S = cfg_.img_size, g = grid();
  MosaicBatch b{torch::empty({count, cfg_.channels, S, S}), torch::empty({count, g, g}, torch::kLong)};
  // ATen re-throws the first exception of the workers here.
  at::parallel_for(0, count, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; ++k) {
      auto s = get(begin + k);
      b.images[k].copy_(s.image);
      b.labels[k].copy_(s.labels);
    }
  });
  return b;
}

}  // namespace hd::data
