#include "train/classify.h"

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

double evaluate_top1(model::VisionTransformer& model, data::DataLoader& loader, const c10::Device& device) {
  torch::NoGradGuard ng;
  bool was_training = model->is_training();
  model->eval();
  int64_t correct = 0, total = 0;
  loader.start_epoch(0);
  data::Batch b;
  while (loader.next(b)) {
    auto pred = model->forward(b.images.to(device)).argmax(-1).cpu();
    correct += (pred == b.labels).sum().item<int64_t>();
    total += b.labels.size(0);
  }
  model->train(was_training);
  return total ? static_cast<double>(correct) / total : 0.0;
}

}  // namespace hd::train
