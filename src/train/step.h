// One optimisation step of a Task, exactly as every training command runs it: the forward and
// loss under the run's precision, the loss all-reduce across ranks, backward (with the gradient
// all-reduce overlapping it), gradient clipping and AdamW. The trainer loops over it; the
// benchmarks time it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <c10/core/Device.h>
#include <torch/nn/module.h>

#include "data/loader.h"
#include "train/optim.h"
#include "train/precision.h"

namespace hd::parallel {
class Comm;
class GradReducer;
}  // namespace hd::parallel

namespace hd::train {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

class Task {
 public:
  virtual ~Task() = default;
  // The trainable module (its named parameters are optimised and checkpointed).
  virtual torch::nn::Module& module() = 0;
  // Whether the named parameter takes weight decay.
  virtual bool decays(const std::string& name, const torch::Tensor& p) const = 0;
  // Learning-rate multiplier of the named parameter (layer-wise lr decay when fine-tuning).
  virtual double lr_scale(const std::string& /*name*/) const { return 1.0; }
  // Loss of one batch (already on the device); `terms` receives named scalar parts for logging.
  virtual torch::Tensor loss(const data::Batch& batch, NamedTensors& terms) = 0;
  // Writes the final artefacts (e.g. the student alone) into the run folder.
  virtual void save_final(const std::string& run_dir) = 0;
};

struct StepConfig {
  c10::Device device{c10::kCPU};
  // bf16: the task's loss runs under bf16 autocast (master weights and optimiser stay fp32).
  Precision precision = Precision::FP32;
  AdamWConfig adamw;      // adamw.lr is the base rate; each step is given its scheduled rate
  double clip_grad = 0;   // 0: off
};

// What one step did, as logged: loss and terms are means over the ranks.
struct StepStats {
  double loss = 0;
  std::vector<std::pair<std::string, double>> terms;
  double grad_norm = 0;          // before clipping; 0 when clipping is off
  bool stop = false;             // some rank was asked to stop (multi-process runs)
  double t_forward = 0;          // host-to-device copy, forward + loss, loss all-reduce
  double t_backward = 0;         // backward with the gradient all-reduce
  double t_optimizer = 0;        // clipping + AdamW
};

class TrainStep {
 public:
  // Moves the task's module to the device in training mode and sets up AdamW over its trainable
  // parameters (decay groups and lr scales from the task).
  TrainStep(Task& task, const StepConfig& cfg);
  ~TrainStep();
  TrainStep(const TrainStep&) = delete;
  TrainStep& operator=(const TrainStep&) = delete;

  // Data parallel from now on: losses and gradients are averaged over `comm`'s ranks. Call once
  // every rank holds the same starting state.
  void join(std::shared_ptr<parallel::Comm> comm);

  // One step on `batch` (copied to the device) at learning rate `lr`. `step` names the step in
  // errors; `stop_requested` is this rank's wish to stop after it, combined with the other
  // ranks' in the loss all-reduce. hd::Error on a non-finite loss (naming the term) or gradient
  // norm; the parameters are then not updated.
  StepStats run(data::Batch& batch, double lr, int64_t step, bool stop_requested = false);

  AdamW& optimizer() { return *opt_; }
  const std::vector<torch::Tensor>& parameters() const { return params_; }
  const StepConfig& config() const { return cfg_; }

 private:
  Task& task_;
  StepConfig cfg_;
  std::vector<torch::Tensor> params_;
  std::unique_ptr<AdamW> opt_;
  std::shared_ptr<parallel::Comm> comm_;
  std::unique_ptr<parallel::GradReducer> reducer_;
};

}  // namespace hd::train
