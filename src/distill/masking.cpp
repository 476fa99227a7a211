#include "distill/masking.h"

#include <algorithm>
#include <cmath>

#include <torch/torch.h>

#include "util/error.h"

namespace hd::distill {

int64_t kept_after_step(int64_t n, double drop_ratio) {
  // A tiny epsilon guards against 196*0.7 = 137.19999... style rounding in floating point.
  auto kept = static_cast<int64_t>(std::floor(static_cast<double>(n) * (1.0 - drop_ratio) + 1e-9));
  return std::max<int64_t>(1, std::min(kept, n));
}

torch::Tensor keep_all(int64_t batch, int64_t num_patches, const torch::Device& device) {
  return torch::arange(num_patches, torch::dtype(torch::kLong).device(device)).unsqueeze(0).expand({batch, num_patches}).contiguous();
}

torch::Tensor redundant_step(const torch::Tensor& tokens, const torch::Tensor& keep, double drop_ratio) {
  TORCH_CHECK(tokens.dim() == 3, "tokens must be [B,P,D]");
  TORCH_CHECK(keep.dim() == 2 && keep.size(0) == tokens.size(0), "keep must be [B,n]");
  const int64_t B = tokens.size(0), n = keep.size(1), D = tokens.size(2);
  const int64_t kept = kept_after_step(n, drop_ratio);
  if (kept == n) return keep;
  torch::NoGradGuard ng;
  // Scores in float32 whatever the teacher's precision: ranking must not depend on bf16 rounding.
  auto x = tokens.gather(1, keep.unsqueeze(-1).expand({B, n, D})).to(torch::kFloat);
  auto xn = torch::nn::functional::normalize(x, torch::nn::functional::NormalizeFuncOptions().dim(-1));
  auto mean = torch::nn::functional::normalize(xn.mean(1, /*keepdim=*/true),
                                               torch::nn::functional::NormalizeFuncOptions().dim(-1));
  auto sim = (xn * mean).sum(-1);  // [B,n] cosine similarity with the average token
  // Ascending stable sort: the least redundant come first; equal scores keep their (ascending
  // index) order, so of two tied tokens the lower index survives.
  auto order = std::get<1>(sim.sort(/*stable=*/true, /*dim=*/1, /*descending=*/false));
  auto survivors = keep.gather(1, order.slice(1, 0, kept));
  return std::get<0>(survivors.sort(1));
}

torch::Tensor random_keep(int64_t batch, int64_t num_patches, int64_t count, const torch::Device& device,
                          c10::optional<at::Generator> gen) {
  TORCH_CHECK(count >= 1 && count <= num_patches, "random_keep: count out of range");
  auto noise = torch::empty({batch, num_patches}, torch::dtype(torch::kFloat)).uniform_(0, 1, gen);
  auto idx = std::get<1>(noise.sort(1)).slice(1, 0, count);
  return std::get<0>(idx.sort(1)).to(device);
}

}  // namespace hd::distill
