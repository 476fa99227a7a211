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
  // layer_decay < 1: layer-wise learning-rate decay (fine-tuning), see lr_decay_scale().
  ClassifyTask(model::VisionTransformer model, double label_smoothing, double layer_decay = 1.0)
      : model_(std::move(model)), smoothing_(label_smoothing), layer_decay_(layer_decay) {}
  torch::nn::Module& module() override { return *model_; }
  bool decays(const std::string& name, const torch::Tensor& p) const override { return model_->decays(name, p); }
  double lr_scale(const std::string& name) const override;
  torch::Tensor loss(const data::Batch& batch, NamedTensors& terms) override;
  void save_final(const std::string& run_dir) override;
  model::VisionTransformer& model() { return model_; }

 private:
  model::VisionTransformer model_;
  double smoothing_;
  double layer_decay_;
};

// Layer-wise learning-rate decay (BEiT / MAE fine-tuning): parameter `name` of a depth-L ViT
// gets decay^(L + 1 - layer), where layer is 0 for the embeddings (patch_embed, cls_token,
// pos_embed, norm_pre), i + 1 for blocks.i, and L + 1 for the final norm and the head.
double lr_decay_scale(const std::string& name, int64_t depth, double decay);

// Cross-entropy with label smoothing: targets (1 - s) on the label plus s / C on every class.
torch::Tensor smoothed_cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels, double smoothing);

}  // namespace hd::train
