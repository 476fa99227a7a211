// Published ViT checkpoints in, timm-format models out.
//
// Reading: the container is recognised by its bytes (safetensors, or a torch.save / torch.jit.save
// file through the project's own restricted reader, io/torch_file.h); wrapper dicts
// ({"model": ...}, {"state_dict": ...}) are unwrapped, TorchScript modules flattened into
// parameter names, and key prefixes (`module.`, `model.`, `visual.`, `backbone.`, ...)
// stripped; the naming convention (timm, OpenAI CLIP, torchvision) is detected and renamed to
// timm's through a table of rules; the positional embedding is resampled when the file's grid
// differs from the model's, and the classifier follows the file.
// Writing timm's Hugging Face hub layout: model/timm_hub.h.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "model/checkpoint.h"
#include "model/config.h"
#include "model/vit.h"

namespace hd::model {

// The tensors of a checkpoint file as stored (names untouched, wrappers already unwrapped).
struct CheckpointFile {
  std::string format;  // "safetensors", "torch" (torch.save zip), "torchscript" (torch.jit.save
                       // archive) or "torch_legacy" (pre-1.6 torch.save)
  NamedTensors tensors;
  std::map<std::string, std::string> metadata;  // safetensors __metadata__ (empty for torch)
  std::vector<std::string> notes;               // e.g. "using the 'model' entry of the file"
};

// The container of `path` by its first bytes: "torch" (a zip archive: torch.save or
// torch.jit.save), "torch_legacy" (a pre-1.6 torch.save pickle) or "safetensors" (anything
// else, for the safetensors reader to judge).
std::string checkpoint_format(const std::string& path);

// Reads every tensor of `path`. torch.save files hold a dict or collections.OrderedDict of
// tensors, possibly in a wrapper entry (see wrapper_keys()); entries that are not tensors
// (epoch, args, optimizer state, numpy scalars, ...) are skipped and listed in the notes, never
// executed. A torch.jit.save archive (OpenAI's CLIP .pt files) gives its module's parameters
// under dotted names. Anything else is an hd::Error naming the file.
CheckpointFile read_checkpoint_file(const std::string& path);

// Wrapper entries looked into, in order, when a torch.save dict has no tensors at its top level.
const std::vector<std::string>& wrapper_keys();
// Key prefixes stripped when the keys under them hold a whole ViT (a patch embedding); keys
// outside the prefix (e.g. CLIP's text tower next to `visual.`) are then ignored.
const std::vector<std::string>& key_prefixes();

// How a stored tensor is reshaped when renamed.
enum class TensorOp {
  None,
  Transpose,   // [in, out] projection matrix -> Linear weight [out, in] (CLIP's `proj`)
  AsTokens,    // [D] or [N, D] -> [1, 1, D] / [1, N, D] (CLIP's class / positional embeddings)
};

struct RenameRule {
  std::string pattern;      // ECMAScript regex, matched against the whole key
  std::string replacement;  // may use $1, $2, ... of the pattern
  TensorOp op = TensorOp::None;
};

// A parameter-naming convention and its translation into timm's names.
struct KeyLayout {
  std::string name;                  // "timm", "openai_clip", "torchvision"
  std::vector<std::string> markers;  // regexes: a key matching one identifies the layout
  std::vector<RenameRule> rules;     // first matching rule wins; unmatched keys are kept as they are
  std::vector<std::string> ignore;   // regexes of keys of other parts of a training model
                                     // (MAE decoder, mask token, ...), dropped and listed
};

// The known layouts; detection tries them in order, timm (no markers) last.
const std::vector<KeyLayout>& key_layouts();

// The result of bringing a file's tensors into timm's names.
struct Conversion {
  NamedTensors tensors;
  std::string layout;                // name of the detected KeyLayout
  std::vector<std::string> notes;    // what was done, for the user
  std::vector<std::string> ignored;  // keys dropped (outside the selected prefix, or ignorable)
};

// Strips prefixes, detects the layout and applies its rules. Two tensors ending up under one
// name, or a layout that cannot be converted (Hugging Face transformers' ViTModel / CLIPVisionModel
// with separate q/k/v projections), are an hd::Error naming `origin`.
Conversion to_timm_layout(NamedTensors tensors, const std::string& origin);

// timm's resample_abs_pos_embed: the grid part of `pos` [1, prefix + h*w, D] (square h = w) is
// interpolated to new_h x new_w with F.interpolate(mode='bicubic', align_corners=False,
// antialias) in float32; the `num_prefix` leading tokens are kept. Same grid: returned as is.
torch::Tensor resample_pos_embed(const torch::Tensor& pos, int64_t new_h, int64_t new_w, int64_t num_prefix,
                                 bool antialias = true);

// Makes the converted tensors and `cfg` agree where a file legitimately differs from a preset:
// a positional embedding for another grid is resampled (as timm does when loading), and the
// classifier follows the file (its class count, its bias, or none at all). Notes are appended.
// Shapes that cannot be reconciled are left for load_state to report.
void fit_to_config(Conversion& c, ViTConfig& cfg, const std::string& origin);

}  // namespace hd::model
