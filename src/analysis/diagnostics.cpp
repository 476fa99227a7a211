#include "analysis/diagnostics.h"

#include <cmath>
#include <sstream>

#include <torch/torch.h>

#include "util/error.h"

namespace hd::analysis {

namespace {

std::string shape(const torch::Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

void check_square(const torch::Tensor& attn, const char* what) {
  if (!attn.defined() || attn.dim() < 2 || attn.size(-1) != attn.size(-2))
    throw Error(std::string(what) + ": expected attention [..., T, T], got " +
                (attn.defined() ? shape(attn) : std::string("an undefined tensor")));
}

void check_bhpp(const torch::Tensor& attn, const char* what) {
  check_square(attn, what);
  if (attn.dim() != 4) throw Error(std::string(what) + ": expected attention [B,H,P,P], got " + shape(attn));
}

double mean_of(const std::vector<double>& v) {
  if (v.empty()) return 0.0;
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

}  // namespace

torch::Tensor strip_cls_renormalise(const torch::Tensor& attn, int64_t prefix) {
  check_square(attn, "strip_cls_renormalise");
  const int64_t T = attn.size(-1);
  if (prefix < 0 || prefix >= T)
    throw Error("strip_cls_renormalise: " + std::to_string(prefix) + " prefix tokens of " + std::to_string(T) +
                " leave no patch tokens");
  auto a = attn.to(torch::kDouble).narrow(-2, prefix, T - prefix).narrow(-1, prefix, T - prefix);
  auto sum = a.sum(-1, /*keepdim=*/true);
  // A row without mass on patch tokens stays zero instead of turning into NaN.
  return a / torch::where(sum > 0, sum, torch::ones_like(sum));
}

torch::Tensor grid_distances(int64_t grid_h, int64_t grid_w, double patch_size) {
  if (grid_h < 1 || grid_w < 1) throw Error("grid_distances: empty grid");
  auto opts = torch::TensorOptions().dtype(torch::kDouble);
  auto idx = torch::arange(grid_h * grid_w, opts);
  auto rows = (idx / static_cast<double>(grid_w)).floor(), cols = idx - rows * static_cast<double>(grid_w);
  auto dr = rows.unsqueeze(1) - rows.unsqueeze(0), dc = cols.unsqueeze(1) - cols.unsqueeze(0);
  return (dr * dr + dc * dc).sqrt() * patch_size;
}

torch::Tensor head_distance(const torch::Tensor& attn, int64_t grid_h, int64_t grid_w, double patch_size) {
  check_bhpp(attn, "head_distance");
  const int64_t P = attn.size(-1);
  if (P != grid_h * grid_w)
    throw Error("head_distance: attention over " + std::to_string(P) + " tokens does not match a " +
                std::to_string(grid_h) + "x" + std::to_string(grid_w) + " patch grid");
  auto d = grid_distances(grid_h, grid_w, patch_size).to(attn.device());
  return (attn.to(torch::kDouble) * d).sum(-1).mean(-1);
}

torch::Tensor nmi(const torch::Tensor& attn) {
  check_bhpp(attn, "nmi");
  const int64_t P = attn.size(-1);
  auto a = attn.to(torch::kDouble);
  if (P < 2) return torch::zeros({a.size(0), a.size(1)}, a.options());
  // 0 log 0 = 0: clamping the log's argument keeps zero entries at exactly zero.
  const double tiny = 1e-300;
  auto pk = a.mean(-2);                                              // p(k) [B,H,P]
  auto h_k = -(pk * pk.clamp_min(tiny).log()).sum(-1);               // H(k)
  auto h_k_given_q = -(a * a.clamp_min(tiny).log()).sum(-1).mean(-1);  // H(k|q) = sum_q p(q) H(k|q)
  auto mi = (h_k - h_k_given_q).clamp_min(0.0);                      // I(q;k) = H(k) - H(k|q)
  auto denom = (h_k.clamp_min(0.0) * std::log(static_cast<double>(P))).sqrt();
  // H(k) = 0 forces I = 0: report 0 rather than 0/0.
  return torch::where(denom > 1e-12, mi / denom.clamp_min(1e-12), torch::zeros_like(mi)).clamp(0.0, 1.0);
}

torch::Tensor query_map(const torch::Tensor& attn, int64_t prefix, int64_t query, int64_t grid_h, int64_t grid_w) {
  check_square(attn, "query_map");
  if (attn.dim() != 4) throw Error("query_map: expected attention [B,H,T,T], got " + shape(attn));
  auto a = strip_cls_renormalise(attn, prefix);
  const int64_t P = a.size(-1);
  if (P != grid_h * grid_w)
    throw Error("query_map: attention over " + std::to_string(P) + " patch tokens does not match a " +
                std::to_string(grid_h) + "x" + std::to_string(grid_w) + " grid");
  if (query < 0 || query >= P)
    throw Error("query_map: query patch " + std::to_string(query) + " is outside the " + std::to_string(P) +
                " patches");
  return a.select(2, query).mean(1).reshape({a.size(0), grid_h, grid_w});
}

UniformReference uniform_reference(int64_t grid_h, int64_t grid_w, double patch_size) {
  if (grid_h < 1 || grid_w < 1) throw Error("uniform_reference: empty grid");
  const int64_t P = grid_h * grid_w;
  auto uniform = torch::full({1, 1, P, P}, 1.0 / static_cast<double>(P), torch::dtype(torch::kDouble));
  UniformReference r;
  r.grid_h = grid_h;
  r.grid_w = grid_w;
  r.patch_size = patch_size;
  r.head_distance = head_distance(uniform, grid_h, grid_w, patch_size).item<double>();
  r.nmi = nmi(uniform).item<double>();
  return r;
}

std::optional<UniformReference> uniform_reference(const ModelInfo& m) {
  if (m.img_size <= 0 || m.patch_size <= 0 || m.img_size % m.patch_size != 0) return std::nullopt;
  const int64_t g = m.img_size / m.patch_size;
  return uniform_reference(g, g, static_cast<double>(m.patch_size));
}

std::vector<double> Diagnostics::head_distance_mean() const {
  std::vector<double> out;
  for (const auto& row : head_distance) out.push_back(mean_of(row));
  return out;
}

std::vector<double> Diagnostics::nmi_mean() const {
  std::vector<double> out;
  for (const auto& row : nmi) out.push_back(mean_of(row));
  return out;
}

Accumulator::Accumulator(std::vector<int64_t> layers, int64_t heads, int64_t grid_h, int64_t grid_w,
                         double patch_size, int64_t prefix_tokens)
    : layers_(std::move(layers)),
      heads_(heads),
      grid_h_(grid_h),
      grid_w_(grid_w),
      prefix_(prefix_tokens),
      patch_size_(patch_size),
      dist_sum_(layers_.size(), std::vector<double>(static_cast<size_t>(heads), 0.0)),
      nmi_sum_(layers_.size(), std::vector<double>(static_cast<size_t>(heads), 0.0)),
      count_(layers_.size(), 0) {
  if (heads < 1) throw Error("Accumulator: a layer needs at least one head");
}

size_t Accumulator::slot(int64_t layer) const {
  for (size_t i = 0; i < layers_.size(); ++i)
    if (layers_[i] == layer) return i;
  throw Error("Accumulator: layer " + std::to_string(layer) + " was not declared");
}

void Accumulator::add(int64_t layer, const torch::Tensor& attn) {
  check_bhpp(attn, "Accumulator::add");
  auto a = strip_cls_renormalise(attn, prefix_);
  add_values(layer, head_distance(a, grid_h_, grid_w_, patch_size_), nmi(a));
}

void Accumulator::add_values(int64_t layer, const torch::Tensor& distance, const torch::Tensor& nmi_values) {
  size_t s = slot(layer);
  if (distance.dim() != 2 || distance.size(1) != heads_ || nmi_values.sizes() != distance.sizes())
    throw Error("Accumulator: layer " + std::to_string(layer) + ": expected [B," + std::to_string(heads_) +
                "] values, got " + shape(distance) + " and " + shape(nmi_values));
  auto d = distance.to(torch::kCPU, torch::kDouble).sum(0).contiguous();
  auto n = nmi_values.to(torch::kCPU, torch::kDouble).sum(0).contiguous();
  const double* dp = d.data_ptr<double>();
  const double* np = n.data_ptr<double>();
  for (int64_t h = 0; h < heads_; ++h) {
    dist_sum_[s][static_cast<size_t>(h)] += dp[h];
    nmi_sum_[s][static_cast<size_t>(h)] += np[h];
  }
  count_[s] += distance.size(0);
}

int64_t Accumulator::images() const {
  if (count_.empty()) return 0;
  for (size_t i = 1; i < count_.size(); ++i)
    if (count_[i] != count_[0])
      throw Error("Accumulator: layer " + std::to_string(layers_[i]) + " saw " + std::to_string(count_[i]) +
                  " images but layer " + std::to_string(layers_[0]) + " saw " + std::to_string(count_[0]));
  return count_[0];
}

Diagnostics Accumulator::result() const {
  Diagnostics d;
  d.images = images();
  if (d.images == 0) throw Error("Accumulator: no images were analysed");
  d.layers = layers_;
  for (size_t s = 0; s < layers_.size(); ++s) {
    std::vector<double> dist, n;
    for (int64_t h = 0; h < heads_; ++h) {
      dist.push_back(dist_sum_[s][static_cast<size_t>(h)] / static_cast<double>(d.images));
      n.push_back(nmi_sum_[s][static_cast<size_t>(h)] / static_cast<double>(d.images));
    }
    d.head_distance.push_back(std::move(dist));
    d.nmi.push_back(std::move(n));
  }
  return d;
}

nlohmann::json to_json(const Diagnostics& d, const ModelInfo& m) {
  nlohmann::json j;
  j["format"] = "hybrid-distill.diagnostics/1";
  j["model"] = {{"checkpoint", m.checkpoint},   {"config", m.config_name}, {"embed_dim", m.embed_dim},
                {"depth", m.depth},             {"heads", m.num_heads},    {"patch_size", m.patch_size},
                {"img_size", m.img_size},       {"prefix_tokens", m.prefix_tokens}};
  j["images"] = d.images;
  j["cls"] = m.prefix_tokens > 0 ? kClsHandling : "none in the model; rows renormalised";
  j["averaging"] =
      "per image and head, then mean over images (NMI: mean of per-image values); layer mean = mean over heads";
  j["units"] = {{"head_distance", "pixels"}, {"nmi", "fraction of log N"}};
  j["layers"] = d.layers;
  j["head_distance"] = d.head_distance;
  j["head_distance_mean"] = d.head_distance_mean();
  j["nmi"] = d.nmi;
  j["nmi_mean"] = d.nmi_mean();
  if (auto u = uniform_reference(m))
    j["uniform"] = {{"head_distance", u->head_distance},
                    {"nmi", u->nmi},
                    {"grid", {u->grid_h, u->grid_w}},
                    {"patch_size", u->patch_size},
                    {"meaning", "uniform attention over the patch grid"}};
  return j;
}

std::pair<Diagnostics, ModelInfo> from_json(const nlohmann::json& j, const std::string& origin) {
  Diagnostics d;
  ModelInfo m;
  try {
    for (const char* key : {"layers", "head_distance", "nmi", "images", "model"})
      if (!j.contains(key)) throw Error(origin + ": no '" + key + "' entry (not an analyze diagnostics.json?)");
    d.layers = j.at("layers").get<std::vector<int64_t>>();
    d.head_distance = j.at("head_distance").get<std::vector<std::vector<double>>>();
    d.nmi = j.at("nmi").get<std::vector<std::vector<double>>>();
    d.images = j.at("images").get<int64_t>();
    const auto& jm = j.at("model");
    m.checkpoint = jm.value("checkpoint", std::string());
    m.config_name = jm.value("config", std::string());
    m.embed_dim = jm.value("embed_dim", int64_t{0});
    m.depth = jm.value("depth", int64_t{0});
    m.num_heads = jm.value("heads", int64_t{0});
    m.patch_size = jm.value("patch_size", int64_t{0});
    m.img_size = jm.value("img_size", int64_t{0});
    m.prefix_tokens = jm.value("prefix_tokens", int64_t{1});
  } catch (const nlohmann::json::exception& e) {
    throw Error(origin + ": malformed diagnostics: " + e.what());
  }
  if (d.head_distance.size() != d.layers.size() || d.nmi.size() != d.layers.size())
    throw Error(origin + ": 'head_distance' and 'nmi' need one row per entry of 'layers' (" +
                std::to_string(d.layers.size()) + ")");
  for (size_t i = 0; i < d.layers.size(); ++i)
    if (d.head_distance[i].empty() || d.head_distance[i].size() != d.head_distance[0].size() ||
        d.nmi[i].size() != d.head_distance[i].size())
      throw Error(origin + ": layer " + std::to_string(d.layers[i]) + " has a different number of heads");
  return {d, m};
}

}  // namespace hd::analysis
