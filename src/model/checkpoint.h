// Model checkpoints: timm-layout safetensors with the architecture in `__metadata__`, so a
// saved model is self-describing. One reader for every model file the project touches.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "model/vit.h"

namespace hd::model {

// `__metadata__` key holding ViTConfig::to_json().
inline constexpr const char* kConfigMetaKey = "hybrid_distill.vit_config";

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

struct LoadReport {
  std::vector<std::string> missing;     // model parameters absent from the file
  std::vector<std::string> unexpected;  // file tensors the model has no parameter for
};

// Parameters and buffers of `model` in registration order (timm names).
NamedTensors state_dict(const torch::nn::Module& model);

// Copies `tensors` into the model's parameters (converting dtype). A shape mismatch is an
// hd::Error naming `origin`, the tensor, and both shapes. With `strict`, missing or unexpected
// tensors are an hd::Error listing them; otherwise they are reported.
LoadReport load_state(torch::nn::Module& model, const NamedTensors& tensors, bool strict,
                      const std::string& origin);

// Writes the model (converted to `dtype`: float32, float16 or bfloat16) with its config in
// the metadata, atomically. `extra` metadata entries are added.
void save_model(const std::string& path, VisionTransformer& model,
                const std::map<std::string, std::string>& extra = {},
                c10::ScalarType dtype = c10::ScalarType::Float);

// The architecture of a checkpoint: `arch` (a preset name) if given, else the config stored in
// the file's metadata. An hd::Error if neither is available.
ViTConfig checkpoint_config(const std::string& path, const std::string& arch = "");

// Builds the model described by checkpoint_config() and loads its weights (float32).
VisionTransformer load_model(const std::string& path, const std::string& arch = "", bool strict = true,
                             LoadReport* report = nullptr);

}  // namespace hd::model
