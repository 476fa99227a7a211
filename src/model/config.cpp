#include "model/config.h"

#include <functional>
#include <map>

#include <nlohmann/json.hpp>

#include "util/error.h"

namespace hd::model {

using nlohmann::json;

std::string to_string(Activation a) { return a == Activation::GELU ? "gelu" : "quick_gelu"; }
std::string to_string(Pooling p) { return p == Pooling::Token ? "token" : "mean"; }

void ViTConfig::validate() const {
  auto bad = [&](const std::string& what) { throw Error("model config '" + name + "': " + what); };
  if (img_size <= 0 || patch_size <= 0) bad("img_size and patch_size must be positive");
  if (img_size % patch_size != 0)
    bad("img_size " + std::to_string(img_size) + " is not divisible by patch_size " +
        std::to_string(patch_size));
  if (in_chans <= 0) bad("in_chans must be positive");
  if (embed_dim <= 0 || depth <= 0 || num_heads <= 0) bad("embed_dim, depth, num_heads must be positive");
  if (embed_dim % num_heads != 0)
    bad("embed_dim " + std::to_string(embed_dim) + " is not divisible by num_heads " +
        std::to_string(num_heads));
  if (mlp_ratio <= 0) bad("mlp_ratio must be positive");
  if (ln_eps <= 0) bad("ln_eps must be positive");
  if (drop_path < 0 || drop_path >= 1) bad("drop_path must be in [0, 1)");
  if (num_classes < 0) bad("num_classes must be >= 0");
  if (!class_token && pool == Pooling::Token) bad("pool 'token' needs class_token");
  if (static_cast<int64_t>(mean.size()) != in_chans || static_cast<int64_t>(std.size()) != in_chans)
    bad("mean/std must have in_chans = " + std::to_string(in_chans) + " values");
  for (double s : std)
    if (s <= 0) bad("std values must be positive");
}

std::string ViTConfig::to_json() const {
  json j = {{"name", name},
            {"img_size", img_size},
            {"patch_size", patch_size},
            {"in_chans", in_chans},
            {"embed_dim", embed_dim},
            {"depth", depth},
            {"num_heads", num_heads},
            {"mlp_ratio", mlp_ratio},
            {"qkv_bias", qkv_bias},
            {"patch_bias", patch_bias},
            {"ln_eps", ln_eps},
            {"act", to_string(act)},
            {"norm_pre", norm_pre},
            {"class_token", class_token},
            {"pool", to_string(pool)},
            {"fc_norm", fc_norm},
            {"drop_path", drop_path},
            {"num_classes", num_classes},
            {"head_bias", head_bias},
            {"mean", mean},
            {"std", std}};
  return j.dump();
}

ViTConfig ViTConfig::from_json(const std::string& text, const std::string& origin) {
  json j;
  try {
    j = json::parse(text);
  } catch (const std::exception& e) {
    throw Error(origin + ": model config is not valid JSON: " + e.what());
  }
  if (!j.is_object()) throw Error(origin + ": model config must be a JSON object");
  ViTConfig c;
  // One setter per key keeps the key list in one place and lets unknown keys be reported.
  using Setter = std::function<void(const json&)>;
  const std::map<std::string, Setter> setters = {
      {"name", [&](const json& v) { c.name = v.get<std::string>(); }},
      {"img_size", [&](const json& v) { c.img_size = v.get<int64_t>(); }},
      {"patch_size", [&](const json& v) { c.patch_size = v.get<int64_t>(); }},
      {"in_chans", [&](const json& v) { c.in_chans = v.get<int64_t>(); }},
      {"embed_dim", [&](const json& v) { c.embed_dim = v.get<int64_t>(); }},
      {"depth", [&](const json& v) { c.depth = v.get<int64_t>(); }},
      {"num_heads", [&](const json& v) { c.num_heads = v.get<int64_t>(); }},
      {"mlp_ratio", [&](const json& v) { c.mlp_ratio = v.get<double>(); }},
      {"qkv_bias", [&](const json& v) { c.qkv_bias = v.get<bool>(); }},
      {"patch_bias", [&](const json& v) { c.patch_bias = v.get<bool>(); }},
      {"ln_eps", [&](const json& v) { c.ln_eps = v.get<double>(); }},
      {"act",
       [&](const json& v) {
         auto s = v.get<std::string>();
         if (s == "gelu") c.act = Activation::GELU;
         else if (s == "quick_gelu") c.act = Activation::QuickGELU;
         else throw Error("act must be 'gelu' or 'quick_gelu', got '" + s + "'");
       }},
      {"norm_pre", [&](const json& v) { c.norm_pre = v.get<bool>(); }},
      {"class_token", [&](const json& v) { c.class_token = v.get<bool>(); }},
      {"pool",
       [&](const json& v) {
         auto s = v.get<std::string>();
         if (s == "token") c.pool = Pooling::Token;
         else if (s == "mean") c.pool = Pooling::Mean;
         else throw Error("pool must be 'token' or 'mean', got '" + s + "'");
       }},
      {"fc_norm", [&](const json& v) { c.fc_norm = v.get<bool>(); }},
      {"drop_path", [&](const json& v) { c.drop_path = v.get<double>(); }},
      {"num_classes", [&](const json& v) { c.num_classes = v.get<int64_t>(); }},
      {"head_bias", [&](const json& v) { c.head_bias = v.get<bool>(); }},
      {"mean", [&](const json& v) { c.mean = v.get<std::vector<double>>(); }},
      {"std", [&](const json& v) { c.std = v.get<std::vector<double>>(); }},
  };
  for (auto it = j.begin(); it != j.end(); ++it) {
    auto s = setters.find(it.key());
    if (s == setters.end()) throw Error(origin + ": unknown model config key '" + it.key() + "'");
    try {
      s->second(it.value());
    } catch (const Error& e) {
      throw Error(origin + ": model config key '" + it.key() + "': " + e.what());
    } catch (const std::exception& e) {
      throw Error(origin + ": model config key '" + it.key() + "' has the wrong type: " + e.what());
    }
  }
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(origin + ": " + e.what());
  }
  return c;
}

namespace {

const std::vector<double> kImagenetMean{0.485, 0.456, 0.406};
const std::vector<double> kImagenetStd{0.229, 0.224, 0.225};
const std::vector<double> kClipMean{0.48145466, 0.4578275, 0.40821073};
const std::vector<double> kClipStd{0.26862954, 0.26130258, 0.27577711};
// Fashion-MNIST training-set statistics (grayscale).
const std::vector<double> kFashionMean{0.2860};
const std::vector<double> kFashionStd{0.3530};

ViTConfig vit(const std::string& name, int64_t img, int64_t patch, int64_t dim, int64_t depth,
              int64_t heads, int64_t classes) {
  ViTConfig c;
  c.name = name;
  c.img_size = img;
  c.patch_size = patch;
  c.embed_dim = dim;
  c.depth = depth;
  c.num_heads = heads;
  c.num_classes = classes;
  return c;
}

ViTConfig small_image(ViTConfig c) {
  // 28x28 grayscale (Fashion-MNIST): patch 4 gives a 7x7 grid, 49 patches + CLS.
  c.in_chans = 1;
  c.mean = kFashionMean;
  c.std = kFashionStd;
  return c;
}

// OpenAI CLIP image towers: LayerNorm eps 1e-5, ln_pre, no patch-embedding bias, QuickGELU, CLIP
// statistics; the head is the projection into the joint embedding (no bias in OpenAI's files).
ViTConfig openai_clip(ViTConfig c) {
  c.ln_eps = 1e-5;
  c.norm_pre = true;
  c.patch_bias = false;
  c.act = Activation::QuickGELU;
  c.head_bias = false;
  c.mean = kClipMean;
  c.std = kClipStd;
  return c;
}

const std::map<std::string, std::function<ViTConfig()>>& registry() {
  static const std::map<std::string, std::function<ViTConfig()>> r = {
      {"vit_tiny_patch16_224", [] { return vit("vit_tiny_patch16_224", 224, 16, 192, 12, 3, 1000); }},
      {"vit_small_patch16_224", [] { return vit("vit_small_patch16_224", 224, 16, 384, 12, 6, 1000); }},
      {"vit_base_patch16_224", [] { return vit("vit_base_patch16_224", 224, 16, 768, 12, 12, 1000); }},
      {"vit_large_patch16_224", [] { return vit("vit_large_patch16_224", 224, 16, 1024, 24, 16, 1000); }},
      // Small-image presets for 28x28 single-channel inputs (the embedded Fashion-MNIST default).
      {"vit_tiny_patch4_28", [] { return small_image(vit("vit_tiny_patch4_28", 28, 4, 192, 12, 3, 10)); }},
      {"vit_mini_patch4_28", [] { return small_image(vit("vit_mini_patch4_28", 28, 4, 128, 6, 4, 10)); }},
      // 4x4 grid of 7x7 patches: the fast default of the end-to-end Fashion-MNIST pipeline.
      {"vit_mini_patch7_28", [] { return small_image(vit("vit_mini_patch7_28", 28, 7, 128, 6, 4, 10)); }},
      // The same at ViT-B's depth (12 blocks): the paper's recipes run at small scale with their
      // layer indices unchanged (scripts/reproduce.sh).
      {"vit_mini12_patch7_28", [] { return small_image(vit("vit_mini12_patch7_28", 28, 7, 128, 12, 4, 10)); }},
      // 7x7 grid of 4x4 patches at ViT-B's depth: the small-scale study's student and teachers
      // (room for local vs global attention; the paper's layer indices unchanged).
      {"vit_mini12_patch4_28", [] { return small_image(vit("vit_mini12_patch4_28", 28, 4, 128, 12, 4, 10)); }},
      {"vit_small_patch4_28", [] { return small_image(vit("vit_small_patch4_28", 28, 4, 384, 12, 6, 10)); }},
      // Teacher families, with the details of the published checkpoints.
      {"vit_base_patch16_224.mae",
       [] {
         auto c = vit("vit_base_patch16_224.mae", 224, 16, 768, 12, 12, 0);
         return c;
       }},
      {"vit_base_patch16_clip_224.openai",
       [] { return openai_clip(vit("vit_base_patch16_clip_224.openai", 224, 16, 768, 12, 12, 512)); }},
      {"vit_large_patch16_224.mae", [] { return vit("vit_large_patch16_224.mae", 224, 16, 1024, 24, 16, 0); }},
      {"vit_base_patch16_224.dino", [] { return vit("vit_base_patch16_224.dino", 224, 16, 768, 12, 12, 0); }},
      {"vit_large_patch14_clip_224.openai",
       [] { return openai_clip(vit("vit_large_patch14_clip_224.openai", 224, 14, 1024, 24, 16, 768)); }},
      {"deit_base_patch16_224", [] { return vit("deit_base_patch16_224", 224, 16, 768, 12, 12, 1000); }},
      {"deit_base_patch16_224.fb_in1k",
       [] { return vit("deit_base_patch16_224.fb_in1k", 224, 16, 768, 12, 12, 1000); }},
  };
  return r;
}

}  // namespace

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (const auto& [k, v] : registry()) names.push_back(k);
  return names;
}

ViTConfig preset(const std::string& name) {
  auto it = registry().find(name);
  if (it == registry().end()) {
    std::string known;
    for (const auto& n : preset_names()) known += (known.empty() ? "" : ", ") + n;
    throw Error("unknown model preset '" + name + "' (known: " + known + ")");
  }
  ViTConfig c = it->second();
  c.validate();
  return c;
}

}  // namespace hd::model
