#include "model/timm_hub.h"

#include <cmath>
#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace hd::model {

namespace fs = std::filesystem;

namespace {

bool near(double a, double b) { return std::abs(a - b) <= 1e-3 * std::abs(b); }

std::string tail_of(const std::string& name) {
  auto dot = name.find('.');
  return dot == std::string::npos ? "" : name.substr(dot + 1);
}
std::string base_of(const std::string& name) { return name.substr(0, name.find('.')); }

}  // namespace

std::string timm_hub_config(const ViTConfig& c) {
  c.validate();
  const bool clip_norm = near(c.ln_eps, 1e-5), vit_norm = near(c.ln_eps, 1e-6);
  if (!clip_norm && !vit_norm) {
    std::ostringstream e;
    e << "model '" << c.name << "' has LayerNorm eps " << c.ln_eps
      << "; timm's VisionTransformer has 1e-6 (1e-5 in its CLIP variants) and no option for others";
    throw Error(e.str());
  }
  if (c.patch_bias == c.norm_pre)
    throw Error("model '" + c.name + "' has " + (c.patch_bias ? "a" : "no") + " patch-embedding bias with" +
                (c.norm_pre ? "" : "out") + " norm_pre; timm's VisionTransformer ties them (bias = not pre_norm)");
  static const std::set<std::string> timm_vit = {"vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224",
                                                 "vit_large_patch16_224", "deit_base_patch16_224"};
  static const std::set<std::string> timm_clip = {"vit_base_patch16_clip_224", "vit_large_patch14_clip_224"};
  std::string arch = base_of(c.name), tag = tail_of(c.name);
  if (!(clip_norm ? timm_clip : timm_vit).count(arch)) {
    // Every architectural detail is in model_args; the base only brings the LayerNorm eps.
    arch = clip_norm ? "vit_base_patch16_clip_224" : "vit_base_patch16_224";
    tag = "hybrid_distill";
  }
  using oj = nlohmann::ordered_json;
  oj args = {{"img_size", c.img_size},
             {"patch_size", c.patch_size},
             {"in_chans", c.in_chans},
             {"embed_dim", c.embed_dim},
             {"depth", c.depth},
             {"num_heads", c.num_heads},
             {"mlp_ratio", c.mlp_ratio},
             {"qkv_bias", c.qkv_bias},
             {"class_token", c.class_token},
             {"global_pool", c.pool == Pooling::Token ? "token" : "avg"},
             {"fc_norm", c.fc_norm},
             {"pre_norm", c.norm_pre},
             {"act_layer", c.act == Activation::GELU ? "gelu" : "quick_gelu"}};
  oj pretrained = {{"tag", tag},
                   {"custom_load", false},
                   {"input_size", {c.in_chans, c.img_size, c.img_size}},
                   {"fixed_input_size", true},
                   // This project's evaluation transform: bilinear resize of the shorter side to
                   // size / 0.875, then a center crop.
                   {"interpolation", "bilinear"},
                   {"crop_pct", 0.875},
                   {"crop_mode", "center"},
                   {"mean", c.mean},
                   {"std", c.std},
                   {"num_classes", c.num_classes},
                   {"pool_size", nullptr},
                   {"first_conv", "patch_embed.proj"},
                   {"classifier", "head"}};
  oj j = {{"architecture", arch},
          {"num_classes", c.num_classes},
          {"num_features", c.embed_dim},
          {"global_pool", c.pool == Pooling::Token ? "token" : "avg"},
          {"model_args", args},
          {"pretrained_cfg", pretrained}};
  return j.dump(2) + "\n";
}

ViTConfig config_from_timm_hub(const std::string& text, const std::string& origin) {
  using nlohmann::json;
  json j;
  try {
    j = json::parse(text);
  } catch (const std::exception& e) {
    throw Error(origin + ": not valid JSON: " + e.what());
  }
  if (!j.is_object() || !j.contains("architecture") || !j["architecture"].is_string())
    throw Error(origin + ": not a timm config (no \"architecture\")");
  const std::string arch = j["architecture"].get<std::string>();
  const json pre = j.value("pretrained_cfg", json::object());
  const json args = j.value("model_args", json::object());
  const std::string tag = pre.is_object() ? pre.value("tag", std::string()) : "";
  ViTConfig c;
  const auto names = preset_names();
  auto known = [&](const std::string& n) { return std::find(names.begin(), names.end(), n) != names.end(); };
  if (!tag.empty() && known(arch + "." + tag)) c = preset(arch + "." + tag);
  else if (known(arch)) c = preset(arch);
  else if (arch.find("_clip_") != std::string::npos) c = preset("vit_base_patch16_clip_224.openai");
  c.name = tag.empty() ? arch : arch + "." + tag;
  try {
    bool fc_norm_given = false;
    for (auto it = args.begin(); it != args.end(); ++it) {
      const std::string& k = it.key();
      const json& v = it.value();
      if (k == "img_size") {
        if (v.is_array()) {
          if (v.size() != 2 || v[0] != v[1]) throw Error("model_args.img_size must be square");
          c.img_size = v[0].get<int64_t>();
        } else {
          c.img_size = v.get<int64_t>();
        }
      } else if (k == "patch_size") c.patch_size = v.get<int64_t>();
      else if (k == "in_chans") c.in_chans = v.get<int64_t>();
      else if (k == "embed_dim") c.embed_dim = v.get<int64_t>();
      else if (k == "depth") c.depth = v.get<int64_t>();
      else if (k == "num_heads") c.num_heads = v.get<int64_t>();
      else if (k == "mlp_ratio") c.mlp_ratio = v.get<double>();
      else if (k == "qkv_bias") c.qkv_bias = v.get<bool>();
      else if (k == "class_token") c.class_token = v.get<bool>();
      else if (k == "pre_norm") {
        c.norm_pre = v.get<bool>();
        c.patch_bias = !c.norm_pre;
      } else if (k == "fc_norm") {
        if (!v.is_null()) {
          c.fc_norm = v.get<bool>();
          fc_norm_given = true;
        }
      } else if (k == "global_pool") {
        auto s = v.get<std::string>();
        if (s == "token") c.pool = Pooling::Token;
        else if (s == "avg") c.pool = Pooling::Mean;
        else throw Error("model_args.global_pool '" + s + "' is not supported (token, avg)");
      } else if (k == "act_layer") {
        auto s = v.get<std::string>();
        if (s == "gelu") c.act = Activation::GELU;
        else if (s == "quick_gelu") c.act = Activation::QuickGELU;
        else throw Error("model_args.act_layer '" + s + "' is not supported (gelu, quick_gelu)");
      } else if (k == "drop_rate" || k == "pos_drop_rate" || k == "proj_drop_rate" || k == "attn_drop_rate" ||
                 k == "drop_path_rate" || k == "weight_init" || k == "num_classes") {
        // training-time options (and num_classes, read from the top level)
      } else if ((k == "no_embed_class" || k == "dynamic_img_size") && v.is_boolean() && !v.get<bool>()) {
      } else {
        throw Error("model_args." + k + " is not supported by this ViT");
      }
    }
    // timm: fc_norm=None means "norm after pooling when pooling by average".
    if (!fc_norm_given && args.contains("global_pool")) c.fc_norm = c.pool == Pooling::Mean;
    if (j.contains("num_classes")) c.num_classes = j["num_classes"].get<int64_t>();
    else if (pre.contains("num_classes")) c.num_classes = pre["num_classes"].get<int64_t>();
    if (pre.contains("mean")) c.mean = pre["mean"].get<std::vector<double>>();
    if (pre.contains("std")) c.std = pre["std"].get<std::vector<double>>();
    if (pre.contains("input_size")) {
      auto s = pre["input_size"].get<std::vector<int64_t>>();
      if (s.size() != 3) throw Error("pretrained_cfg.input_size must be [C, H, W]");
      if (!args.contains("in_chans")) c.in_chans = s[0];
      if (!args.contains("img_size")) c.img_size = s[1];
    }
  } catch (const Error& e) {
    throw Error(origin + ": " + e.what());
  } catch (const std::exception& e) {
    throw Error(origin + ": a timm config value has the wrong type: " + e.what());
  }
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(origin + ": " + e.what());
  }
  return c;
}

std::vector<std::string> export_timm(VisionTransformer& model, const std::string& dir) {
  ViTConfig cfg = model->config();
  cfg.head_bias = true;  // timm's head always has a bias; a model without one gets zeros
  const std::string config = timm_hub_config(cfg);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(dir + ": cannot create the folder: " + ec.message());
  NamedTensors tensors;
  for (auto& [name, t] : state_dict(*model)) {
    tensors.emplace_back(name, t.detach().to(torch::kCPU, torch::kFloat).contiguous());
    if (name == "head.weight" && !model->head->bias.defined())
      tensors.emplace_back("head.bias", torch::zeros({t.size(0)}, torch::kFloat));
  }
  const std::string weights = (fs::path(dir) / "model.safetensors").string();
  const std::string json_path = (fs::path(dir) / "config.json").string();
  io::save_safetensors(weights, tensors, {{"format", "pt"}, {kConfigMetaKey, cfg.to_json()}});
  atomic_write_file(json_path, [&](std::FILE* f) {
    if (std::fwrite(config.data(), 1, config.size(), f) != config.size()) throw Error(json_path + ": write error");
  });
  return {weights, json_path};
}

}  // namespace hd::model
