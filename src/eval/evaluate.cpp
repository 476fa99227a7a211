#include "eval/evaluate.h"

#include <filesystem>

#include <torch/torch.h>

#include "io/safetensors.h"
#include "train/optim.h"
#include "util/error.h"

namespace hd::eval {

Pool parse_pool(const std::string& s) {
  if (s == "cls") return Pool::Cls;
  if (s == "mean") return Pool::Mean;
  if (s == "head") return Pool::Head;
  throw Error("pooling '" + s + "' is not one of: cls, mean, head");
}

std::string to_string(Pool p) { return p == Pool::Cls ? "cls" : p == Pool::Mean ? "mean" : "head"; }

void eval_batches(model::VisionTransformer& model, data::DataLoader& loader, int64_t limit,
                  const std::function<void(const torch::Tensor& images, const torch::Tensor& labels)>& fn) {
  torch::NoGradGuard ng;
  const bool was_training = model->is_training();
  model->eval();
  int64_t n = 0;
  loader.start_epoch(0);
  data::Batch b;
  while ((limit <= 0 || n < limit) && loader.next(b)) {
    auto images = b.images, labels = b.labels;
    if (limit > 0 && n + images.size(0) > limit) {
      images = images.slice(0, 0, limit - n);
      labels = labels.slice(0, 0, limit - n);
    }
    fn(images, labels);
    n += images.size(0);
  }
  model->train(was_training);
}

double evaluate_top1(model::VisionTransformer& model, data::DataLoader& loader, const c10::Device& device,
                     int64_t limit) {
  int64_t correct = 0, total = 0;
  eval_batches(model, loader, limit, [&](const torch::Tensor& images, const torch::Tensor& labels) {
    auto pred = model->forward(images.to(device)).argmax(-1).cpu();
    correct += (pred == labels).sum().item<int64_t>();
    total += labels.size(0);
  });
  return total ? static_cast<double>(correct) / total : 0.0;
}

FeatureSet extract_features(model::VisionTransformer& model, data::DataLoader& loader, Pool pool,
                            const c10::Device& device, int64_t limit) {
  const auto& cfg = model->config();
  const int64_t prefix = cfg.num_prefix_tokens();
  if (pool == Pool::Cls && prefix == 0) throw Error("model '" + cfg.name + "' has no CLS token; use mean pooling");
  std::vector<torch::Tensor> feats, labels;
  eval_batches(model, loader, limit, [&](const torch::Tensor& images, const torch::Tensor& y) {
    auto tokens = model->forward_features(images.to(device));
    auto f = pool == Pool::Head  ? model->forward_head(tokens, /*pre_logits=*/true)
             : pool == Pool::Cls ? tokens.select(1, 0)
                                 : tokens.slice(1, prefix).mean(1);
    feats.push_back(f.to(torch::kFloat).cpu());
    labels.push_back(y);
  });
  if (feats.empty()) throw Error("data set '" + loader.dataset().name() + "' yielded no images to extract features from");
  return {torch::cat(feats), torch::cat(labels)};
}

void save_features(const std::string& path, const FeatureSet& f, const std::string& key) {
  io::save_safetensors(path, {{"features", f.features.contiguous()}, {"labels", f.labels.contiguous()}},
                       {{"hybrid_distill.feature_key", key}});
}

bool load_features(const std::string& path, const std::string& key, FeatureSet& out) {
  if (!std::filesystem::exists(path)) return false;
  auto file = io::SafeTensorsFile::open(path);
  auto it = file.metadata().find("hybrid_distill.feature_key");
  if (it == file.metadata().end() || it->second != key) return false;  // a stale cache entry
  if (!file.contains("features") || !file.contains("labels"))
    throw Error(path + ": feature file lacks 'features' or 'labels'");
  out.features = file.load("features").to(torch::kFloat);
  out.labels = file.load("labels").to(torch::kLong);
  if (out.features.dim() != 2 || out.labels.dim() != 1 || out.features.size(0) != out.labels.size(0))
    throw Error(path + ": feature file has inconsistent shapes");
  return true;
}

torch::Tensor knn_scores(const FeatureSet& train, const torch::Tensor& test_features, int64_t k, double temperature,
                         int64_t num_classes) {
  if (k <= 0) throw Error("k-NN: k must be positive");
  if (temperature <= 0) throw Error("k-NN: temperature must be positive");
  torch::NoGradGuard ng;
  auto bank = torch::nn::functional::normalize(train.features.to(torch::kFloat),
                                               torch::nn::functional::NormalizeFuncOptions().dim(1));
  auto test = torch::nn::functional::normalize(test_features.to(torch::kFloat),
                                               torch::nn::functional::NormalizeFuncOptions().dim(1));
  k = std::min<int64_t>(k, bank.size(0));
  auto scores = torch::zeros({test.size(0), num_classes});
  const int64_t chunk = 1024;
  for (int64_t s = 0; s < test.size(0); s += chunk) {
    auto q = test.slice(0, s, std::min(s + chunk, test.size(0)));
    auto sim = torch::mm(q, bank.t());
    auto [vals, idx] = sim.topk(k, 1);
    auto votes = train.labels.index_select(0, idx.reshape({-1})).reshape(idx.sizes());
    scores.slice(0, s, s + q.size(0)).scatter_add_(1, votes, (vals / temperature).exp());
  }
  return scores;
}

double top1(const torch::Tensor& scores, const torch::Tensor& labels) {
  if (labels.numel() == 0) return 0.0;
  return (scores.argmax(1) == labels).to(torch::kDouble).mean().item<double>();
}

ProbeResult linear_probe(const FeatureSet& train, const FeatureSet& test, int64_t num_classes, const ProbeConfig& cfg) {
  if (cfg.epochs <= 0 || cfg.batch <= 0) throw Error("linear probe: epochs and batch must be positive");
  ProbeResult r;
  const int64_t N = train.features.size(0), D = train.features.size(1);
  r.mean = train.features.mean(0);
  // ZCA whitening from the training features: a well-conditioned problem, so a short first-order
  // optimisation reaches the optimum even when the features are strongly correlated.
  {
    auto xc = train.features - r.mean;
    auto cov = torch::mm(xc.t(), xc) / static_cast<double>(std::max<int64_t>(N - 1, 1));
    auto [evals, evecs] = torch::linalg::eigh(cov.to(torch::kDouble), "L");
    const double floor = std::max(evals.max().item<double>(), 1e-12) * cfg.whiten_eps;
    auto inv_sqrt = (evals.clamp_min(0) + floor).rsqrt();
    r.whiten = torch::mm(evecs * inv_sqrt.unsqueeze(0), evecs.t()).to(torch::kFloat);
  }
  auto xtr = torch::mm(train.features - r.mean, r.whiten);
  torch::Generator gen = at::detail::createCPUGenerator(cfg.seed);
  r.weight = torch::zeros({num_classes, D}).normal_(0, 0.01, gen).requires_grad_(true);
  r.bias = torch::zeros({num_classes}).requires_grad_(true);
  train::AdamWConfig ac;
  ac.weight_decay = cfg.weight_decay;
  train::AdamW opt({{"weight", r.weight, true}, {"bias", r.bias, false}}, ac);
  const int64_t per_epoch = (N + cfg.batch - 1) / cfg.batch, total = per_epoch * cfg.epochs;
  int64_t step = 0;
  for (int64_t e = 0; e < cfg.epochs; ++e) {
    auto perm = torch::randperm(N, gen, torch::kLong);
    for (int64_t s = 0; s < N; s += cfg.batch, ++step) {
      auto idx = perm.slice(0, s, std::min(s + cfg.batch, N));
      auto logits = torch::addmm(r.bias, xtr.index_select(0, idx), r.weight.t());
      auto loss = torch::nn::functional::cross_entropy(logits, train.labels.index_select(0, idx));
      opt.zero_grad();
      loss.backward();
      opt.step(train::cosine_lr(step, total, 0, cfg.lr, 0.0));
    }
  }
  torch::NoGradGuard ng;
  r.weight = r.weight.detach();
  r.bias = r.bias.detach();
  r.train_top1 = top1(torch::addmm(r.bias, xtr, r.weight.t()), train.labels);
  r.test_top1 = top1(probe_logits(r, test.features), test.labels);
  return r;
}

std::pair<torch::Tensor, torch::Tensor> probe_as_linear(const ProbeResult& probe) {
  torch::NoGradGuard ng;
  // (x - mean) · whiten · weightᵀ + bias = x · (weight · whitenᵀ)ᵀ + (bias - (weight · whitenᵀ) · mean)
  auto w = torch::mm(probe.weight, probe.whiten.t());
  return {w, probe.bias - torch::mv(w, probe.mean)};
}

torch::Tensor probe_logits(const ProbeResult& probe, const torch::Tensor& features) {
  torch::NoGradGuard ng;
  return torch::addmm(probe.bias, torch::mm(features.to(torch::kFloat) - probe.mean, probe.whiten), probe.weight.t());
}

}  // namespace hd::eval
