// 2x2 mosaics of a labelled data set, with a per-patch label map: a dense (segmentation-like)
// task built from an image-classification data set.
//
// Mosaic i of seed s takes four random items of the base data set (top-left, top-right,
// bottom-left, bottom-right) and a cut point (cx, cy) drawn uniformly from the patch boundaries
// that leave every quadrant at least `min_cells` patches wide and high, so every patch lies on
// exactly one item. Each item is resized (bilinear, antialiased when shrinking, as
// data::resize) into its rectangle. Everything depends on (seed, i) only.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include <torch/types.h>

#include "data/dataset.h"

namespace hd::data {

struct MosaicConfig {
  int64_t img_size = 28;  // output is [channels, img_size, img_size]
  int64_t patch = 4;      // the label map is [img_size / patch]^2
  int64_t channels = 1;   // 1 or 3 (convert_channels)
  int64_t min_cells = 2;  // patches per side of every quadrant, at least
  uint64_t seed = 0;
};

struct MosaicSample {
  torch::Tensor image;          // float32 [channels, img_size, img_size] in [0,1] (not normalised)
  torch::Tensor labels;         // int64 [grid, grid]: class of the item each patch lies on
  int64_t cx = 0, cy = 0;       // cut point in pixels: column and row where the right / bottom items start
  std::array<int64_t, 4> items{};  // base indices: top-left, top-right, bottom-left, bottom-right
};

struct MosaicBatch {
  torch::Tensor images;  // float32 [B, channels, img_size, img_size] in [0,1]
  torch::Tensor labels;  // int64 [B, grid, grid]
};

class MosaicDataset {
 public:
  // Throws hd::Error when the geometry is impossible (img_size not a multiple of patch, or too
  // few patches for two quadrants of min_cells each), for an empty base data set, or for
  // channels other than 1 and 3.
  MosaicDataset(std::shared_ptr<const Dataset> base, MosaicConfig cfg);

  // Sample i (any i >= 0): deterministic from (cfg.seed, i). Safe to call from several threads.
  MosaicSample get(int64_t i) const;
  // Samples begin .. begin+count-1, built in parallel (at::parallel_for).
  MosaicBatch batch(int64_t begin, int64_t count) const;

  // The cut positions in pixels a coordinate is drawn from (for 28 px, patch 4: 8, 12, 16, 20).
  const std::vector<int64_t>& cut_points() const { return cuts_; }
  int64_t grid() const { return cfg_.img_size / cfg_.patch; }
  const MosaicConfig& config() const { return cfg_; }
  const Dataset& base() const { return *base_; }

  // The mosaic of four given items at a given cut (the building block of get()); the cut must
  // lie on patch boundaries with at least min_cells patches per side, else hd::Error.
  MosaicSample compose(const std::array<int64_t, 4>& items, int64_t cx, int64_t cy) const;

 private:
  std::shared_ptr<const Dataset> base_;
  MosaicConfig cfg_;
  std::vector<int64_t> cuts_;
};

}  // namespace hd::data
