// Vision Transformer architecture description: a plain struct with defaults, named presets,
// and a JSON form that travels inside checkpoints so that a saved model is self-describing.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace hd::model {

enum class Activation { GELU, QuickGELU };  // QuickGELU: x * sigmoid(1.702 x), OpenAI CLIP.
enum class Pooling { Token, Mean };         // CLS token, or mean of patch tokens.

struct ViTConfig {
  std::string name = "custom";  // preset name, or "custom"
  int64_t img_size = 224;
  int64_t patch_size = 16;
  int64_t in_chans = 3;
  int64_t embed_dim = 768;
  int64_t depth = 12;
  int64_t num_heads = 12;
  double mlp_ratio = 4.0;
  bool qkv_bias = true;
  bool patch_bias = true;       // patch_embed.proj has a bias (timm default; OpenAI CLIP: no)
  double ln_eps = 1e-6;
  Activation act = Activation::GELU;
  bool norm_pre = false;        // LayerNorm after the embeddings (CLIP's ln_pre)
  bool class_token = true;
  Pooling pool = Pooling::Token;
  bool fc_norm = false;         // timm: norm after pooling instead of before (MAE fine-tune style)
  double drop_path = 0.0;       // stochastic depth rate, linearly increasing over blocks
  int64_t num_classes = 0;      // 0: no head (features only)
  bool head_bias = true;
  // Input normalisation the weights expect (used by data transforms, recorded in checkpoints).
  std::vector<double> mean{0.485, 0.456, 0.406};
  std::vector<double> std{0.229, 0.224, 0.225};

  int64_t grid_size() const { return img_size / patch_size; }
  int64_t num_patches() const { return grid_size() * grid_size(); }
  int64_t num_prefix_tokens() const { return class_token ? 1 : 0; }
  int64_t num_tokens() const { return num_patches() + num_prefix_tokens(); }
  int64_t head_dim() const { return embed_dim / num_heads; }
  int64_t mlp_hidden() const { return static_cast<int64_t>(embed_dim * mlp_ratio); }

  // Throws hd::Error describing the first inconsistency (e.g. image size not divisible by
  // patch size, width not divisible by heads).
  void validate() const;

  std::string to_json() const;
  // Parses to_json() output; unknown keys are an error (names the key), missing keys keep
  // their defaults. `origin` names the file / option the text came from, for messages.
  static ViTConfig from_json(const std::string& text, const std::string& origin);
};

// Named presets (timm names where timm has them). Throws hd::Error listing the known names.
ViTConfig preset(const std::string& name);
std::vector<std::string> preset_names();

std::string to_string(Activation a);
std::string to_string(Pooling p);

}  // namespace hd::model
