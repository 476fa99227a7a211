#include "train/step.h"

#include <cmath>

#include <torch/torch.h>

#include "parallel/comm.h"
#include "util/error.h"
#include "util/timer.h"

namespace hd::train {

namespace {

// "nan", "inf", "-inf" (whatever the NaN's sign bit) or the number.
std::string value_text(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return std::to_string(v);
}

}  // namespace

TrainStep::TrainStep(Task& task, const StepConfig& cfg) : task_(task), cfg_(cfg) {
  auto& module = task.module();
  module.to(cfg.device);
  module.train();
  std::vector<AdamW::Param> groups;
  for (auto& p : module.named_parameters(true)) {
    if (!p.value().requires_grad()) continue;
    groups.push_back({p.key(), p.value(), task.decays(p.key(), p.value()), task.lr_scale(p.key())});
    params_.push_back(p.value());
  }
  opt_ = std::make_unique<AdamW>(std::move(groups), cfg.adamw);
}

TrainStep::~TrainStep() = default;

void TrainStep::join(std::shared_ptr<parallel::Comm> comm) {
  comm_ = std::move(comm);
  reducer_ = comm_ ? std::make_unique<parallel::GradReducer>(comm_, params_) : nullptr;
}

StepStats TrainStep::run(data::Batch& batch, double lr, int64_t step, bool stop_requested) {
  StepStats s;
  Timer t;
  // From pinned memory (LoaderConfig::pin_memory) the copies to a GPU are asynchronous.
  const bool async = cfg_.device.is_cuda();
  batch.images = batch.images.to(cfg_.device, async);
  batch.labels = batch.labels.to(cfg_.device, async);
  NamedTensors terms;
  torch::Tensor loss;
  {
    AutocastScope autocast(cfg_.device, cfg_.precision == Precision::BF16);
    loss = task_.loss(batch, terms);
  }
  // The loss and its terms as logged (means over the ranks), and whether any rank was asked to
  // stop: one small collective keeps every rank's decisions identical.
  std::vector<double> values{loss.item<double>()};
  for (auto& [k, v] : terms) values.push_back(v.item<double>());
  if (comm_) {
    values.push_back(stop_requested ? 1.0 : 0.0);
    auto packed = torch::tensor(values, torch::kDouble);
    comm_->allreduce_sum(packed, "loss all-reduce at step " + std::to_string(step));
    auto acc = packed.accessor<double, 1>();
    const double world = static_cast<double>(comm_->size());
    for (size_t i = 0; i + 1 < values.size(); ++i) values[i] = acc[static_cast<int64_t>(i)] / world;
    s.stop = acc[static_cast<int64_t>(values.size()) - 1] > 0;
    values.pop_back();
  } else {
    s.stop = stop_requested;
  }
  s.loss = values[0];
  for (size_t i = 0; i < terms.size(); ++i) s.terms.emplace_back(terms[i].first, values[i + 1]);
  if (!std::isfinite(s.loss)) {
    std::string bad = "total";
    for (auto& [k, v] : s.terms)
      if (!std::isfinite(v)) bad = k;
    throw Error("loss became " + value_text(s.loss) + " at step " + std::to_string(step) + " (term '" + bad + "')");
  }
  s.t_forward = t.seconds();

  t.reset();
  opt_->zero_grad();
  if (reducer_) reducer_->begin();
  loss.backward();
  if (reducer_) reducer_->finish();
  s.t_backward = t.seconds();

  t.reset();
  s.grad_norm = cfg_.clip_grad > 0 ? clip_grad_norm(params_, cfg_.clip_grad) : 0.0;
  if (!std::isfinite(s.grad_norm))
    throw Error("gradient norm became " + value_text(s.grad_norm) + " at step " + std::to_string(step) + " (loss " +
                value_text(s.loss) + "); parameters not updated");
  opt_->step(lr);
  s.t_optimizer = t.seconds();
  return s;
}

}  // namespace hd::train
