#include "eval/dense.h"

#include <cmath>
#include <limits>
#include <string>

#include <torch/torch.h>

#include "train/model_transform.h"
#include "util/error.h"

namespace hd::eval {

FeatureSet extract_tokens(model::VisionTransformer& model, const data::MosaicDataset& mosaics, int64_t count,
                          const c10::Device& device, int64_t batch) {
  const auto& cfg = model->config();
  const auto& mc = mosaics.config();
  if (mc.img_size != cfg.img_size || mc.patch != cfg.patch_size || mc.channels != cfg.in_chans)
    throw Error("dense: mosaics of " + std::to_string(mc.img_size) + " px, patch " + std::to_string(mc.patch) + ", " +
                std::to_string(mc.channels) + " channel(s) do not fit model '" + cfg.name + "' (" +
                std::to_string(cfg.img_size) + " px, patch " + std::to_string(cfg.patch_size) + ", " +
                std::to_string(cfg.in_chans) + " channel(s))");
  if (count <= 0 || batch <= 0) throw Error("dense: the number of mosaics and the batch size must be positive");
  const auto tc = train::model_transform(cfg, false);
  const auto mean = torch::tensor(tc.mean, torch::kDouble).to(torch::kFloat).view({1, -1, 1, 1});
  const auto scale = torch::tensor(tc.std, torch::kDouble).to(torch::kFloat).view({1, -1, 1, 1});
  const int64_t prefix = cfg.num_prefix_tokens(), P = cfg.num_patches(), D = cfg.embed_dim;
  FeatureSet out{torch::empty({count * P, D}), torch::empty({count * P}, torch::kLong)};

  torch::NoGradGuard ng;
  const bool was_training = model->is_training();
  model->eval();
  for (int64_t s = 0; s < count; s += batch) {
    const int64_t n = std::min(batch, count - s);
    auto b = mosaics.batch(s, n);
    auto tokens = model->forward_features(((b.images - mean) / scale).to(device)).slice(1, prefix);
    out.features.slice(0, s * P, (s + n) * P).copy_(tokens.reshape({n * P, D}).to(torch::kFloat).cpu());
    out.labels.slice(0, s * P, (s + n) * P).copy_(b.labels.reshape({n * P}));
  }
  model->train(was_training);
  return out;
}

torch::Tensor confusion_matrix(const torch::Tensor& pred, const torch::Tensor& truth, int64_t num_classes) {
  if (pred.sizes() != truth.sizes()) throw Error("confusion matrix: predictions and truth differ in shape");
  auto p = pred.reshape({-1}).to(torch::kLong), t = truth.reshape({-1}).to(torch::kLong);
  if (t.numel() && (torch::min(torch::min(p), torch::min(t)).item<int64_t>() < 0 ||
                    torch::max(torch::max(p), torch::max(t)).item<int64_t>() >= num_classes))
    throw Error("confusion matrix: a class is outside [0, " + std::to_string(num_classes) + ")");
  return torch::bincount(t * num_classes + p, {}, num_classes * num_classes).to(torch::kLong)
      .view({num_classes, num_classes});
}

DenseMetrics dense_metrics(const torch::Tensor& confusion) {
  if (confusion.dim() != 2 || confusion.size(0) != confusion.size(1))
    throw Error("dense metrics: the confusion matrix must be square");
  const auto c = confusion.to(torch::kDouble);
  const auto tp = c.diagonal(), total = c.sum();
  const auto denom = c.sum(0) + c.sum(1) - tp;  // TP + FP + FN
  DenseMetrics m;
  const double all = total.item<double>();
  m.accuracy = all > 0 ? tp.sum().item<double>() / all : 0.0;
  double sum = 0;
  for (int64_t k = 0; k < c.size(0); ++k) {
    const double d = denom[k].item<double>();
    if (d > 0) {
      m.iou.push_back(tp[k].item<double>() / d);
      sum += m.iou.back();
      ++m.classes;
    } else {
      m.iou.push_back(std::numeric_limits<double>::quiet_NaN());
    }
  }
  m.miou = m.classes ? sum / m.classes : 0.0;
  return m;
}

DenseResult dense_probe(const FeatureSet& train, const FeatureSet& test, int64_t num_classes, const ProbeConfig& cfg) {
  if (train.features.size(0) == 0 || test.features.size(0) == 0) throw Error("dense probe: no tokens to train or test on");
  DenseResult r;
  r.probe = linear_probe(train, test, num_classes, cfg);
  r.train_accuracy = r.probe.train_top1;
  r.confusion = confusion_matrix(probe_logits(r.probe, test.features).argmax(1), test.labels, num_classes);
  r.test = dense_metrics(r.confusion);
  return r;
}

}  // namespace hd::eval
