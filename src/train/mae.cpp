#include "train/mae.h"

#include <cmath>
#include <filesystem>

#include <torch/torch.h>

#include "model/checkpoint.h"
#include "util/error.h"

namespace hd::train {

torch::Tensor patchify(const torch::Tensor& images, int64_t p) {
  const int64_t B = images.size(0), C = images.size(1), H = images.size(2), W = images.size(3);
  TORCH_CHECK(H % p == 0 && W % p == 0, "patchify: image size not divisible by the patch size");
  const int64_t h = H / p, w = W / p;
  return images.reshape({B, C, h, p, w, p}).permute({0, 2, 4, 3, 5, 1}).reshape({B, h * w, p * p * C});
}

torch::Tensor sincos_pos_embed(int64_t dim, int64_t grid, int64_t prefix) {
  TORCH_CHECK(dim % 4 == 0, "sincos_pos_embed: dim must be a multiple of 4");
  const int64_t q = dim / 4;
  auto omega = torch::pow(10000.0, -torch::arange(q, torch::kDouble) / static_cast<double>(q));  // [q]
  auto coords = torch::arange(grid, torch::kDouble);
  auto row = coords.repeat_interleave(grid), col = coords.repeat({grid});  // row-major cells
  auto enc = [&](const torch::Tensor& pos) {
    auto a = pos.unsqueeze(1) * omega.unsqueeze(0);
    return torch::cat({a.sin(), a.cos()}, 1);
  };
  auto emb = torch::cat({enc(row), enc(col)}, 1).to(torch::kFloat);  // [g*g, dim]
  return torch::cat({torch::zeros({prefix, dim}), emb}, 0).unsqueeze(0);
}

MaskedAutoencoderImpl::MaskedAutoencoderImpl(model::VisionTransformer enc, MaeConfig cfg) : cfg_(cfg) {
  const auto& ec = enc->config();
  if (!(cfg.mask_ratio > 0 && cfg.mask_ratio < 1)) throw Error("MAE: mask ratio must be in (0, 1)");
  if (cfg.decoder_dim <= 0 || cfg.decoder_depth < 0 || cfg.decoder_heads <= 0 || cfg.decoder_dim % cfg.decoder_heads)
    throw Error("MAE: decoder width must be positive and divisible by its head count");
  if (cfg.decoder_dim % 4) throw Error("MAE: decoder width must be a multiple of 4 (sine-cosine positions)");
  encoder = register_module("encoder", enc);
  const int64_t prefix = ec.class_token ? 1 : 0;
  decoder_embed = register_module("decoder_embed", torch::nn::Linear(ec.embed_dim, cfg.decoder_dim));
  mask_token = register_parameter("mask_token", torch::zeros({1, 1, cfg.decoder_dim}));
  decoder_pos_embed = register_buffer("decoder_pos_embed",
                                      sincos_pos_embed(cfg.decoder_dim, ec.img_size / ec.patch_size, prefix));
  model::ViTConfig dc = ec;
  dc.embed_dim = cfg.decoder_dim;
  dc.num_heads = cfg.decoder_heads;
  dc.depth = cfg.decoder_depth;
  dc.act = model::Activation::GELU;
  dc.ln_eps = 1e-6;
  decoder_blocks = register_module("decoder_blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < cfg.decoder_depth; ++i) decoder_blocks->push_back(model::Block(dc, 0.0));
  decoder_norm = register_module("decoder_norm",
                                 model::LayerNorm(cfg.decoder_dim, 1e-6));
  decoder_pred = register_module("decoder_pred",
                                 torch::nn::Linear(cfg.decoder_dim, ec.patch_size * ec.patch_size * ec.in_chans));
  // MAE's init for the new parts: xavier-uniform linears, zero biases, normal(0.02) mask token.
  torch::NoGradGuard ng;
  for (auto& item : named_modules("", /*include_self=*/false)) {
    if (item.key().rfind("encoder", 0) == 0) continue;
    if (auto* l = item.value()->as<torch::nn::Linear>()) {
      torch::nn::init::xavier_uniform_(l->weight);
      if (l->bias.defined()) l->bias.zero_();
    }
  }
  mask_token.normal_(0, 0.02);
}

int64_t MaskedAutoencoderImpl::num_visible() const {
  const int64_t P = encoder->config().num_patches();
  return std::max<int64_t>(1, static_cast<int64_t>(P * (1.0 - cfg_.mask_ratio)));
}

MaeOutput MaskedAutoencoderImpl::forward(const torch::Tensor& images, torch::Tensor keep) {
  const auto& ec = encoder->config();
  const int64_t B = images.size(0), P = ec.num_patches(), prefix = ec.class_token ? 1 : 0;
  if (!keep.defined()) {
    auto noise = torch::rand({B, P});
    keep = std::get<0>(std::get<1>(noise.sort(1)).slice(1, 0, num_visible()).sort(1)).to(images.device());
  }
  auto latent = encoder->forward_features(images, keep);  // [B, prefix+K, D]
  auto x = torch::linear(latent, decoder_embed->weight, decoder_embed->bias);
  const int64_t Dd = x.size(2);
  auto idx = keep.unsqueeze(-1).expand({B, keep.size(1), Dd});
  // Under bf16 autocast the projected tokens are bf16 while the mask token is an fp32 parameter:
  // scatter needs one dtype, and the decoder input takes the projection's.
  auto full = mask_token.to(x.scalar_type()).expand({B, P, Dd}).scatter(1, idx, x.slice(1, prefix));
  x = torch::cat({x.slice(1, 0, prefix), full}, 1) + decoder_pos_embed;
  for (auto& b : *decoder_blocks) x = b->as<model::BlockImpl>()->forward(x);
  x = decoder_norm(x);
  // The reconstruction loss in fp32 whatever the autocast dtype of the decoder.
  auto pred = torch::linear(x, decoder_pred->weight, decoder_pred->bias).slice(1, prefix).to(torch::kFloat);  // [B,P,p*p*C]

  auto target = patchify(images, ec.patch_size);
  if (cfg_.norm_pix_loss) {
    auto mean = target.mean(-1, true);
    auto var = target.var(-1, /*unbiased=*/true, /*keepdim=*/true);
    target = (target - mean) / (var + 1e-6).sqrt();
  }
  auto mask = torch::ones({B, P}, images.options()).scatter(1, keep, 0.0);
  auto per_patch = (pred - target).pow(2).mean(-1);
  MaeOutput out;
  out.loss = (per_patch * mask).sum() / mask.sum();
  out.pred = pred;
  out.mask = mask;
  return out;
}

bool MaeTask::decays(const std::string& name, const torch::Tensor& p) const {
  if (name.rfind("encoder.", 0) == 0) return mae_->encoder->decays(name.substr(8), p);
  return p.dim() > 1 && name != "mask_token";
}

torch::Tensor MaeTask::loss(const data::Batch& batch, NamedTensors& /*terms*/) {
  return mae_->forward(batch.images).loss;
}

void MaeTask::save_final(const std::string& run_dir) {
  const auto& c = mae_->config();
  model::save_model((std::filesystem::path(run_dir) / "model.safetensors").string(), mae_->encoder,
                    {{"hybrid_distill.pretrain", "mae"},
                     {"hybrid_distill.mae_mask_ratio", std::to_string(c.mask_ratio)},
                     {"hybrid_distill.mae_decoder", std::to_string(c.decoder_depth) + "x" + std::to_string(c.decoder_dim)}});
}

}  // namespace hd::train
