#include "distill/task.h"

#include <filesystem>

#include <torch/torch.h>

#include "model/checkpoint.h"
#include "train/model_transform.h"

namespace hd::distill {

torch::Tensor DistillTask::loss(const data::Batch& batch, train::NamedTensors& terms) {
  auto out = d_->forward(batch.images);
  for (auto& [k, v] : out.terms) terms.emplace_back(k, v.detach());
  // Multi-layer targets also as they enter the loss (e.g. mim.relation.mean).
  for (auto& t : out.target_terms)
    if (t.layers.size() > 1) terms.emplace_back(t.name, t.value.detach());
  return out.loss;
}

void DistillTask::save_final(const std::string& run_dir) {
  auto path = (std::filesystem::path(run_dir) / "student.safetensors").string();
  model::save_model(path, d_->student, {{"hybrid_distill.recipe", d_->recipe().name}});
}

data::LoaderConfig loader_config(const Recipe& r) {
  data::LoaderConfig lc;
  lc.batch_size = r.batch;
  lc.shuffle = true;
  lc.drop_last = true;
  lc.num_workers = r.data.workers;
  lc.seed = r.data_seed();  // sample order and augmentation
  lc.transform = train::model_transform(r.student, r.data.augment);
  lc.transform.scale_min = r.data.scale_min;
  lc.transform.scale_max = r.data.scale_max;
  lc.transform.hflip = r.data.hflip;
  return lc;
}

train::TrainConfig train_config(const Recipe& r, const std::string& run_dir) {
  train::TrainConfig tc;
  tc.run_dir = run_dir;
  tc.epochs = r.epochs;
  tc.max_steps = r.max_steps;
  tc.lr = r.optim.lr * static_cast<double>(r.batch) / static_cast<double>(r.optim.base_batch);
  tc.min_lr = r.optim.min_lr;
  tc.warmup_epochs = r.optim.warmup_epochs;
  tc.adamw.beta1 = r.optim.beta1;
  tc.adamw.beta2 = r.optim.beta2;
  tc.adamw.eps = r.optim.eps;
  tc.adamw.weight_decay = r.optim.weight_decay;
  tc.clip_grad = r.optim.clip_grad;
  tc.seed = r.seed;
  tc.log_every = r.log_every;
  tc.checkpoint_every = r.checkpoint_every;
  // The effective recipe (defaults filled in, paths resolved): written to the run folder, and
  // its hash guards --resume against a changed recipe.
  tc.recipe_text = r.to_yaml();
  return tc;
}

}  // namespace hd::distill
