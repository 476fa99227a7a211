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
  std::vector<std::string> ignored;     // file tensors set aside as not part of the encoder
                                        // (another tower, a decoder: see model/interop.h)
  std::vector<std::string> notes;       // conversions done (prefixes, names, resampling, head)
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

// The architecture of a checkpoint: `arch` (a preset name) if given (the file is then not
// read), else the config stored in a safetensors file's metadata, else a timm config.json next
// to the file (Hugging Face hub layout). An hd::Error if none is available.
ViTConfig checkpoint_config(const std::string& path, const std::string& arch = "");

// Builds the model described by checkpoint_config() and loads its weights (float32). The file
// may be safetensors or a torch.save .pth, in timm's, OpenAI CLIP's or torchvision's names,
// under wrapper entries and key prefixes; the positional embedding is resampled to the
// architecture's grid and the classifier follows the file (model/interop.h). `report` lists what
// was converted, ignored, missing or unexpected; with `strict`, missing or unexpected tensors
// are an hd::Error.
VisionTransformer load_model(const std::string& path, const std::string& arch = "", bool strict = true,
                             LoadReport* report = nullptr);

}  // namespace hd::model
