#include "train/optim.h"

#include <cmath>
#include <map>
#include <sstream>

#include <torch/torch.h>

#include "util/error.h"

namespace hd::train {

AdamW::AdamW(std::vector<Param> params, AdamWConfig cfg) : params_(std::move(params)), cfg_(cfg) {
  for (const auto& p : params_) {
    m_.push_back(torch::zeros_like(p.param, torch::MemoryFormat::Contiguous).to(torch::kFloat));
    v_.push_back(torch::zeros_like(p.param, torch::MemoryFormat::Contiguous).to(torch::kFloat));
  }
}

void AdamW::zero_grad() {
  for (auto& p : params_)
    if (p.param.grad().defined()) p.param.mutable_grad() = torch::Tensor();
}

void AdamW::step(double lr) {
  torch::NoGradGuard ng;
  ++t_;
  const double bc1 = 1.0 - std::pow(cfg_.beta1, static_cast<double>(t_));
  const double bc2 = 1.0 - std::pow(cfg_.beta2, static_cast<double>(t_));
  const double bc2_sqrt = std::sqrt(bc2);
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& p = params_[i].param;
    const auto& g = p.grad();
    if (!g.defined()) continue;
    auto gf = g.to(torch::kFloat);
    m_[i].mul_(cfg_.beta1).add_(gf, 1.0 - cfg_.beta1);
    v_[i].mul_(cfg_.beta2).addcmul_(gf, gf, 1.0 - cfg_.beta2);
    const double plr = lr * params_[i].lr_scale;
    if (params_[i].decay && cfg_.weight_decay != 0) p.mul_(1.0 - plr * cfg_.weight_decay);
    auto denom = (v_[i].sqrt() / bc2_sqrt).add_(cfg_.eps);
    p.addcdiv_(m_[i].to(p.scalar_type()), denom.to(p.scalar_type()), -plr / bc1);
  }
}

std::vector<std::pair<std::string, torch::Tensor>> AdamW::state() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  out.emplace_back("optim.step", torch::tensor({t_}, torch::kLong));
  for (size_t i = 0; i < params_.size(); ++i) {
    out.emplace_back("optim." + params_[i].name + ".exp_avg", m_[i]);
    out.emplace_back("optim." + params_[i].name + ".exp_avg_sq", v_[i]);
  }
  return out;
}

void AdamW::load_state(const std::vector<std::pair<std::string, torch::Tensor>>& tensors, const std::string& origin) {
  std::map<std::string, torch::Tensor> by_name(tensors.begin(), tensors.end());
  auto get = [&](const std::string& key, const torch::Tensor& like) {
    auto it = by_name.find(key);
    if (it == by_name.end()) throw Error(origin + ": optimiser state '" + key + "' is missing");
    if (it->second.sizes() != like.sizes()) {
      std::ostringstream s;
      s << origin << ": optimiser state '" << key << "' has shape " << it->second.sizes() << ", expected "
        << like.sizes();
      throw Error(s.str());
    }
    return it->second;
  };
  auto step = by_name.find("optim.step");
  if (step == by_name.end() || step->second.numel() != 1)
    throw Error(origin + ": optimiser state 'optim.step' is missing");
  torch::NoGradGuard ng;
  for (size_t i = 0; i < params_.size(); ++i) {
    m_[i].copy_(get("optim." + params_[i].name + ".exp_avg", m_[i]));
    v_[i].copy_(get("optim." + params_[i].name + ".exp_avg_sq", v_[i]));
  }
  t_ = step->second.to(torch::kLong).item<int64_t>();
}

double cosine_lr(int64_t step, int64_t total_steps, int64_t warmup_steps, double base_lr, double min_lr) {
  if (warmup_steps > 0 && step < warmup_steps) return base_lr * static_cast<double>(step + 1) / warmup_steps;
  if (total_steps <= warmup_steps) return base_lr;
  double progress = static_cast<double>(step - warmup_steps) / static_cast<double>(total_steps - warmup_steps);
  progress = std::min(1.0, std::max(0.0, progress));
  return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + std::cos(M_PI * progress));
}

double clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm) {
  torch::NoGradGuard ng;
  std::vector<torch::Tensor> norms;
  for (const auto& p : params)
    if (p.grad().defined()) norms.push_back(p.grad().to(torch::kFloat).norm().pow(2));
  if (norms.empty()) return 0.0;
  double total = torch::stack(norms).sum().sqrt().item<double>();
  if (max_norm > 0 && total > max_norm) {
    double scale = max_norm / (total + 1e-6);
    for (const auto& p : params)
      if (p.grad().defined()) p.grad().mul_(scale);
  }
  return total;
}

}  // namespace hd::train
