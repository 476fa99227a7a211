// Masked autoencoder pre-training (He et al., MAE): a ViT encoder sees a random 25% of the patch
// tokens, a light Transformer decoder reconstructs the pixels of the masked ones from the
// encoded tokens plus mask tokens, and the loss is the mean squared error on the masked patches'
// normalised pixels. The encoder is the MIM teacher hybrid distillation uses.
#pragma once

#include <string>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "model/vit.h"
#include "train/trainer.h"

namespace hd::train {

struct MaeConfig {
  double mask_ratio = 0.75;   // fraction of patches hidden from the encoder
  int64_t decoder_dim = 128;
  int64_t decoder_depth = 2;
  int64_t decoder_heads = 4;
  bool norm_pix_loss = true;  // targets normalised per patch (mean 0, variance 1)
};

// [B,C,H,W] -> [B, P, p*p*C], patches in row-major grid order, pixels as (row, col, channel).
torch::Tensor patchify(const torch::Tensor& images, int64_t patch);
// Fixed 2-D sine-cosine positional embedding [1, prefix + g*g, dim] (prefix rows are zero).
torch::Tensor sincos_pos_embed(int64_t dim, int64_t grid, int64_t prefix);

struct MaeOutput {
  torch::Tensor loss;  // scalar
  torch::Tensor pred;  // [B,P,p*p*C] reconstruction (of the normalised target if norm_pix_loss)
  torch::Tensor mask;  // [B,P] float, 1 = hidden from the encoder
};

class MaskedAutoencoderImpl : public torch::nn::Module {
 public:
  MaskedAutoencoderImpl(model::VisionTransformer encoder, MaeConfig cfg);
  // `keep` [B,K] visible patch indices; random (global torch RNG) when undefined.
  MaeOutput forward(const torch::Tensor& images, torch::Tensor keep = {});
  // Number of visible patches per image.
  int64_t num_visible() const;

  model::VisionTransformer encoder{nullptr};
  torch::nn::Linear decoder_embed{nullptr}, decoder_pred{nullptr};
  torch::Tensor mask_token, decoder_pos_embed;  // decoder_pos_embed: fixed buffer
  torch::nn::ModuleList decoder_blocks{nullptr};
  model::LayerNorm decoder_norm{nullptr};
  const MaeConfig& config() const { return cfg_; }

 private:
  MaeConfig cfg_;
};
TORCH_MODULE(MaskedAutoencoder);

class MaeTask : public Task {
 public:
  explicit MaeTask(MaskedAutoencoder mae) : mae_(std::move(mae)) {}
  torch::nn::Module& module() override { return *mae_; }
  // Encoder parameters as the ViT decides; decoder: no decay on 1-D tensors and the mask token.
  bool decays(const std::string& name, const torch::Tensor& p) const override;
  torch::Tensor loss(const data::Batch& batch, NamedTensors& terms) override;
  // run_dir/model.safetensors: the encoder alone (timm layout), the MIM teacher.
  void save_final(const std::string& run_dir) override;
  MaskedAutoencoder& mae() { return mae_; }

 private:
  MaskedAutoencoder mae_;
};

}  // namespace hd::train
