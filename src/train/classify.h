// Supervised classification as a training Task (DeiT-style: cross-entropy with label
// smoothing), and top-1 accuracy of a classifier on a data set.
#pragma once

#include <string>

#include "data/loader.h"
#include "model/vit.h"
#include "train/trainer.h"

namespace hd::train {

class ClassifyTask : public Task {
 public:
  ClassifyTask(model::VisionTransformer model, double label_smoothing)
      : model_(std::move(model)), smoothing_(label_smoothing) {}
  torch::nn::Module& module() override { return *model_; }
  bool decays(const std::string& name, const torch::Tensor& p) const override { return model_->decays(name, p); }
  torch::Tensor loss(const data::Batch& batch, NamedTensors& terms) override;
  void save_final(const std::string& run_dir) override;
  model::VisionTransformer& model() { return model_; }

 private:
  model::VisionTransformer model_;
  double smoothing_;
};

// Cross-entropy with label smoothing: targets (1 - s) on the label plus s / C on every class.
torch::Tensor smoothed_cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels, double smoothing);

// Top-1 accuracy (0..1) of `model` over every batch of `loader`'s epoch 0, in eval mode.
double evaluate_top1(model::VisionTransformer& model, data::DataLoader& loader, const c10::Device& device);

}  // namespace hd::train
