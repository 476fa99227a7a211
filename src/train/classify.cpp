#include "train/classify.h"

#include <cmath>
#include <filesystem>

#include <torch/torch.h>

#include "model/checkpoint.h"

namespace hd::train {

torch::Tensor smoothed_cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels, double smoothing) {
  auto logp = torch::log_softmax(logits.to(torch::kFloat), -1);
  auto nll = -logp.gather(1, labels.unsqueeze(1)).squeeze(1);
  auto uniform = -logp.mean(-1);
  return ((1.0 - smoothing) * nll + smoothing * uniform).mean();
}

double lr_decay_scale(const std::string& name, int64_t depth, double decay) {
  int64_t layer = depth + 1;
  if (name == "cls_token" || name == "pos_embed" || name.rfind("patch_embed.", 0) == 0 || name.rfind("norm_pre.", 0) == 0)
    layer = 0;
  else if (name.rfind("blocks.", 0) == 0)
    layer = std::stoll(name.substr(7, name.find('.', 7) - 7)) + 1;
  return std::pow(decay, static_cast<double>(depth + 1 - layer));
}

double ClassifyTask::lr_scale(const std::string& name) const {
  return layer_decay_ == 1.0 ? 1.0 : lr_decay_scale(name, model_->config().depth, layer_decay_);
}

torch::Tensor ClassifyTask::loss(const data::Batch& batch, NamedTensors& terms) {
  auto logits = model_->forward(batch.images);
  auto l = smoothed_cross_entropy(logits, batch.labels, smoothing_);
  torch::NoGradGuard ng;
  terms.emplace_back("acc", (logits.argmax(-1) == batch.labels).to(torch::kFloat).mean());
  return l;
}

void ClassifyTask::save_final(const std::string& run_dir) {
  model::save_model((std::filesystem::path(run_dir) / "model.safetensors").string(), model_);
}

}  // namespace hd::train
