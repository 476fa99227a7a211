// Progressive redundant token masking (Hybrid Distillation, Sec. 3.2, Eq. 4; after PCAE).
//
// Tokens are patch tokens only (CLS is never dropped). A "keep" tensor is [B,K] int64 of patch
// indices (0-based, CLS excluded), sorted ascending, i.e. in the order the student sees them.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/types.h>

namespace hd::distill {

// Number of tokens a step over n kept tokens keeps: floor(n * (1 - drop_ratio)), at least 1.
int64_t kept_after_step(int64_t n, double drop_ratio);

// All patch indices [B,P] (no masking).
torch::Tensor keep_all(int64_t batch, int64_t num_patches, const torch::Device& device);

// One redundancy step. `tokens` [B,P,D] are patch tokens at every original position (the
// teacher always runs on the full image); `keep` [B,n] the currently kept positions. Among the
// kept tokens, each is L2-normalised and scored by cosine similarity with the mean of the
// normalised kept tokens; the floor(n*drop_ratio) most similar (most redundant) are dropped.
// Ties are broken by a stable sort, so the lower token index is kept. Returns [B, n'] sorted.
torch::Tensor redundant_step(const torch::Tensor& tokens, const torch::Tensor& keep, double drop_ratio);

// Uniformly random subset of `count` positions per image, sorted. Uses `gen` when given.
torch::Tensor random_keep(int64_t batch, int64_t num_patches, int64_t count, const torch::Device& device,
                          c10::optional<at::Generator> gen = c10::nullopt);

}  // namespace hd::distill
