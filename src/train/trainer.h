// The one training loop: distillation, pre-training, fine-tuning and probing all run through it.
// Around the step (train/step.h: forward, loss, backward, clipping, AdamW) it owns the run
// folder, resume, the rank sync of multi-process runs, the schedule, logging (progress line +
// metrics.jsonl), atomic checkpoints and signal handling; a Task supplies the model and the loss
// of a batch.
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
#include "train/step.h"

namespace hd::parallel {
class Comm;
}

namespace hd::train {

struct TrainConfig {
  std::string run_dir;
  int64_t epochs = 1;
  int64_t max_steps = 0;           // 0: epochs * batches_per_epoch
  double lr = 1e-3;                // already scaled for the batch
  double min_lr = 1e-6;
  double warmup_epochs = 0;
  AdamWConfig adamw;
  double clip_grad = 0;            // 0: off
  uint64_t seed = 0;
  int64_t log_every = 10;
  int64_t checkpoint_every = 0;    // steps; 0: epoch ends only
  bool resume = false;
  bool force = false;              // resume even if the recipe changed
  std::string recipe_text;         // written to run_dir/recipe.yaml; its hash guards resume
  c10::Device device{c10::kCPU};
  bool quiet = false;
  // Stop (checkpoint saved, as on SIGINT) once this many steps are done; 0: never. Lets a long
  // run be split into time-boxed jobs that each continue with --resume.
  int64_t stop_at = 0;
  // bf16: the task's loss runs under bf16 autocast (master weights and optimiser stay fp32).
  Precision precision = Precision::FP32;
  // TensorBoard: rank 0 also writes every metrics.jsonl scalar (as train/<key>, plus
  // train/images_per_s at logging steps) to a new events.out.tfevents.* file in run_dir. On
  // resume, records of steps past the checkpoint are first removed from the folder's older event
  // files (io::trim_events_files), whatever this flag says, so that no step appears twice.
  bool tensorboard = true;
  // Data parallel: null for one process. Otherwise every rank runs train() with a loader sharded
  // for it (LoaderConfig rank / world_size, batch = global batch / world size). Rank 0's weights
  // (or its checkpoint, on --resume) are broadcast at the start, gradients are averaged during
  // backward (parallel::GradReducer), logged losses are means over the ranks, and only rank 0
  // writes anything (run folder, metrics, checkpoints, final artefacts). The checkpoint's
  // position counts whole global batches, so a run resumes under any world size that divides
  // the global batch.
  std::shared_ptr<parallel::Comm> comm;
};

// The step's settings of a run.
StepConfig step_config(const TrainConfig& cfg);

struct TrainResult {
  int64_t steps = 0;
  double seconds = 0;
  double first_loss = 0, last_loss = 0;  // mean over the first / last logging window
  bool interrupted = false;              // stopped by SIGINT/SIGTERM (checkpoint saved)
};

// Runs (or resumes) training. Checkpoints go to run_dir/checkpoint.safetensors (atomic). Throws
// hd::Error on a non-finite loss naming the step and the term; the last good checkpoint stays.
TrainResult train(Task& task, data::DataLoader& loader, const TrainConfig& cfg);

// For tests: ask the running loop to stop as if SIGINT had arrived.
void request_stop();

}  // namespace hd::train
