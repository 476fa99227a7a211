// Vision Transformer with timm's parameter names (cls_token, pos_embed, patch_embed.proj,
// blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}, norm_pre, norm, fc_norm, head),
// so that ecosystem checkpoints load without renaming. The one model class every part of
// hybrid-distill uses: students, teachers, MAE encoders, classifiers.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include "model/config.h"

namespace hd::model {

// LayerNorm over the last dimension with affine parameters `weight` and `bias`, as
// LayerNorm (same parameter names, same result in float32). Reduced-precision
// (bf16/fp16) inputs on the CPU are normalised in float32 and returned in their own dtype:
// LibTorch's reduced-precision CPU kernel is several times slower than the two casts around the
// float32 one (it made a bf16 teacher's forward ~2x slower) and its statistics are less exact.
class LayerNormImpl : public torch::nn::Module {
 public:
  LayerNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight, bias;

 private:
  int64_t dim_;
  double eps_;
};
TORCH_MODULE(LayerNorm);

// What a tapped forward should return. Layer indices are 0-based block indices.
struct TapSpec {
  std::set<int64_t> block_input;  // input of block i (i = 0: embedded patches + pos, after norm_pre)
  std::set<int64_t> block;        // output of block i (residual stream)
  std::set<int64_t> msa;          // attention output of block i (after attn.proj, before residual)
  std::set<int64_t> relation;     // Q·Kᵀ · head_dim^-0.5 per head (the softmax input), [B,H,N,N]
  std::set<int64_t> attn;         // attention probabilities, [B,H,N,N]
  bool features = true;           // run every block and the final norm, return `features`
  // Deepest block to run. -1: derived (all blocks if `features`, else the deepest block a tap
  // needs; block i's input needs the blocks before i only), so a teacher computes only what is
  // needed.
  int64_t stop_after = -1;
};

struct Taps {
  torch::Tensor features;  // [B,N,D] after the final norm; undefined if not requested
  std::map<int64_t, torch::Tensor> block_input, block, msa, relation, attn;
};

class PatchEmbedImpl : public torch::nn::Module {
 public:
  explicit PatchEmbedImpl(const ViTConfig& cfg);
  torch::Tensor forward(const torch::Tensor& x);  // [B,C,H,W] -> [B,P,D]
  torch::nn::Conv2d proj{nullptr};

 private:
  int64_t img_size_;
};
TORCH_MODULE(PatchEmbed);

class MlpImpl : public torch::nn::Module {
 public:
  explicit MlpImpl(const ViTConfig& cfg);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};

 private:
  Activation act_;
};
TORCH_MODULE(Mlp);

class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const ViTConfig& cfg);
  // x: [B,N,D]. When `relation` / `attn` are non-null they receive [B,H,N,N] tensors.
  torch::Tensor forward(const torch::Tensor& x, torch::Tensor* relation = nullptr,
                        torch::Tensor* attn = nullptr);
  torch::nn::Linear qkv{nullptr}, proj{nullptr};

 private:
  int64_t num_heads_, head_dim_;
  double scale_;
};
TORCH_MODULE(Attention);

class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(const ViTConfig& cfg, double drop_path);
  // `msa`, `relation`, `attn` are filled when non-null.
  torch::Tensor forward(const torch::Tensor& x, torch::Tensor* msa = nullptr,
                        torch::Tensor* relation = nullptr, torch::Tensor* attn = nullptr);
  LayerNorm norm1{nullptr}, norm2{nullptr};
  Attention attn{nullptr};
  Mlp mlp{nullptr};
  double drop_path_rate() const { return drop_path_; }

 private:
  torch::Tensor drop_path(const torch::Tensor& x);
  double drop_path_;
};
TORCH_MODULE(Block);

class VisionTransformerImpl : public torch::nn::Module {
 public:
  explicit VisionTransformerImpl(ViTConfig cfg);

  const ViTConfig& config() const { return cfg_; }

  // Embeds images into tokens: patches (+ positional embedding), optionally only the patches
  // in `keep` ([B,K] int64 patch indices, 0-based, CLS excluded; positional embeddings are
  // gathered to match), CLS prepended (always kept), then norm_pre. -> [B, prefix+K, D].
  torch::Tensor embed(const torch::Tensor& images, const torch::Tensor& keep = {});

  // SimMIM-style embedding: every patch, with those where `mask` [B,P] (bool) is true replaced
  // by `mask_token` [1,1,D] before the positional embeddings are added.
  torch::Tensor embed_masked(const torch::Tensor& images, const torch::Tensor& mask, const torch::Tensor& mask_token);

  // [B,N,D] tokens after the final norm. `keep` as in embed().
  torch::Tensor forward_features(const torch::Tensor& images, const torch::Tensor& keep = {});
  // Pools the tokens (CLS or mean of patch tokens), applies fc_norm, and the head unless
  // `pre_logits`. -> [B, num_classes] or [B, D].
  torch::Tensor forward_head(const torch::Tensor& features, bool pre_logits = false);
  // forward_head(forward_features(images)).
  torch::Tensor forward(const torch::Tensor& images);

  // The instrumented forward used by distillation and diagnostics (see TapSpec).
  Taps forward_taps(const torch::Tensor& images, const TapSpec& spec, const torch::Tensor& keep = {});
  // The same on already embedded tokens [B, prefix+n, D] (e.g. with some patches replaced by a
  // mask token, as SimMIM-style reconstruction does).
  Taps forward_tokens(torch::Tensor tokens, const TapSpec& spec);

  // Replaces the classifier (num_classes = 0 removes it). New head weights are zero.
  void reset_classifier(int64_t num_classes);

  // Parameter names that take no weight decay by name (timm: pos_embed, cls_token); norms and
  // biases (1-D tensors) are excluded by `decays()`.
  std::set<std::string> no_weight_decay() const;
  // Whether the named parameter should take weight decay.
  bool decays(const std::string& name, const torch::Tensor& param) const;

  // timm's init: trunc-normal(0.02) for Linear weights, zero biases, LayerNorm (1, 0),
  // pos_embed trunc-normal(0.02), cls_token normal(1e-6), zero head. Deterministic given the
  // global torch seed.
  void init_weights();

  int64_t num_params() const;

  PatchEmbed patch_embed{nullptr};
  torch::Tensor cls_token, pos_embed;
  LayerNorm norm_pre{nullptr};  // only with cfg.norm_pre
  torch::nn::ModuleList blocks{nullptr};
  LayerNorm norm{nullptr};      // absent with cfg.fc_norm (timm: Identity)
  LayerNorm fc_norm{nullptr};   // only with cfg.fc_norm
  torch::nn::Linear head{nullptr};         // only with cfg.num_classes > 0

 private:
  torch::Tensor final_norm(const torch::Tensor& x);
  ViTConfig cfg_;
};
TORCH_MODULE(VisionTransformer);

// Truncated normal init in place (as torch.nn.init.trunc_normal_, bounds absolute).
void trunc_normal_(torch::Tensor t, double std, double a = -2.0, double b = 2.0);

}  // namespace hd::model
