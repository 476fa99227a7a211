#include "analysis/analyze.h"

#include <algorithm>
#include <sstream>

#include <torch/torch.h>

#include "util/error.h"
#include "util/parse.h"

namespace hd::analysis {

torch::Tensor denormalise(const torch::Tensor& images, const std::vector<double>& mean, const std::vector<double>& std) {
  const int64_t C = images.size(1);
  if (static_cast<int64_t>(mean.size()) != C || static_cast<int64_t>(std.size()) != C)
    throw Error("denormalise: " + std::to_string(C) + " channels but " + std::to_string(mean.size()) +
                " means and " + std::to_string(std.size()) + " standard deviations");
  auto m = torch::tensor(mean, torch::kDouble).view({1, C, 1, 1});
  auto s = torch::tensor(std, torch::kDouble).view({1, C, 1, 1});
  return (images.to(torch::kCPU, torch::kDouble) * s + m).clamp(0.0, 1.0).to(torch::kFloat);
}

std::vector<int64_t> parse_queries(const std::string& spec, int64_t grid_h, int64_t grid_w, const std::string& what) {
  std::vector<int64_t> out;
  auto cell = [&](int64_t r, int64_t c, const std::string& item) {
    if (r < 0 || r >= grid_h || c < 0 || c >= grid_w)
      throw Error(what + ": '" + item + "' is outside the " + std::to_string(grid_h) + "x" + std::to_string(grid_w) +
                  " patch grid");
    return r * grid_w + c;
  };
  if (spec.empty() || spec == "auto") {
    out.push_back(cell(grid_h / 2, grid_w / 2, "centre"));
    int64_t q = cell(grid_h / 4, grid_w / 4, "quarter");
    if (q != out[0]) out.push_back(q);
    return out;
  }
  auto number = [&](const std::string& s, const std::string& item) -> int64_t {
    auto v = parse_int(s);
    if (!v) throw Error(what + ": '" + item + "' is not a patch index or a row:col grid cell");
    return *v;
  };
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) {
    auto colon = item.find(':');
    if (colon == std::string::npos) {
      int64_t p = number(item, item);
      if (p < 0 || p >= grid_h * grid_w)
        throw Error(what + ": patch " + item + " is outside the " + std::to_string(grid_h * grid_w) + " patches");
      out.push_back(p);
    } else {
      out.push_back(cell(number(item.substr(0, colon), item), number(item.substr(colon + 1), item), item));
    }
  }
  if (out.empty()) throw Error(what + ": no query cells given");
  return out;
}

ModelInfo model_info(const model::ViTConfig& cfg, const std::string& checkpoint) {
  ModelInfo m;
  m.checkpoint = checkpoint;
  m.config_name = cfg.name;
  m.embed_dim = cfg.embed_dim;
  m.depth = cfg.depth;
  m.num_heads = cfg.num_heads;
  m.patch_size = cfg.patch_size;
  m.img_size = cfg.img_size;
  m.prefix_tokens = cfg.num_prefix_tokens();
  return m;
}

AnalysisResult analyze(model::VisionTransformer& model, const BatchSource& next, int64_t max_images,
                       const MapRequest& request, c10::Device device, const std::function<void(int64_t)>& progress) {
  const auto& cfg = model->config();
  const int64_t gh = cfg.grid_size(), gw = cfg.grid_size(), prefix = cfg.num_prefix_tokens();
  for (auto l : request.layers)
    if (l < 0 || l >= cfg.depth)
      throw Error("attention maps: layer " + std::to_string(l) + " is out of range for a " +
                  std::to_string(cfg.depth) + "-block model '" + cfg.name + "'");
  for (auto q : request.queries)
    if (q < 0 || q >= cfg.num_patches())
      throw Error("attention maps: query patch " + std::to_string(q) + " is outside the " +
                  std::to_string(cfg.num_patches()) + " patches of '" + cfg.name + "'");

  model->eval();
  model->to(device);
  torch::NoGradGuard no_grad;

  std::vector<int64_t> layers;
  for (int64_t i = 0; i < cfg.depth; ++i) layers.push_back(i);
  Accumulator acc(layers, cfg.num_heads, gh, gw, static_cast<double>(cfg.patch_size), prefix);
  model::TapSpec spec;
  spec.features = false;
  spec.attn.insert(layers.begin(), layers.end());

  AnalysisResult res;
  res.maps.layers = request.layers;
  res.maps.queries = request.queries;
  res.maps.grid_h = gh;
  res.maps.grid_w = gw;
  res.maps.patch_size = cfg.patch_size;
  const bool want_maps = request.images > 0 && !request.layers.empty() && !request.queries.empty();
  std::vector<torch::Tensor> map_images, map_values;  // per batch: [k,C,H,W], [k,L,Q,h,w]
  int64_t mapped = 0, done = 0;

  torch::Tensor x;
  while ((max_images <= 0 || done < max_images) && next(x)) {
    if (!x.defined() || x.dim() != 4 || x.size(1) != cfg.in_chans || x.size(2) != cfg.img_size ||
        x.size(3) != cfg.img_size) {
      std::ostringstream s;
      if (x.defined()) s << x.sizes();
      throw Error("input batch of shape " + s.str() + " but model '" + cfg.name + "' expects [B, " +
                  std::to_string(cfg.in_chans) + ", " + std::to_string(cfg.img_size) + ", " +
                  std::to_string(cfg.img_size) + "]");
    }
    if (max_images > 0 && done + x.size(0) > max_images) x = x.narrow(0, 0, max_images - done);
    if (x.size(0) == 0) continue;
    auto taps = model->forward_taps(x.to(device, torch::kFloat), spec);
    // Under bf16 autocast the attention comes out in bf16; the metrics are sums of many small
    // probabilities, computed in float32.
    for (auto& [l, a] : taps.attn) a = a.to(torch::kFloat);
    for (auto l : layers) acc.add(l, taps.attn.at(l));

    if (want_maps && mapped < request.images) {
      const int64_t k = std::min(request.images - mapped, x.size(0));
      map_images.push_back(denormalise(x.narrow(0, 0, k), cfg.mean, cfg.std));
      std::vector<torch::Tensor> per_layer;
      for (auto l : request.layers) {
        auto a = taps.attn.at(l).narrow(0, 0, k);
        std::vector<torch::Tensor> per_query;
        for (auto q : request.queries) per_query.push_back(query_map(a, prefix, q, gh, gw).cpu());
        per_layer.push_back(torch::stack(per_query, 1));  // [k,Q,h,w]
      }
      map_values.push_back(torch::stack(per_layer, 1));  // [k,L,Q,h,w]
      mapped += k;
    }
    done += x.size(0);
    if (progress) progress(done);
  }
  if (done == 0) throw Error("no images to analyse");
  res.diagnostics = acc.result();
  if (!map_images.empty()) {
    res.maps.images = torch::cat(map_images, 0);
    res.maps.maps = torch::cat(map_values, 0);
  }
  return res;
}

}  // namespace hd::analysis
