#include "model/vit.h"

#include <cmath>

#include <torch/torch.h>
#include <torch/version.h>

#include "util/error.h"

namespace hd::model {

namespace F = torch::nn::functional;

LayerNormImpl::LayerNormImpl(int64_t dim, double eps) : dim_(dim), eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
  bias = register_parameter("bias", torch::zeros({dim}));
}

torch::Tensor LayerNormImpl::forward(const torch::Tensor& x) {
  const auto dt = x.scalar_type();
  if (x.is_cpu() && (dt == torch::kBFloat16 || dt == torch::kHalf))
    return torch::layer_norm(x.to(torch::kFloat), {dim_}, weight.to(torch::kFloat), bias.to(torch::kFloat), eps_)
        .to(dt);
  return torch::layer_norm(x, {dim_}, weight, bias, eps_);
}

namespace {
// Linear layers go through aten::linear, as Python's nn.Linear does. The C++ frontend's
// torch::nn::Linear::forward (F::linear in LibTorch 1.13) computes a [B,N,D] input as
// matmul + a separate in-place bias add (`output += bias`), where aten::linear folds the batch
// into one addmm with the bias inside the GEMM: one pass over the output and one autograd node
// less per layer. Same parameters, same result up to float rounding.
torch::Tensor linear(const torch::nn::Linear& l, const torch::Tensor& x) {
  return torch::linear(x, l->weight, l->bias);
}
}  // namespace

void trunc_normal_(torch::Tensor t, double std, double a, double b) {
  // Inverse-CDF sampling, as torch.nn.init.trunc_normal_ (mean 0).
  torch::NoGradGuard guard;
  auto norm_cdf = [](double x) { return (1.0 + std::erf(x / std::sqrt(2.0))) / 2.0; };
  double l = norm_cdf(a / std), u = norm_cdf(b / std);
  t.uniform_(2 * l - 1, 2 * u - 1);
  t.erfinv_();
  t.mul_(std * std::sqrt(2.0));
  t.clamp_(a, b);
}

// ---------------------------------------------------------------------------------------------
PatchEmbedImpl::PatchEmbedImpl(const ViTConfig& cfg) : img_size_(cfg.img_size) {
  proj = register_module(
      "proj", torch::nn::Conv2d(torch::nn::Conv2dOptions(cfg.in_chans, cfg.embed_dim, cfg.patch_size)
                                    .stride(cfg.patch_size)
                                    .bias(cfg.patch_bias)));
}

torch::Tensor PatchEmbedImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "images must be [B,C,H,W], got ", x.sizes());
  TORCH_CHECK(x.size(1) == proj->options.in_channels(), "model expects ",
              proj->options.in_channels(), " input channels, got ", x.size(1));
  TORCH_CHECK(x.size(2) == img_size_ && x.size(3) == img_size_, "model expects ", img_size_, "x",
              img_size_, " images, got ", x.size(2), "x", x.size(3));
  return proj(x).flatten(2).transpose(1, 2);  // [B,D,g,g] -> [B,P,D], row-major grid order
}

// ---------------------------------------------------------------------------------------------
MlpImpl::MlpImpl(const ViTConfig& cfg) : act_(cfg.act) {
  fc1 = register_module("fc1", torch::nn::Linear(cfg.embed_dim, cfg.mlp_hidden()));
  fc2 = register_module("fc2", torch::nn::Linear(cfg.mlp_hidden(), cfg.embed_dim));
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x) {
  auto h = linear(fc1, x);
  h = act_ == Activation::GELU ? torch::gelu(h) : h * torch::sigmoid(1.702 * h);
  return linear(fc2, h);
}

// ---------------------------------------------------------------------------------------------
AttentionImpl::AttentionImpl(const ViTConfig& cfg)
    : num_heads_(cfg.num_heads),
      head_dim_(cfg.head_dim()),
      scale_(1.0 / std::sqrt(static_cast<double>(cfg.head_dim()))) {
  qkv = register_module(
      "qkv", torch::nn::Linear(torch::nn::LinearOptions(cfg.embed_dim, 3 * cfg.embed_dim).bias(cfg.qkv_bias)));
  proj = register_module("proj", torch::nn::Linear(cfg.embed_dim, cfg.embed_dim));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, torch::Tensor* relation, torch::Tensor* attn) {
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
  // Fused qkv rows are [Q | K | V], each split into heads of head_dim rows (timm layout).
  auto qkv_t = linear(qkv, x).reshape({B, N, 3, num_heads_, head_dim_}).permute({2, 0, 3, 1, 4});
  // unbind, not three selects: autograd then stacks the three gradients into one buffer instead
  // of materialising a zero-filled [3,B,H,N,hd] gradient per select and summing them.
  auto qkv_u = qkv_t.unbind(0);
  const auto &q = qkv_u[0], &k = qkv_u[1], &v = qkv_u[2];  // [B,H,N,hd]
  torch::Tensor out;
#if TORCH_VERSION_MAJOR >= 2
  if (!relation && !attn) {
    // Fused kernel (flash / memory-efficient on CUDA) when no tap needs the attention matrix.
    out = at::scaled_dot_product_attention(q, k, v);
  } else
#endif
  {
    auto rel = torch::matmul(q * scale_, k.transpose(-2, -1));  // softmax input, Eq. 2
    auto p = torch::softmax(rel, -1);
    if (relation) *relation = rel;
    if (attn) *attn = p;
    out = torch::matmul(p, v);
  }
  out = out.transpose(1, 2).reshape({B, N, C});
  return linear(proj, out);
}

// ---------------------------------------------------------------------------------------------
BlockImpl::BlockImpl(const ViTConfig& cfg, double drop_path) : drop_path_(drop_path) {
  auto ln = [&] { return LayerNorm(cfg.embed_dim, cfg.ln_eps); };
  norm1 = register_module("norm1", ln());
  attn = register_module("attn", Attention(cfg));
  norm2 = register_module("norm2", ln());
  mlp = register_module("mlp", Mlp(cfg));
}

torch::Tensor BlockImpl::drop_path(const torch::Tensor& x) {
  // Stochastic depth per sample: drop the residual branch with probability p, rescale by 1/(1-p).
  if (!is_training() || drop_path_ <= 0.0) return x;
  double keep = 1.0 - drop_path_;
  auto mask = torch::empty({x.size(0), 1, 1}, x.options()).bernoulli_(keep).div_(keep);
  return x * mask;
}

torch::Tensor BlockImpl::forward(const torch::Tensor& x, torch::Tensor* msa, torch::Tensor* relation,
                                 torch::Tensor* attn_p) {
  auto a = attn(norm1(x), relation, attn_p);
  if (msa) *msa = a;
  auto h = x + drop_path(a);
  return h + drop_path(mlp(norm2(h)));
}

// ---------------------------------------------------------------------------------------------
VisionTransformerImpl::VisionTransformerImpl(ViTConfig cfg) : cfg_(std::move(cfg)) {
  cfg_.validate();
  const int64_t D = cfg_.embed_dim;
  patch_embed = register_module("patch_embed", PatchEmbed(cfg_));
  if (cfg_.class_token) cls_token = register_parameter("cls_token", torch::zeros({1, 1, D}));
  pos_embed = register_parameter("pos_embed", torch::zeros({1, cfg_.num_tokens(), D}));
  auto ln = [&] { return LayerNorm(D, cfg_.ln_eps); };
  if (cfg_.norm_pre) norm_pre = register_module("norm_pre", ln());
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < cfg_.depth; ++i) {
    // Stochastic depth increases linearly from 0 to drop_path over the blocks (timm).
    double dp = cfg_.depth > 1 ? cfg_.drop_path * static_cast<double>(i) / (cfg_.depth - 1) : cfg_.drop_path;
    blocks->push_back(Block(cfg_, dp));
  }
  if (cfg_.fc_norm) fc_norm = register_module("fc_norm", ln());
  else norm = register_module("norm", ln());
  if (cfg_.num_classes > 0)
    head = register_module("head", torch::nn::Linear(torch::nn::LinearOptions(D, cfg_.num_classes).bias(cfg_.head_bias)));
  init_weights();
}

void VisionTransformerImpl::init_weights() {
  torch::NoGradGuard guard;
  trunc_normal_(pos_embed, 0.02);
  if (cls_token.defined()) cls_token.normal_(0.0, 1e-6);
  // patch_embed.proj keeps LibTorch's default Conv2d init, as timm leaves it to PyTorch's.
  for (auto& m : modules(/*include_self=*/false)) {
    if (auto* lin = m->as<torch::nn::Linear>()) {
      trunc_normal_(lin->weight, 0.02);
      if (lin->bias.defined()) lin->bias.zero_();
    } else if (auto* ln = m->as<LayerNorm>()) {
      ln->weight.fill_(1.0);
      ln->bias.zero_();
    }
  }
  if (head) {
    head->weight.zero_();
    if (head->bias.defined()) head->bias.zero_();
  }
}

void VisionTransformerImpl::reset_classifier(int64_t num_classes) {
  TORCH_CHECK(num_classes >= 0, "num_classes must be >= 0");
  cfg_.num_classes = num_classes;
  if (head) {
    unregister_module("head");
    head = nullptr;
  }
  if (num_classes > 0) {
    head = register_module(
        "head", torch::nn::Linear(torch::nn::LinearOptions(cfg_.embed_dim, num_classes).bias(cfg_.head_bias)));
    torch::NoGradGuard g;
    head->weight.zero_();
    if (head->bias.defined()) head->bias.zero_();
  }
}

torch::Tensor VisionTransformerImpl::embed(const torch::Tensor& images, const torch::Tensor& keep) {
  auto x = patch_embed(images);  // [B,P,D]
  const int64_t B = x.size(0), D = x.size(2);
  const int64_t prefix = cfg_.num_prefix_tokens();
  auto pos_patch = pos_embed.slice(1, prefix);  // [1,P,D]
  if (keep.defined()) {
    TORCH_CHECK(keep.dim() == 2 && keep.size(0) == B, "keep indices must be [B,K] with B = ", B,
                ", got ", keep.sizes());
    TORCH_CHECK(keep.scalar_type() == torch::kLong, "keep indices must be int64");
    auto idx = keep.unsqueeze(-1).expand({B, keep.size(1), D});
    x = x.gather(1, idx) + pos_patch.expand({B, -1, -1}).gather(1, idx);
  } else {
    x = x + pos_patch;
  }
  if (cfg_.class_token) {
    auto cls = (cls_token + pos_embed.slice(1, 0, 1)).expand({B, -1, -1});
    x = torch::cat({cls, x}, 1);
  }
  if (norm_pre) x = norm_pre(x);
  return x;
}

torch::Tensor VisionTransformerImpl::embed_masked(const torch::Tensor& images, const torch::Tensor& mask,
                                                 const torch::Tensor& mask_token) {
  auto x = patch_embed(images);  // [B,P,D]
  TORCH_CHECK(mask.dim() == 2 && mask.size(0) == x.size(0) && mask.size(1) == x.size(1),
              "token mask must be [B,P] = [", x.size(0), ",", x.size(1), "], got ", mask.sizes());
  x = torch::where(mask.unsqueeze(-1), mask_token.to(x.dtype()).expand_as(x), x);
  x = x + pos_embed.slice(1, cfg_.num_prefix_tokens());
  if (cfg_.class_token) {
    auto cls = (cls_token + pos_embed.slice(1, 0, 1)).expand({x.size(0), -1, -1});
    x = torch::cat({cls, x}, 1);
  }
  if (norm_pre) x = norm_pre(x);
  return x;
}

torch::Tensor VisionTransformerImpl::final_norm(const torch::Tensor& x) { return norm ? norm(x) : x; }

torch::Tensor VisionTransformerImpl::forward_features(const torch::Tensor& images, const torch::Tensor& keep) {
  auto x = embed(images, keep);
  for (const auto& b : *blocks) x = b->as<BlockImpl>()->forward(x);
  return final_norm(x);
}

torch::Tensor VisionTransformerImpl::forward_head(const torch::Tensor& features, bool pre_logits) {
  torch::Tensor x = cfg_.pool == Pooling::Token
                        ? features.select(1, 0)
                        : features.slice(1, cfg_.num_prefix_tokens()).mean(1);
  if (fc_norm) x = fc_norm(x);
  if (pre_logits || !head) return x;
  return linear(head, x);
}

torch::Tensor VisionTransformerImpl::forward(const torch::Tensor& images) {
  return forward_head(forward_features(images));
}

Taps VisionTransformerImpl::forward_taps(const torch::Tensor& images, const TapSpec& spec, const torch::Tensor& keep) {
  return forward_tokens(embed(images, keep), spec);
}

Taps VisionTransformerImpl::forward_tokens(torch::Tensor x, const TapSpec& spec) {
  int64_t last = spec.stop_after;
  if (last < 0) {
    if (spec.features) {
      last = cfg_.depth - 1;
    } else {
      // Block i's input is there before block i runs.
      last = spec.block_input.empty() ? -1 : *spec.block_input.rbegin() - 1;
      for (const auto* s : {&spec.block, &spec.msa, &spec.relation, &spec.attn})
        if (!s->empty()) last = std::max(last, *s->rbegin());
    }
  }
  for (const auto* s : {&spec.block_input, &spec.block, &spec.msa, &spec.relation, &spec.attn})
    for (int64_t l : *s)
      if (l < 0 || l >= cfg_.depth)
        throw Error("tapped layer " + std::to_string(l) + " is out of range for a " +
                    std::to_string(cfg_.depth) + "-block model '" + cfg_.name + "'");
  if (last >= cfg_.depth) throw Error("stop_after " + std::to_string(last) + " is beyond the last block");
  if (spec.features && last != cfg_.depth - 1)
    throw Error("features need every block; stop_after must be -1 or the last block");

  Taps out;
  for (int64_t i = 0; i <= last; ++i) {
    if (spec.block_input.count(i)) out.block_input[i] = x;
    torch::Tensor msa, rel, attn;
    x = blocks[i]->as<BlockImpl>()->forward(x, spec.msa.count(i) ? &msa : nullptr,
                                            spec.relation.count(i) ? &rel : nullptr,
                                            spec.attn.count(i) ? &attn : nullptr);
    if (msa.defined()) out.msa[i] = msa;
    if (rel.defined()) out.relation[i] = rel;
    if (attn.defined()) out.attn[i] = attn;
    if (spec.block.count(i)) out.block[i] = x;
  }
  if (spec.block_input.count(last + 1)) out.block_input[last + 1] = x;
  if (spec.features) out.features = final_norm(x);
  return out;
}

std::set<std::string> VisionTransformerImpl::no_weight_decay() const { return {"pos_embed", "cls_token"}; }

bool VisionTransformerImpl::decays(const std::string& name, const torch::Tensor& param) const {
  return param.dim() > 1 && no_weight_decay().count(name) == 0;
}

int64_t VisionTransformerImpl::num_params() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

}  // namespace hd::model
