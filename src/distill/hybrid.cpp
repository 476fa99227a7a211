#include "distill/hybrid.h"

#include <cmath>

#include <torch/torch.h>

#include "distill/masking.h"
#include "distill/teacher_cache.h"
#include "model/checkpoint.h"
#include "model/interop.h"
#include "util/error.h"

namespace hd::distill {

namespace F = torch::nn::functional;

std::vector<Teacher> load_teachers(const Recipe& recipe, const c10::Device& device, torch::ScalarType dtype) {
  std::vector<Teacher> out;
  for (const auto& spec : recipe.teachers) {
    Teacher t;
    t.spec = spec;
    // Heads and extra keys (e.g. an MAE decoder) are tolerated in teacher files; every encoder
    // tensor must be present and of the right shape.
    model::LoadReport report;
    t.model = model::load_model(spec.checkpoint, spec.arch, /*strict=*/false, &report);
    if (!report.missing.empty())
      throw Error(spec.checkpoint + ": teacher '" + spec.name + "' lacks tensor '" + report.missing.front() + "'" +
                  (report.missing.size() > 1 ? " and " + std::to_string(report.missing.size() - 1) + " more" : ""));
    if (spec.img_size > 0 && spec.img_size != t.model->config().img_size) {
      // The teacher at the recipe's input size (e.g. CLIP-L/14 at 196 px, a 14x14 grid): the
      // same weights, pos_embed resampled to the new grid (bicubic, as timm).
      auto cfg = t.model->config();
      cfg.img_size = spec.img_size;
      model::VisionTransformer resized(cfg);
      auto state = model::state_dict(*t.model);
      for (auto& [k, v] : state)
        if (k == "pos_embed") v = model::resample_pos_embed(v, cfg.grid_size(), cfg.grid_size(), cfg.num_prefix_tokens());
      model::load_state(*resized, state, /*strict=*/true, spec.checkpoint);
      t.model = resized;
    }
    t.model->eval();
    for (auto& p : t.model->parameters()) p.set_requires_grad(false);
    t.model->to(device, dtype);
    t.dtype = dtype;
    out.push_back(std::move(t));
  }
  return out;
}

torch::Tensor smooth_l1(const torch::Tensor& pred, const torch::Tensor& target, double beta) {
  return torch::smooth_l1_loss(pred, target, at::Reduction::Mean, beta);
}

torch::Tensor gather_tokens(const torch::Tensor& x, const torch::Tensor& keep, int64_t prefix, bool include_prefix) {
  const int64_t B = x.size(0), D = x.size(2);
  auto idx = keep + prefix;
  auto patches = x.gather(1, idx.unsqueeze(-1).expand({B, idx.size(1), D}));
  if (!include_prefix || prefix == 0) return patches;
  return torch::cat({x.slice(1, 0, prefix), patches}, 1);
}

torch::Tensor gather_relation(const torch::Tensor& r, const torch::Tensor& keep, int64_t prefix, bool include_prefix) {
  const int64_t B = r.size(0), H = r.size(1), N = r.size(2);
  auto idx = keep + prefix;
  if (include_prefix && prefix > 0) {
    auto pre = torch::arange(prefix, keep.options()).unsqueeze(0).expand({B, prefix});
    idx = torch::cat({pre, idx}, 1);
  }
  const int64_t n = idx.size(1);
  auto rows = r.gather(2, idx.view({B, 1, n, 1}).expand({B, H, n, N}));  // kept rows
  return rows.gather(3, idx.view({B, 1, 1, n}).expand({B, H, n, n}));    // and kept columns
}

DecoderImpl::DecoderImpl(const model::ViTConfig& sc, int64_t out_dim, const TargetSpec& spec) {
  if (spec.decoder == DecoderKind::Attention) {
    blocks = register_module("blocks", torch::nn::ModuleList());
    for (int64_t i = 0; i < spec.decoder_depth; ++i) blocks->push_back(model::Block(sc, 0.0));
    norm = register_module("norm", model::LayerNorm(sc.embed_dim, sc.ln_eps));
  }
  if (spec.decoder != DecoderKind::None || out_dim != sc.embed_dim)
    proj = register_module("proj", torch::nn::Linear(sc.embed_dim, out_dim));
  // timm-style init: trunc-normal 0.02 weights, zero biases, unit LayerNorm.
  torch::NoGradGuard ng;
  for (auto& m : modules(false)) {
    if (auto* lin = m->as<torch::nn::Linear>()) {
      model::trunc_normal_(lin->weight, 0.02);
      lin->bias.zero_();
    }
  }
}

torch::Tensor DecoderImpl::forward(torch::Tensor x) {
  if (blocks) {
    for (const auto& b : *blocks) x = b->as<model::BlockImpl>()->forward(x);
    x = norm(x);
  }
  // aten::linear: one addmm with the bias inside the GEMM (LibTorch 1.13's Linear::forward
  // runs matmul + a separate bias add on 3-D inputs).
  return proj ? torch::linear(x, proj->weight, proj->bias) : x;
}

HybridDistillerImpl::HybridDistillerImpl(const Recipe& recipe, model::VisionTransformer s, std::vector<Teacher> teachers)
    : recipe_(recipe), teachers_(std::move(teachers)) {
  student = register_module("student", s);
  const auto& sc = student->config();
  teacher_taps_.resize(teachers_.size());
  student_taps_.features = false;
  for (size_t ti = 0; ti < teachers_.size(); ++ti) {
    auto& taps = teacher_taps_[ti];
    taps.features = false;
    const auto& tc = teachers_[ti].model->config();
    for (const auto& tg : teachers_[ti].spec.targets) {
      bool token_level = tg.kind != TargetKind::Relation;
      if (tg.kind == TargetKind::Features) {
        taps.features = true;
        student_taps_.features = true;
      }
      for (size_t k = 0; k < std::max<size_t>(1, tg.layers.size()); ++k) {
        if (tg.kind == TargetKind::Block) {
          taps.block.insert(tg.layers[k]);
          student_taps_.block.insert(tg.student_layers[k]);
        } else if (tg.kind == TargetKind::Msa) {
          taps.msa.insert(tg.layers[k]);
          student_taps_.msa.insert(tg.student_layers[k]);
        } else if (tg.kind == TargetKind::Relation) {
          taps.relation.insert(tg.layers[k]);
          student_taps_.relation.insert(tg.student_layers[k]);
        }
        if (token_level) {
          Decoder dec(sc, tc.embed_dim, tg);
          if (!dec->empty()) {
            auto key = term_name(teachers_[ti], tg, k);
            std::string reg = "dec_" + key;
            std::replace(reg.begin(), reg.end(), '.', '_');
            decoders.emplace(key, register_module(reg, dec));
          }
        }
      }
    }
    if (recipe_.mask.strategy == MaskStrategy::Progressive || recipe_.mask.strategy == MaskStrategy::Direct) {
      if (teachers_[ti].spec.name == recipe_.mask.teacher) {
        mask_teacher_ = ti;
        for (auto l : recipe_.mask.layers) {
          if (recipe_.mask.source == MaskSource::BlockInput) taps.block_input.insert(l);
          else taps.block.insert(l);
        }
      }
    }
  }
  if (recipe_.mask.strategy == MaskStrategy::MaskTokens) {
    mask_token = register_parameter("mask_token", torch::zeros({1, 1, sc.embed_dim}));
    torch::NoGradGuard ng;
    model::trunc_normal_(mask_token, 0.02);
  }
}

std::string HybridDistillerImpl::term_name(const Teacher& t, const TargetSpec& s, size_t k) const {
  return t.spec.name + "." + to_string(s.kind) + "." +
         (s.kind == TargetKind::Features ? std::string("last") : std::to_string(s.layers[k]));
}

bool HybridDistillerImpl::decays(const std::string& name, const torch::Tensor& p) const {
  const std::string prefix = "student.";
  if (name.rfind(prefix, 0) == 0) return student->decays(name.substr(prefix.size()), p);
  return p.dim() > 1 && name != "mask_token";
}

void HybridDistillerImpl::set_teacher_cache(std::shared_ptr<TeacherCache> cache) {
  if (cache)
    for (const auto& t : teachers_) cache->add_teacher(t);
  cache_ = std::move(cache);
}

torch::Tensor HybridDistillerImpl::teacher_input(size_t ti, const torch::Tensor& images) const {
  const auto& sc = student->config();
  const auto& spec = teachers_[ti].spec;
  const auto& tc = teachers_[ti].model->config();
  const auto& tm = spec.mean.empty() ? tc.mean : spec.mean;
  const auto& ts = spec.std.empty() ? tc.std : spec.std;
  auto x = images;
  if (tm != sc.mean || ts != sc.std) {
    auto opts = images.options();
    auto v = [&](const std::vector<double>& m) {
      return torch::tensor(std::vector<float>(m.begin(), m.end()), opts.dtype(torch::kFloat)).view({1, -1, 1, 1});
    };
    // Undo the student's normalisation, apply the teacher's.
    x = ((images * v(sc.std) + v(sc.mean)) - v(tm)) / v(ts);
  }
  // Each teacher at its own resolution (same patch grid as the student, so tokens correspond).
  // Bilinear commutes with the per-channel affine normalisation, so the order does not matter.
  if (tc.img_size != x.size(-1) || tc.img_size != x.size(-2))
    x = F::interpolate(x, F::InterpolateFuncOptions()
                              .size(std::vector<int64_t>{tc.img_size, tc.img_size})
                              .mode(torch::kBilinear)
                              .align_corners(false));
  return x;
}

torch::Tensor HybridDistillerImpl::compute_mask(const std::vector<torch::Tensor>& teacher_inputs,
                                                std::vector<model::Taps>& teacher_taps, int64_t B,
                                                c10::optional<at::Generator> gen) {
  const auto& sc = student->config();
  const int64_t P = sc.num_patches();
  auto device = teacher_inputs.front().device();
  const auto& m = recipe_.mask;
  switch (m.strategy) {
    case MaskStrategy::None:
    case MaskStrategy::MaskTokens: return keep_all(B, P, device);
    case MaskStrategy::Random: return random_keep(B, P, kept_after_step(P, m.drop_ratio), device, gen);
    case MaskStrategy::Direct:
    case MaskStrategy::Progressive: {
      // Eq. 4: M^0 = all ones; at each layer i in I, among the still-kept tokens of that layer's
      // input x^i, drop the K% most similar to their average token.
      const auto& taps = teacher_taps[mask_teacher_];
      const int64_t prefix = teachers_[mask_teacher_].model->config().num_prefix_tokens();
      auto keep = keep_all(B, P, device);
      for (auto l : m.layers) {
        const auto& x = m.source == MaskSource::BlockInput ? taps.block_input.at(l) : taps.block.at(l);
        keep = redundant_step(x.slice(1, prefix).to(torch::kFloat), keep, m.drop_ratio);
      }
      return keep;
    }
  }
  return keep_all(B, P, device);
}

DistillOutput HybridDistillerImpl::forward(const torch::Tensor& images, bool keep_tensors,
                                           c10::optional<at::Generator> gen) {
  const int64_t B = images.size(0);
  DistillOutput out;
  // Teachers: frozen, full image, only the layers the recipe needs.
  std::vector<torch::Tensor> inputs;
  std::vector<model::Taps> ttaps;
  {
    torch::NoGradGuard ng;
    for (size_t ti = 0; ti < teachers_.size(); ++ti) {
      // Each teacher sees its input in its own dtype (float32, or bf16 in bf16 runs).
      inputs.push_back(teacher_input(ti, images).to(teachers_[ti].dtype));
      ttaps.push_back(cache_ ? cache_->taps(ti, inputs.back(), teacher_taps_[ti])
                             : teachers_[ti].model->forward_taps(inputs.back(), teacher_taps_[ti]));
    }
    if (cache_) cache_->end_batch();
    out.keep = compute_mask(inputs, ttaps, B, gen);
  }
  const auto& sc = student->config();
  const int64_t sprefix = sc.num_prefix_tokens();
  model::Taps staps;
  const bool simmim = recipe_.mask.strategy == MaskStrategy::MaskTokens;
  if (simmim) {
    // Every position, a random share replaced by the mask token; token targets at those only.
    const int64_t P = sc.num_patches();
    const int64_t M = P - kept_after_step(P, recipe_.mask.drop_ratio);
    out.masked = random_keep(B, P, std::max<int64_t>(1, M), images.device(), gen);
    auto flags = torch::zeros({B, P}, torch::dtype(torch::kBool).device(images.device()));
    flags.scatter_(1, out.masked, true);
    staps = student->forward_tokens(student->embed_masked(images, flags, mask_token), student_taps_);
  } else {
    // Student: kept patch tokens plus CLS.
    staps = student->forward_taps(images, student_taps_, out.keep);
  }

  torch::Tensor total;
  for (size_t ti = 0; ti < teachers_.size(); ++ti) {
    const auto& tc = teachers_[ti].model->config();
    const int64_t tprefix = tc.num_prefix_tokens();
    for (const auto& tg : teachers_[ti].spec.targets) {
      // CLS participates when asked for and when both models have one.
      const bool cls = tg.include_cls && tprefix > 0 && sprefix > 0;
      TargetTerm tt;
      tt.weight = tg.weight;
      for (size_t k = 0; k < std::max<size_t>(1, tg.layers.size()); ++k) {
        auto key = term_name(teachers_[ti], tg, k);
        torch::Tensor target, pred;
        if (tg.kind == TargetKind::Relation) {
          auto tl = tg.layers[k], sl = tg.student_layers[k];
          target = gather_relation(ttaps[ti].relation.at(tl), out.keep, tprefix, cls);
          pred = staps.relation.at(sl);
          if (!cls && sprefix > 0) pred = pred.slice(2, sprefix).slice(3, sprefix);
          if (!tg.relation_scaled) {
            // Eq. 2's R = Q·Kᵀ: undo the head_dim^-0.5 of the tapped softmax input.
            target = target * std::sqrt(static_cast<double>(tc.head_dim()));
            pred = pred * std::sqrt(static_cast<double>(sc.head_dim()));
          }
          if (tg.head_mapping == HeadMapping::Average) {
            target = target.mean(1, true);
            pred = pred.mean(1, true);
          }
        } else {
          torch::Tensor t, s;
          if (tg.kind == TargetKind::Features) {
            t = ttaps[ti].features;
            s = staps.features;
          } else if (tg.kind == TargetKind::Block) {
            t = ttaps[ti].block.at(tg.layers[k]);
            s = staps.block.at(tg.student_layers[k]);
          } else {
            t = ttaps[ti].msa.at(tg.layers[k]);
            s = staps.msa.at(tg.student_layers[k]);
          }
          // The decoder sees the whole student sequence (an attention decoder needs context).
          auto dec = decoders.find(key);
          if (dec != decoders.end()) s = dec->second(s);
          if (simmim) {
            // Reconstruct the masked positions only (student tokens are in patch order).
            target = gather_tokens(t, out.masked, tprefix, false);
            pred = gather_tokens(s, out.masked, sprefix, false);
          } else {
            target = gather_tokens(t, out.keep, tprefix, cls);
            pred = cls || sprefix == 0 ? s : s.slice(1, sprefix);
          }
          // Whitened in float32 at least (bf16 teachers in bf16 runs; float64 stays float64).
          if (tg.norm == TargetNorm::LayerNorm) {
            if (target.scalar_type() != torch::kDouble) target = target.to(torch::kFloat);
            target = F::layer_norm(target, F::LayerNormFuncOptions({target.size(-1)}).eps(1e-6));
          }
        }
        // The loss in float32 at least (bf16 autocast leaves predictions, and bf16 teachers
        // their targets, in bfloat16); float64 stays float64.
        const auto lt = pred.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
        target = target.detach().to(lt);
        pred = pred.to(lt);
        auto term = smooth_l1(pred, target, recipe_.smooth_l1_beta);
        out.terms.emplace_back(key, term);
        tt.value = tt.value.defined() ? tt.value + term : term;
        tt.layers.push_back(key);
        if (keep_tensors) {
          out.targets.emplace_back(key, target);
          out.preds.emplace_back(key, pred);
        }
      }
      // Eq. 3: the layers of one target are one concatenated target under one mean-reduced D,
      // i.e. the mean of the per-layer terms (every layer's tensor has the same size).
      if (tt.layers.size() > 1) {
        if (tg.reduce == TargetReduce::Mean) tt.value = tt.value / static_cast<double>(tt.layers.size());
        tt.name = teachers_[ti].spec.name + "." + to_string(tg.kind) + "." + to_string(tg.reduce);
      } else {
        tt.name = tt.layers.front();
      }
      auto weighted = tt.value * tg.weight;
      total = total.defined() ? total + weighted : weighted;
      out.target_terms.push_back(std::move(tt));
    }
  }
  out.loss = total;
  return out;
}

}  // namespace hd::distill
