// Subcommands about model files: presets, inspect, init, export.
#include <cstdio>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "app/commands.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/interop.h"
#include "model/timm_hub.h"
#include "model/vit.h"
#include "util/format.h"

namespace hd::cli {

namespace {
std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}
}  // namespace

void add_presets(CLI::App& app) {
  auto* sub = app.add_subcommand("presets", "List the named model presets");
  sub->callback([] {
    std::printf("%-34s %5s %6s %5s %5s %5s %6s %12s  %s\n", "preset", "img", "patch", "chans", "dim",
                "depth", "heads", "params", "details");
    for (const auto& name : model::preset_names()) {
      auto c = model::preset(name);
      int64_t params = model::VisionTransformer(c)->num_params();
      std::printf("%-34s %5ld %6ld %5ld %5ld %5ld %6ld %12s  %s eps=%g%s%s classes=%ld\n", name.c_str(),
                  (long)c.img_size, (long)c.patch_size, (long)c.in_chans, (long)c.embed_dim, (long)c.depth,
                  (long)c.num_heads, with_commas(params).c_str(), model::to_string(c.act).c_str(), c.ln_eps,
                  c.norm_pre ? " norm_pre" : "", c.patch_bias ? "" : " no-patch-bias", (long)c.num_classes);
    }
  });
}

void add_inspect(CLI::App& app) {
  auto* sub = app.add_subcommand("inspect", "Show the tensors, dtypes, shapes and metadata of a safetensors file");
  auto file = std::make_shared<std::string>();
  auto json_out = std::make_shared<bool>(false);
  sub->add_option("file", *file, "safetensors file")->required();
  sub->add_flag("--json", *json_out, "print a JSON document instead of a table");
  sub->callback([file, json_out] {
    auto f = io::SafeTensorsFile::open(*file);
    uint64_t params = 0, bytes = 0;
    std::map<std::string, uint64_t> by_dtype;
    for (const auto& t : f.tensors()) {
      uint64_t n = 1;
      for (auto d : t.shape) n *= static_cast<uint64_t>(d);
      params += n;
      bytes += t.end - t.begin;
      by_dtype[t.dtype] += n;
    }
    if (*json_out) {
      nlohmann::json j;
      j["file"] = *file;
      j["file_size"] = f.file_size();
      j["metadata"] = f.metadata();
      j["num_tensors"] = f.tensors().size();
      j["num_elements"] = params;
      for (const auto& t : f.tensors())
        j["tensors"].push_back({{"name", t.name}, {"dtype", t.dtype}, {"shape", t.shape}});
      std::cout << j.dump(2) << "\n";
      return;
    }
    std::printf("%s: %zu tensors, %s elements, %s of data, file %s\n", file->c_str(), f.tensors().size(),
                with_commas(params).c_str(), human_bytes(bytes).c_str(), human_bytes(f.file_size()).c_str());
    for (const auto& [dt, n] : by_dtype) std::printf("  %-5s %s elements\n", dt.c_str(), with_commas(n).c_str());
    if (!f.metadata().empty()) {
      std::printf("metadata:\n");
      for (const auto& [k, v] : f.metadata()) std::printf("  %s: %s\n", k.c_str(), v.c_str());
    }
    std::printf("%-48s %-5s %s\n", "tensor", "dtype", "shape");
    for (const auto& t : f.tensors()) std::printf("%-48s %-5s %s\n", t.name.c_str(), t.dtype.c_str(), shape_str(t.shape).c_str());
    auto cfg = f.metadata().find(model::kConfigMetaKey);
    if (cfg != f.metadata().end()) {
      auto c = model::ViTConfig::from_json(cfg->second, *file);
      std::printf("model: %s, %ld blocks x %ld wide, %ld heads, %ldx%ld input, patch %ld, %s parameters\n",
                  c.name.c_str(), (long)c.depth, (long)c.embed_dim, (long)c.num_heads, (long)c.img_size,
                  (long)c.img_size, (long)c.patch_size, with_commas(params).c_str());
    }
  });
}

void add_init(CLI::App& app) {
  auto* sub = app.add_subcommand("init", "Write a randomly initialised (timm init) model checkpoint");
  struct Opts {
    std::string arch = "vit_tiny_patch4_28", out, dtype = "F32";
    int64_t seed = 0, num_classes = -1;
  };
  auto o = std::make_shared<Opts>();
  sub->add_option("-a,--arch", o->arch, "model preset (see `presets`)");
  sub->add_option("-o,--out", o->out, "output .safetensors file")->required();
  sub->add_option("-s,--seed", o->seed, "random seed");
  sub->add_option("--num-classes", o->num_classes, "classifier classes (-1 = the preset's)");
  sub->add_option("--dtype", o->dtype, "F32, F16 or BF16")->check(CLI::IsMember({"F32", "F16", "BF16"}));
  sub->callback([o] {
    torch::manual_seed(static_cast<uint64_t>(o->seed));
    auto cfg = model::preset(o->arch);
    if (o->num_classes >= 0) cfg.num_classes = o->num_classes;
    model::VisionTransformer m(cfg);
    model::save_model(o->out, m, {{"hybrid_distill.seed", std::to_string(o->seed)}}, io::parse_dtype(o->dtype));
    std::printf("wrote %s (%s, %s parameters)\n", o->out.c_str(), cfg.name.c_str(), with_commas(m->num_params()).c_str());
  });
}

void add_export(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "export", "Write a model in timm's Hugging Face hub layout: DIR/model.safetensors + DIR/config.json");
  struct Opts {
    std::string checkpoint, arch, out;
  };
  auto o = std::make_shared<Opts>();
  sub->add_option("-c,--checkpoint", o->checkpoint,
                  "model file: this project's, or a published one (safetensors or .pth; timm, OpenAI CLIP or "
                  "torchvision names)")
      ->required();
  sub->add_option("-a,--arch", o->arch, "architecture preset, for files that do not describe themselves");
  sub->add_option("-o,--out", o->out, "output folder")->required();
  sub->callback([o] {
    model::LoadReport report;
    auto m = model::load_model(o->checkpoint, o->arch, /*strict=*/true, &report);
    for (const auto& n : report.notes) std::printf("%s: %s\n", o->checkpoint.c_str(), n.c_str());
    auto paths = model::export_timm(m, o->out);
    std::printf("wrote %s and %s (%s, %s parameters)\n", paths[0].c_str(), paths[1].c_str(),
                m->config().name.c_str(), with_commas(m->num_params()).c_str());
  });
}

}  // namespace hd::cli
