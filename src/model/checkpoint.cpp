#include "model/checkpoint.h"

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "io/safetensors.h"
#include "model/interop.h"
#include "model/timm_hub.h"
#include "util/error.h"

namespace hd::model {

namespace {
std::string shape_str(c10::IntArrayRef s) {
  std::ostringstream o;
  o << s;
  return o.str();
}
}  // namespace

NamedTensors state_dict(const torch::nn::Module& model) {
  NamedTensors out;
  for (const auto& p : model.named_parameters(/*recurse=*/true)) out.emplace_back(p.key(), p.value());
  for (const auto& b : model.named_buffers(/*recurse=*/true)) out.emplace_back(b.key(), b.value());
  return out;
}

LoadReport load_state(torch::nn::Module& model, const NamedTensors& tensors, bool strict,
                      const std::string& origin) {
  LoadReport report;
  std::map<std::string, torch::Tensor> targets;
  for (auto& p : model.named_parameters(true)) targets.emplace(p.key(), p.value());
  for (auto& b : model.named_buffers(true)) targets.emplace(b.key(), b.value());

  std::set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    auto it = targets.find(name);
    if (it == targets.end()) {
      report.unexpected.push_back(name);
      continue;
    }
    if (!seen.insert(name).second) throw Error(origin + ": tensor '" + name + "' appears twice");
    if (it->second.sizes() != t.sizes())
      throw Error(origin + ": tensor '" + name + "' has shape " + shape_str(t.sizes()) +
                  " but the model expects " + shape_str(it->second.sizes()));
    if (!t.is_floating_point() && it->second.is_floating_point())
      throw Error(origin + ": tensor '" + name + "' has non-float dtype " + std::string(c10::toString(t.scalar_type())));
  }
  for (const auto& [name, t] : targets)
    if (!seen.count(name)) report.missing.push_back(name);

  if (strict && (!report.missing.empty() || !report.unexpected.empty())) {
    std::string msg = origin + ": checkpoint does not match the model";
    auto list = [&](const char* what, const std::vector<std::string>& v) {
      if (v.empty()) return;
      msg += std::string("; ") + what + " (" + std::to_string(v.size()) + "):";
      for (size_t i = 0; i < v.size() && i < 12; ++i) msg += " " + v[i];
      if (v.size() > 12) msg += " ...";
    };
    list("missing", report.missing);
    list("unexpected", report.unexpected);
    throw Error(msg);
  }

  torch::NoGradGuard guard;
  for (const auto& [name, t] : tensors) {
    auto it = targets.find(name);
    if (it != targets.end()) it->second.copy_(t);
  }
  return report;
}

void save_model(const std::string& path, VisionTransformer& model, const std::map<std::string, std::string>& extra,
                c10::ScalarType dtype) {
  if (dtype != torch::kFloat && dtype != torch::kHalf && dtype != torch::kBFloat16)
    throw Error(path + ": models are saved as F32, F16 or BF16");
  NamedTensors tensors;
  for (auto& [name, t] : state_dict(*model))
    tensors.emplace_back(name, t.detach().to(torch::kCPU, t.is_floating_point() ? dtype : t.scalar_type()));
  std::map<std::string, std::string> meta = extra;
  meta["format"] = "pt";  // what Hugging Face tooling expects of PyTorch-layout safetensors
  meta[kConfigMetaKey] = model->config().to_json();
  io::save_safetensors(path, tensors, meta);
}

ViTConfig checkpoint_config(const std::string& path, const std::string& arch) {
  if (!arch.empty()) return preset(arch);
  if (checkpoint_format(path) == "safetensors") {  // torch.save files carry no architecture
    auto file = io::SafeTensorsFile::open(path);
    auto it = file.metadata().find(kConfigMetaKey);
    if (it != file.metadata().end())
      return ViTConfig::from_json(it->second, path + " (metadata " + kConfigMetaKey + ")");
  }
  const auto hub = std::filesystem::path(path).parent_path() / "config.json";
  if (std::filesystem::is_regular_file(hub)) {
    std::ifstream in(hub);
    std::stringstream text;
    text << in.rdbuf();
    auto j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("architecture")) return config_from_timm_hub(text.str(), hub.string());
  }
  throw Error(path + ": no architecture in the file's metadata; name one with --arch (see `hybrid-distill presets`)");
}

VisionTransformer load_model(const std::string& path, const std::string& arch, bool strict, LoadReport* report) {
  ViTConfig cfg = checkpoint_config(path, arch);
  CheckpointFile file = read_checkpoint_file(path);
  Conversion conv = to_timm_layout(std::move(file.tensors), path);
  fit_to_config(conv, cfg, path);
  VisionTransformer model(cfg);
  LoadReport r = load_state(*model, conv.tensors, strict, path);
  r.ignored = conv.ignored;
  r.notes = file.notes;
  r.notes.insert(r.notes.end(), conv.notes.begin(), conv.notes.end());
  if (report) *report = r;
  return model;
}

}  // namespace hd::model
