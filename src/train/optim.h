// AdamW with decoupled weight decay and two parameter groups (decay / no decay), written out so
// that its whole state is a list of named tensors (saved in safetensors checkpoints, restored
// exactly on --resume), plus the warmup + cosine learning-rate schedule.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <torch/types.h>

namespace hd::train {

struct AdamWConfig {
  double lr = 6e-4;
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.05;
};

class AdamW {
 public:
  // `params`: (name, parameter, decays). Parameters without decay are norms, biases, pos_embed,
  // cls_token (VisionTransformer::decays()).
  struct Param {
    std::string name;
    torch::Tensor param;
    bool decay = true;
    double lr_scale = 1.0;  // multiplies the step's learning rate (layer-wise lr decay)
  };
  AdamW(std::vector<Param> params, AdamWConfig cfg);

  // One update with learning rate `lr` (schedules set it per step). Parameters without a
  // gradient are skipped (their state is untouched).
  //   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
  //   p -= lr * wd * p                      (decoupled decay, decay group only)
  //   p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
  // with lr multiplied by the parameter's lr_scale.
  void step(double lr);
  void zero_grad();
  int64_t steps() const { return t_; }
  const AdamWConfig& config() const { return cfg_; }
  const std::vector<Param>& params() const { return params_; }

  // "optim.<name>.exp_avg", "optim.<name>.exp_avg_sq" and "optim.step".
  std::vector<std::pair<std::string, torch::Tensor>> state() const;
  // Restores state(); hd::Error naming `origin` and the tensor if anything is missing or mismatched.
  void load_state(const std::vector<std::pair<std::string, torch::Tensor>>& tensors, const std::string& origin);

 private:
  std::vector<Param> params_;
  std::vector<torch::Tensor> m_, v_;
  AdamWConfig cfg_;
  int64_t t_ = 0;
};

// Linear warmup from 0 to `base_lr` over `warmup_steps`, then cosine decay to `min_lr` at
// `total_steps` (as dBOT/MAE's per-iteration schedule).
double cosine_lr(int64_t step, int64_t total_steps, int64_t warmup_steps, double base_lr, double min_lr);

// Global L2 norm of all gradients; scales them so it is at most `max_norm` (> 0). Returns the
// norm before clipping.
double clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm);

}  // namespace hd::train
