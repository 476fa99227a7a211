// `features`: run a model on given images and dump features and per-layer taps, so users can
// check parity with their Python models.
#include <cstdio>

#include <torch/torch.h>

#include "app/commands.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "util/error.h"
#include "util/timer.h"

namespace hd::cli {

void add_features(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "features",
      "Run a model on float32 `images` [B,C,H,W] (already normalised) and write `features` [B,N,D] "
      "(after the final norm) plus, per requested block i: block.i, msa.i, relation.i "
      "(Q.K^T * head_dim^-0.5, the softmax input) and attn.i. N includes CLS at index 0.");
  struct Opts {
    std::string checkpoint, arch, input, out, layers = "all";
    bool no_attn = false;
    int64_t batch = 64;
    Runtime rt;
  };
  auto o = std::make_shared<Opts>();
  sub->add_option("-c,--checkpoint", o->checkpoint, "model .safetensors")->required();
  sub->add_option("-a,--arch", o->arch, "model preset; default: the config stored in the checkpoint");
  sub->add_option("-i,--input", o->input, ".safetensors with a float32 tensor `images` [B,C,H,W]")->required();
  sub->add_option("-o,--out", o->out, "output .safetensors")->required();
  sub->add_option("-l,--layers", o->layers, "blocks to tap: all, none, or a list such as 0,5,9-11 (-1 = last)");
  sub->add_flag("--no-attn", o->no_attn, "skip the [B,H,N,N] relation/attn tensors (they dominate the file size)");
  sub->add_option("-b,--batch", o->batch, "images per forward pass (bounds memory)")->check(CLI::PositiveNumber);
  o->rt.precision = "fp32";  // parity dumps: exact unless bf16 is asked for
  add_model_runtime_options(sub, o->rt);
  sub->callback([o] {
    auto device = apply_runtime(o->rt);
    const auto precision = precision_of(o->rt, device);
    if (precision == train::Precision::FP32) train::disable_tf32();
    Timer timer;
    auto model = model::load_model(o->checkpoint, o->arch);
    model->eval();
    model->to(device);
    const auto& cfg = model->config();
    double t_load = timer.seconds();

    auto in = io::SafeTensorsFile::open(o->input);
    if (!in.contains("images"))
      throw Error(o->input + ": no tensor named 'images' (expected float32 [B,C,H,W])");
    auto images = in.load("images");
    if (images.scalar_type() != torch::kFloat)
      throw Error(o->input + ": 'images' must be F32, found " + in.info("images").dtype);
    if (images.dim() != 4 || images.size(1) != cfg.in_chans || images.size(2) != cfg.img_size ||
        images.size(3) != cfg.img_size) {
      std::ostringstream s;
      s << images.sizes();
      throw Error(o->input + ": 'images' has shape " + s.str() + " but model '" + cfg.name + "' expects [B, " +
                  std::to_string(cfg.in_chans) + ", " + std::to_string(cfg.img_size) + ", " +
                  std::to_string(cfg.img_size) + "]");
    }

    auto layers = parse_layers(o->layers, cfg.depth, "--layers");
    model::TapSpec spec;
    for (auto l : layers) {
      spec.block.insert(l);
      spec.msa.insert(l);
      if (!o->no_attn) {
        spec.relation.insert(l);
        spec.attn.insert(l);
      }
    }
    timer.reset();
    // Forward in chunks; gather each output on the CPU.
    std::map<std::string, std::vector<torch::Tensor>> parts;
    torch::NoGradGuard ng;
    const int64_t B = images.size(0);
    for (int64_t s = 0; s < B; s += o->batch) {
      auto x = images.slice(0, s, std::min(B, s + o->batch)).to(device);
      model::Taps taps;
      {
        train::AutocastScope autocast(device, precision == train::Precision::BF16);
        taps = model->forward_taps(x, spec);
      }
      // Written as float32 whatever the precision of the forward (bf16 -> fp32 is exact).
      auto cpu = [](const torch::Tensor& t) { return t.to(torch::kCPU, torch::kFloat); };
      parts["features"].push_back(cpu(taps.features));
      auto put = [&](const char* kind, const std::map<int64_t, torch::Tensor>& m) {
        for (const auto& [l, t] : m) parts[std::string(kind) + "." + std::to_string(l)].push_back(cpu(t));
      };
      put("block", taps.block);
      put("msa", taps.msa);
      put("relation", taps.relation);
      put("attn", taps.attn);
    }
    double t_fwd = timer.seconds();
    std::vector<std::pair<std::string, torch::Tensor>> out;
    out.emplace_back("features", torch::cat(parts["features"], 0));
    for (auto l : layers)
      for (const char* kind : {"block", "msa", "relation", "attn"}) {
        auto key = std::string(kind) + "." + std::to_string(l);
        if (parts.count(key)) out.emplace_back(key, torch::cat(parts[key], 0));
      }
    io::save_safetensors(o->out, out,
                         {{"checkpoint", o->checkpoint},
                          {model::kConfigMetaKey, cfg.to_json()},
                          {"precision", train::to_string(precision)}});
    std::printf("%s: %ld images through %s in %.3f s (load %.3f s); wrote %zu tensors to %s\n", o->input.c_str(),
                (long)B, cfg.name.c_str(), t_fwd, t_load, out.size(), o->out.c_str());
  });
}

}  // namespace hd::cli
