// Attention diagnostics of a Vision Transformer (METHOD.md, "average head distance and NMI"):
// how far each head looks (average attention distance, in pixels) and how much its attention
// depends on the query (normalised mutual information between query and key positions).
//
// Conventions, shared by the analysis command and its JSON output:
//   - Only patch tokens take part. The prefix (CLS) row and column are dropped and every
//     remaining row is renormalised to sum to 1 over the patch tokens
//     (JSON: "cls": "excluded, rows renormalised").
//   - Head distance of one image and head: sum_k attn(q,k) * dist(q,k), averaged over the
//     queries q; dist is the Euclidean distance between the patch-grid cells times the patch
//     size, i.e. pixels.
//   - NMI of one image and head: p(q) = 1/N, p(k|q) = attn(q,k), p(k) = sum_q p(q) p(k|q);
//     NMI = I(q;k) / sqrt(H(q) H(k)) with H(q) = log N. It is 0 where H(k) = 0 (every query
//     looks at the same single key: no information) or N = 1.
//   - Both are computed per image and head, then averaged over images (for NMI the average of
//     the per-image values, not the NMI of an averaged attention map). A layer's value is the
//     mean over its heads.
// All functions take and return CPU or device tensors; reductions run in float64.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/types.h>

namespace hd::analysis {

// JSON "cls" entry describing the prefix-token handling above.
inline constexpr const char* kClsHandling = "excluded, rows renormalised";

// attn [..., T, T] with `prefix` leading (CLS) tokens -> [..., T-prefix, T-prefix], float64,
// every row renormalised to sum to 1 (a row with no mass on patch tokens stays all zero).
// prefix = 0 only renormalises. hd::Error if the last two dimensions differ or prefix >= T.
torch::Tensor strip_cls_renormalise(const torch::Tensor& attn, int64_t prefix = 1);

// Pairwise Euclidean distances between the cells of a grid_h x grid_w patch grid, in pixels
// (cell distance x patch_size), float64 [P,P] with P = grid_h * grid_w, cells in row-major order
// (the ViT's token order).
torch::Tensor grid_distances(int64_t grid_h, int64_t grid_w, double patch_size);

// attn [B,H,P,P] over patch tokens (rows sum to 1) -> [B,H] float64: average head distance in
// pixels per image and head. hd::Error if P != grid_h * grid_w.
torch::Tensor head_distance(const torch::Tensor& attn, int64_t grid_h, int64_t grid_w, double patch_size);

// attn [B,H,P,P] over patch tokens (rows sum to 1) -> [B,H] float64: NMI per image and head.
torch::Tensor nmi(const torch::Tensor& attn);

// Attention of one query patch (0-based, row-major patch index) over the patch grid, averaged
// over heads, from raw attention [B,H,T,T] with `prefix` leading tokens (stripped, rows
// renormalised as above) -> [B, grid_h, grid_w] float64; each map sums to 1.
torch::Tensor query_map(const torch::Tensor& attn, int64_t prefix, int64_t query, int64_t grid_h, int64_t grid_w);

// What uniform attention (every query spreads its attention evenly over all patches) gives on a
// grid_h x grid_w grid of patch_size-px patches, computed with head_distance() and nmi() above:
// the mean pairwise cell distance in pixels, and an NMI of exactly 0. A model near these values
// attends almost uniformly; the reference is shown next to every figure and table.
struct UniformReference {
  int64_t grid_h = 0, grid_w = 0;
  double patch_size = 0;
  double head_distance = 0;  // pixels
  double nmi = 0;
};
UniformReference uniform_reference(int64_t grid_h, int64_t grid_w, double patch_size);

// Per-layer, per-head results averaged over images.
struct Diagnostics {
  std::vector<int64_t> layers;                    // 0-based block indices, one per row below
  std::vector<std::vector<double>> head_distance;  // [layer][head], pixels
  std::vector<std::vector<double>> nmi;            // [layer][head]
  int64_t images = 0;

  std::vector<double> head_distance_mean() const;  // per layer, mean over heads
  std::vector<double> nmi_mean() const;
};

// Streaming average over images: per-batch sums are accumulated in float64, so memory does not
// depend on the number of images.
class Accumulator {
 public:
  // `layers`: the 0-based blocks that will be fed; `heads`: heads per layer.
  Accumulator(std::vector<int64_t> layers, int64_t heads, int64_t grid_h, int64_t grid_w, double patch_size,
              int64_t prefix_tokens);

  // Adds one batch of one layer's raw attention probabilities [B,H,T,T] (prefix tokens
  // included, as the model produces them). Every layer must receive the same images.
  void add(int64_t layer, const torch::Tensor& attn);
  // Adds per-image values [B,H] that were already computed for one layer.
  void add_values(int64_t layer, const torch::Tensor& distance, const torch::Tensor& nmi);

  // Images seen (by every layer); hd::Error if the layers have seen different counts.
  int64_t images() const;
  Diagnostics result() const;

 private:
  size_t slot(int64_t layer) const;
  std::vector<int64_t> layers_;
  int64_t heads_, grid_h_, grid_w_, prefix_;
  double patch_size_;
  std::vector<std::vector<double>> dist_sum_, nmi_sum_;
  std::vector<int64_t> count_;
};

// Which model and data the diagnostics describe (the JSON's identity fields).
struct ModelInfo {
  std::string checkpoint;
  std::string config_name;
  int64_t embed_dim = 0, depth = 0, num_heads = 0, patch_size = 0, img_size = 0, prefix_tokens = 1;
};

// The uniform-attention reference of a model's square patch grid (img_size / patch_size cells per
// side); nullopt when the sizes are unknown (0) or the image is not a whole number of patches.
std::optional<UniformReference> uniform_reference(const ModelInfo& model);

// The diagnostics.json document: head_distance / nmi [layer][head], head_distance_mean /
// nmi_mean [layer], layers, images, cls, averaging, units, model identity and, where the grid is
// known, "uniform" (the uniform-attention reference: head_distance, nmi, grid, patch_size).
nlohmann::json to_json(const Diagnostics& d, const ModelInfo& model);

// Reads a diagnostics.json document back (as `compare` does); `origin` names the file in errors.
// Checks that the per-head tables are rectangular and match `layers`.
std::pair<Diagnostics, ModelInfo> from_json(const nlohmann::json& j, const std::string& origin);

}  // namespace hd::analysis
