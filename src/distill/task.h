// Distillation as a training Task: the trainer optimises the student and the width
// decoders / width projections; the final artefact is the student alone, as timm-layout safetensors.
#pragma once

#include <string>

#include "distill/hybrid.h"
#include "train/trainer.h"

namespace hd::distill {

class DistillTask : public train::Task {
 public:
  explicit DistillTask(HybridDistiller d) : d_(std::move(d)) {}
  torch::nn::Module& module() override { return *d_; }
  bool decays(const std::string& name, const torch::Tensor& p) const override { return d_->decays(name, p); }
  torch::Tensor loss(const data::Batch& batch, train::NamedTensors& terms) override;
  void save_final(const std::string& run_dir) override;
  HybridDistiller& distiller() { return d_; }

 private:
  HybridDistiller d_;
};

// Loader settings for a recipe: the student's input size, channels and normalisation.
data::LoaderConfig loader_config(const Recipe& r);

// The trainer's settings for a recipe (lr scaled by batch / base_batch; the effective recipe as
// the text --resume must find unchanged). Run folder, resume, device and the like are the caller's.
train::TrainConfig train_config(const Recipe& r, const std::string& run_dir);

}  // namespace hd::distill
