// Runs a model over a stream of images and collects its attention diagnostics (see
// diagnostics.h) for every block, plus head-averaged attention maps of chosen query patches at
// chosen blocks for the first few images (the paper's Fig. 5c).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <c10/core/Device.h>
#include <torch/types.h>

#include "analysis/diagnostics.h"
#include "model/vit.h"

namespace hd::analysis {

struct MapRequest {
  std::vector<int64_t> layers;   // 0-based blocks to draw maps for
  std::vector<int64_t> queries;  // query patches, row-major patch indices (CLS excluded)
  int64_t images = 1;            // maps for the first `images` images of the stream
};

struct AttentionMaps {
  torch::Tensor images;          // [K,C,H,W] float in [0,1] (normalisation undone), for display
  std::vector<int64_t> layers, queries;
  torch::Tensor maps;            // [K, layers, queries, grid_h, grid_w] float64, each map sums to 1
  int64_t grid_h = 0, grid_w = 0, patch_size = 0;
};

struct AnalysisResult {
  Diagnostics diagnostics;  // every block, 0 .. depth-1
  AttentionMaps maps;
};

// Fills `images` with the next batch of normalised model inputs [B,C,H,W]; false at the end.
using BatchSource = std::function<bool(torch::Tensor& images)>;

// Feeds at most `max_images` images (<= 0: all) from `next` through `model` (eval mode, no
// gradients) on `device`, a batch at a time; memory does not grow with the number of images.
// `progress(images_done)` is called after each batch when set. hd::Error if the stream is empty,
// an input has the wrong shape, or a requested layer / query is out of range.
AnalysisResult analyze(model::VisionTransformer& model, const BatchSource& next, int64_t max_images,
                       const MapRequest& request, c10::Device device,
                       const std::function<void(int64_t)>& progress = {});

// Model inputs back to displayable [0,1] images: x * std + mean per channel, clamped.
torch::Tensor denormalise(const torch::Tensor& images, const std::vector<double>& mean, const std::vector<double>& std);

// Parses query cells: "auto" (the centre cell and the cell a quarter of the way in from the top
// left), or a comma list of "row:col" grid cells and plain row-major patch indices. Returns
// patch indices; hd::Error (naming `what`) for anything outside the grid.
std::vector<int64_t> parse_queries(const std::string& spec, int64_t grid_h, int64_t grid_w, const std::string& what);

// Model identity for the JSON (checkpoint path as given).
ModelInfo model_info(const model::ViTConfig& cfg, const std::string& checkpoint);

}  // namespace hd::analysis
