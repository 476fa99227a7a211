#include "distill/task.h"

#include <filesystem>

#include <torch/torch.h>

#include "model/checkpoint.h"
#include "train/inputs.h"

namespace hd::distill {

torch::Tensor DistillTask::loss(const data::Batch& batch, train::NamedTensors& terms) {
  auto out = d_->forward(batch.images);
  for (auto& [k, v] : out.terms) terms.emplace_back(k, v.detach());
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
  lc.seed = r.seed;
  lc.transform = train::model_transform(r.student, r.data.augment);
  lc.transform.scale_min = r.data.scale_min;
  lc.transform.scale_max = r.data.scale_max;
  lc.transform.hflip = r.data.hflip;
  return lc;
}

}  // namespace hd::distill
