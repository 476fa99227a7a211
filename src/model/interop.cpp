#include "model/interop.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>

#include <torch/torch.h>

#include "io/safetensors.h"
#include "io/torch_file.h"
#include "util/error.h"

namespace hd::model {

namespace F = torch::nn::functional;

namespace {

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

std::string shape_str(c10::IntArrayRef s) {
  std::ostringstream o;
  o << s;
  return o.str();
}

// The tensors of a torch.save / torch.jit.save file (io::TorchFile), the state dict found at
// the top level, in a wrapper entry ({"model": ...}, {"state_dict": {"model": ...}}) or, for a
// TorchScript archive, as the module's parameters.
CheckpointFile read_torch_file(const std::string& path) {
  CheckpointFile out;
  auto file = io::TorchFile::open(path);
  out.format = file.format();
  const io::pickle::Value& root = file.root();
  // "a, b, c, ... (N in all)": a hostile file may have millions of entries.
  auto list = [](const std::vector<std::string>& items) {
    std::string s;
    for (size_t i = 0; i < items.size() && i < 12; ++i) s += (i ? ", " : "") + items[i];
    if (items.size() > 12) s += ", ... (" + std::to_string(items.size()) + " in all)";
    return s;
  };
  auto skipped_note = [&](const std::vector<std::string>& skipped) {
    return "skipped the entries that are not tensors: " + list(skipped);
  };
  if (io::is_script_module(root)) {
    out.tensors = file.tensors_in(root);
    out.notes.push_back("read the parameters of the TorchScript module '" + root.s.substr(10) +
                        "' (its code is not run)");
    if (out.tensors.empty()) throw Error(path + ": the TorchScript module holds no tensors");
    return out;
  }
  if (root.kind != io::pickle::Kind::Dict)
    throw Error(path + ": expected a dict of tensors (a state dict), found a " + root.type_name());
  std::vector<std::string> skipped;
  out.tensors = file.tensors_in(root, &skipped);
  if (!out.tensors.empty()) {
    if (!skipped.empty()) out.notes.push_back(skipped_note(skipped));
    return out;
  }
  std::vector<std::string> keys;
  for (const auto& [k, v] : root.entries) keys.push_back(k->is_str() ? k->s : k->type_name());
  // The first wrapper entry holding tensors, one more level down if need be.
  for (const auto& w : wrapper_keys()) {
    const io::pickle::Value* v = root.get(w);
    if (!v || !(v->kind == io::pickle::Kind::Dict || io::is_script_module(*v))) continue;
    std::vector<std::string> inner;
    out.tensors = file.tensors_in(*v, &inner);
    std::string where = "'" + w + "'";
    if (out.tensors.empty())
      for (const auto& w2 : wrapper_keys()) {
        const io::pickle::Value* v2 = v->get(w2);
        if (!v2 || v2->kind != io::pickle::Kind::Dict) continue;
        inner.clear();
        out.tensors = file.tensors_in(*v2, &inner);
        if (!out.tensors.empty()) {
          where += " / '" + w2 + "'";
          break;
        }
      }
    if (out.tensors.empty()) continue;
    std::vector<std::string> others;
    for (const auto& k : keys)
      if (k != w) others.push_back(k);
    out.notes.push_back("using the " + where + " entry of the file" +
                        (others.empty() ? "" : " (other entries not read: " + list(others) + ")"));
    if (!inner.empty()) out.notes.push_back(skipped_note(inner));
    return out;
  }
  throw Error(path + ": no tensors found at the top level or under " + [] {
    std::string s;
    for (const auto& w : wrapper_keys()) s += (s.empty() ? "'" : ", '") + w + "'";
    return s;
  }() + " (top-level keys: " + (keys.empty() ? "none" : list(keys)) + ")");
}

// Whether the tensors hold a ViT's patch embedding (possibly under further prefixes).
bool has_patch_embedding(const NamedTensors& t) {
  for (const auto& [k, v] : t)
    for (const char* pe : {"patch_embed.proj.weight", "conv1.weight", "conv_proj.weight"}) {
      const std::string e(pe);
      if (k == e || (k.size() > e.size() && k.compare(k.size() - e.size() - 1, e.size() + 1, "." + e) == 0))
        return true;
    }
  return false;
}

torch::Tensor apply_op(const torch::Tensor& t, TensorOp op, const std::string& key, const std::string& origin) {
  switch (op) {
    case TensorOp::None:
      return t;
    case TensorOp::Transpose:
      if (t.dim() != 2)
        throw Error(origin + ": tensor '" + key + "' has shape " + shape_str(t.sizes()) +
                    " but a 2-D projection matrix [in, out] is expected");
      return t.t().contiguous();
    case TensorOp::AsTokens:
      if (t.dim() == 1) return t.reshape({1, 1, t.size(0)});
      if (t.dim() == 2) return t.unsqueeze(0);
      if (t.dim() == 3 && t.size(0) == 1) return t;
      throw Error(origin + ": tensor '" + key + "' has shape " + shape_str(t.sizes()) +
                  " but [D] or [N, D] token embeddings are expected");
  }
  return t;
}


}  // namespace

// ---------------------------------------------------------------------------------------------
const std::vector<std::string>& wrapper_keys() {
  static const std::vector<std::string> k = {"state_dict", "model", "module", "teacher", "model_ema", "net"};
  return k;
}

const std::vector<std::string>& key_prefixes() {
  static const std::vector<std::string> p = {"module.", "_orig_mod.", "model.", "visual.", "trunk.",
                                             "backbone.", "teacher.", "image_encoder."};
  return p;
}

const std::vector<KeyLayout>& key_layouts() {
  static const std::vector<KeyLayout> layouts = {
      {"openai_clip",
       {R"(class_embedding)", R"(transformer\.resblocks\.\d+\..*)"},
       {
           {R"(conv1\.weight)", "patch_embed.proj.weight"},
           {R"(class_embedding)", "cls_token", TensorOp::AsTokens},
           {R"(positional_embedding)", "pos_embed", TensorOp::AsTokens},
           {R"(ln_pre\.(weight|bias))", "norm_pre.$1"},
           {R"(transformer\.resblocks\.(\d+)\.ln_1\.(weight|bias))", "blocks.$1.norm1.$2"},
           {R"(transformer\.resblocks\.(\d+)\.attn\.in_proj_weight)", "blocks.$1.attn.qkv.weight"},
           {R"(transformer\.resblocks\.(\d+)\.attn\.in_proj_bias)", "blocks.$1.attn.qkv.bias"},
           {R"(transformer\.resblocks\.(\d+)\.attn\.out_proj\.(weight|bias))", "blocks.$1.attn.proj.$2"},
           {R"(transformer\.resblocks\.(\d+)\.ln_2\.(weight|bias))", "blocks.$1.norm2.$2"},
           {R"(transformer\.resblocks\.(\d+)\.mlp\.c_fc\.(weight|bias))", "blocks.$1.mlp.fc1.$2"},
           {R"(transformer\.resblocks\.(\d+)\.mlp\.c_proj\.(weight|bias))", "blocks.$1.mlp.fc2.$2"},
           {R"(ln_post\.(weight|bias))", "norm.$1"},
           {R"(proj)", "head.weight", TensorOp::Transpose},
       },
       {}},
      {"torchvision",
       {R"(class_token)", R"(conv_proj\.weight)", R"(encoder\.layers\.encoder_layer_\d+\..*)"},
       {
           {R"(conv_proj\.(weight|bias))", "patch_embed.proj.$1"},
           {R"(class_token)", "cls_token"},
           {R"(encoder\.pos_embedding)", "pos_embed"},
           {R"(encoder\.layers\.encoder_layer_(\d+)\.ln_1\.(weight|bias))", "blocks.$1.norm1.$2"},
           {R"(encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_weight)", "blocks.$1.attn.qkv.weight"},
           {R"(encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_bias)", "blocks.$1.attn.qkv.bias"},
           {R"(encoder\.layers\.encoder_layer_(\d+)\.self_attention\.out_proj\.(weight|bias))",
            "blocks.$1.attn.proj.$2"},
           {R"(encoder\.layers\.encoder_layer_(\d+)\.ln_2\.(weight|bias))", "blocks.$1.norm2.$2"},
           {R"(encoder\.layers\.encoder_layer_(\d+)\.mlp\.(?:0|linear_1)\.(weight|bias))", "blocks.$1.mlp.fc1.$2"},
           {R"(encoder\.layers\.encoder_layer_(\d+)\.mlp\.(?:3|linear_2)\.(weight|bias))", "blocks.$1.mlp.fc2.$2"},
           {R"(encoder\.ln\.(weight|bias))", "norm.$1"},
           {R"(heads\.head\.(weight|bias))", "head.$1"},
       },
       {}},
      // timm's own names (MAE, DeiT, DINO and timm / Hugging Face hub files): kept; MAE
      // pre-training files also hold the decoder and mask token.
      {"timm", {}, {}, {R"(decoder[._].*)", R"(mask_token)"}},
  };
  return layouts;
}

// ---------------------------------------------------------------------------------------------
std::string checkpoint_format(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path + ": cannot open file");
  unsigned char b[9] = {0};
  f.read(reinterpret_cast<char*>(b), sizeof b);
  const auto n = f.gcount();
  if (n >= 4 && b[0] == 'P' && b[1] == 'K' && b[2] == 3 && b[3] == 4) return "torch";
  // A safetensors header (after its 8-byte length) is a JSON object; a pickle starts with PROTO.
  if (n == 9 && b[8] == '{') return "safetensors";
  if (n >= 2 && b[0] == 0x80 && b[1] >= 2 && b[1] <= 5) return "torch_legacy";
  return "safetensors";
}

CheckpointFile read_checkpoint_file(const std::string& path) {
  const std::string format = checkpoint_format(path);
  if (format == "torch" || format == "torch_legacy") return read_torch_file(path);
  CheckpointFile out;
  out.format = "safetensors";
  auto file = io::SafeTensorsFile::open(path);
  out.tensors = file.load_all();
  out.metadata = file.metadata();
  return out;
}

Conversion to_timm_layout(NamedTensors tensors, const std::string& origin) {
  Conversion c;
  for (bool changed = true; changed;) {
    changed = false;
    for (const auto& p : key_prefixes()) {
      NamedTensors inside;
      std::vector<std::string> outside;
      for (auto& [k, v] : tensors) {
        if (starts_with(k, p)) inside.emplace_back(k.substr(p.size()), v);
        else outside.push_back(k);
      }
      if (inside.empty() || !has_patch_embedding(inside)) continue;
      c.notes.push_back("stripped the key prefix '" + p + "'" +
                        (outside.empty() ? "" : " (ignoring " + std::to_string(outside.size()) + " tensors outside it)"));
      c.ignored.insert(c.ignored.end(), outside.begin(), outside.end());
      tensors = std::move(inside);
      changed = true;
      break;
    }
  }

  static const std::regex hf_transformers(R"((^|.*\.)(embeddings\.patch_embeddings\..*|encoder\.layers?\.\d+\.(attention|self_attn)\..*))");
  for (const auto& [k, v] : tensors)
    if (std::regex_match(k, hf_transformers))
      throw Error(origin + ": tensor '" + k + "' is in Hugging Face transformers' layout (separate query/key/value "
                  "projections), which is not read; use the timm weights of the same model (hf.co/timm/...)");

  const KeyLayout* layout = &key_layouts().back();
  for (const auto& l : key_layouts()) {
    bool hit = false;
    for (const auto& m : l.markers) {
      std::regex re(m);
      for (const auto& [k, v] : tensors)
        if (std::regex_match(k, re)) {
          hit = true;
          break;
        }
      if (hit) break;
    }
    if (hit) {
      layout = &l;
      break;
    }
  }
  c.layout = layout->name;

  std::vector<std::pair<std::regex, const RenameRule*>> rules;
  for (const auto& r : layout->rules) rules.emplace_back(std::regex(r.pattern), &r);
  std::vector<std::regex> ignore;
  for (const auto& i : layout->ignore) ignore.emplace_back(i);

  std::map<std::string, std::string> source_of;
  int renamed = 0, dropped = 0;
  for (auto& [k, v] : tensors) {
    bool skip = false;
    for (const auto& re : ignore)
      if (std::regex_match(k, re)) skip = true;
    if (skip) {
      c.ignored.push_back(k);
      ++dropped;
      continue;
    }
    std::string name = k;
    torch::Tensor t = v;
    for (const auto& [re, rule] : rules)
      if (std::regex_match(k, re)) {
        name = std::regex_replace(k, re, rule->replacement);
        t = apply_op(v, rule->op, k, origin);
        ++renamed;
        break;
      }
    auto [it, fresh] = source_of.emplace(name, k);
    if (!fresh)
      throw Error(origin + ": tensors '" + it->second + "' and '" + k + "' both map to '" + name + "'");
    c.tensors.emplace_back(name, t);
  }
  if (renamed) c.notes.push_back("converted " + std::to_string(renamed) + " tensor names from the " + c.layout + " layout");
  if (dropped) c.notes.push_back("ignored " + std::to_string(dropped) + " tensors that are not part of the ViT encoder");
  return c;
}

torch::Tensor resample_pos_embed(const torch::Tensor& pos, int64_t new_h, int64_t new_w, int64_t num_prefix,
                                 bool antialias) {
  if (pos.dim() != 3 || pos.size(0) != 1)
    throw Error("pos_embed has shape " + shape_str(pos.sizes()) + "; expected [1, tokens, dim]");
  const int64_t grid_tokens = pos.size(1) - num_prefix, D = pos.size(2);
  const auto hw = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(std::max<int64_t>(grid_tokens, 0)))));
  if (grid_tokens <= 0 || hw * hw != grid_tokens)
    throw Error("pos_embed has shape " + shape_str(pos.sizes()) + ": " + std::to_string(grid_tokens) +
                " grid tokens after " + std::to_string(num_prefix) + " prefix token(s) is not a square grid");
  if (new_h <= 0 || new_w <= 0) throw Error("pos_embed: the new grid must be positive");
  if (hw == new_h && hw == new_w) return pos;
  torch::NoGradGuard ng;
  auto prefix = pos.slice(1, 0, num_prefix);
  auto grid = pos.slice(1, num_prefix).to(torch::kFloat).reshape({1, hw, hw, D}).permute({0, 3, 1, 2});
  grid = F::interpolate(grid, F::InterpolateFuncOptions()
                                  .size(std::vector<int64_t>{new_h, new_w})
                                  .mode(torch::kBicubic)
                                  .align_corners(false)
                                  .antialias(antialias));
  grid = grid.permute({0, 2, 3, 1}).reshape({1, new_h * new_w, D}).to(pos.scalar_type());
  return torch::cat({prefix, grid}, 1).contiguous();
}

void fit_to_config(Conversion& c, ViTConfig& cfg, const std::string& origin) {
  auto find = [&](const std::string& name) -> torch::Tensor* {
    for (auto& [k, v] : c.tensors)
      if (k == name) return &v;
    return nullptr;
  };
  if (auto* pos = find("pos_embed")) {
    const int64_t prefix = cfg.num_prefix_tokens();
    if (pos->dim() == 3 && pos->size(0) == 1 && pos->size(2) == cfg.embed_dim && pos->size(1) != cfg.num_tokens()) {
      const int64_t n = pos->size(1) - prefix;
      const auto g = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(std::max<int64_t>(n, 0)))));
      if (n > 0 && g * g == n) {
        *pos = resample_pos_embed(*pos, cfg.grid_size(), cfg.grid_size(), prefix);
        c.notes.push_back("resampled pos_embed from a " + std::to_string(g) + "x" + std::to_string(g) + " to a " +
                          std::to_string(cfg.grid_size()) + "x" + std::to_string(cfg.grid_size()) +
                          " grid (bicubic, as timm)");
      }
    }
  }
  auto* hw = find("head.weight");
  const bool hb = find("head.bias") != nullptr;
  if (hw) {
    if (hw->dim() == 2 && hw->size(1) == cfg.embed_dim && (hw->size(0) != cfg.num_classes || hb != cfg.head_bias)) {
      c.notes.push_back("the classifier follows the file: " + std::to_string(hw->size(0)) + " outputs" +
                        (hb ? "" : ", no bias") + " (the architecture says " + std::to_string(cfg.num_classes) + ")");
      cfg.num_classes = hw->size(0);
      cfg.head_bias = hb;
    }
  } else if (cfg.num_classes > 0 && !hb) {
    c.notes.push_back("the file has no classifier: features only");
    cfg.num_classes = 0;
  }
  (void)origin;
}

}  // namespace hd::model
