// timm's Hugging Face hub layout (model.safetensors + config.json), written for a model of this
// project and read back as a ViTConfig: what `export` writes and what a hub download brings.
#pragma once

#include <string>
#include <vector>

#include "model/config.h"
#include "model/vit.h"

namespace hd::model {

// timm's Hugging Face hub config.json for `cfg`: {"architecture", "num_classes", "num_features",
// "global_pool", "model_args", "pretrained_cfg"}. hd::Error if timm's VisionTransformer cannot
// express the model (a LayerNorm eps other than 1e-6 / 1e-5, a patch-embedding bias that
// differs from `not pre_norm`).
std::string timm_hub_config(const ViTConfig& cfg);
// Reads such a config.json: the architecture (a preset name, with its pretrained tag, if one
// matches; otherwise timm's defaults) overridden by model_args and pretrained_cfg.
ViTConfig config_from_timm_hub(const std::string& text, const std::string& origin);

// Writes DIR/model.safetensors (timm names, float32, a zero head bias where the model has none,
// the config also in the metadata) and DIR/config.json. Returns the two paths.
std::vector<std::string> export_timm(VisionTransformer& model, const std::string& dir);

}  // namespace hd::model
