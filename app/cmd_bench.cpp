// `bench`: forward and forward+backward throughput of model presets, next to the Python PyTorch
// reference (bench/vit_reference.py) measured in the same run with the same thread count.
#include <cstdio>
#include <cstdlib>
#include <memory>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "app/commands.h"
#include "model/vit.h"
#include "util/subprocess.h"
#include "util/timer.h"

namespace hd::cli {

namespace {

// Forward FLOPs per image (multiply-add = 2 FLOPs): patch embedding, qkv, attention matrices,
// projection, MLP. LayerNorm, softmax and the head are negligible.
double forward_flops(const model::ViTConfig& c) {
  const double N = static_cast<double>(c.num_tokens()), D = static_cast<double>(c.embed_dim);
  const double P = static_cast<double>(c.num_patches());
  const double H = static_cast<double>(c.mlp_hidden());
  double embed = 2.0 * P * (c.in_chans * c.patch_size * c.patch_size) * D;
  double block = 2.0 * N * D * 3 * D + 2.0 * 2.0 * N * N * D + 2.0 * N * D * D + 2.0 * 2.0 * N * D * H;
  return embed + c.depth * block;
}

template <class F>
double time_per_iter(F&& fn, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) fn();
  Timer t;
  for (int i = 0; i < iters; ++i) fn();
  return t.seconds() / iters;
}

nlohmann::json run_python(const model::ViTConfig& c, int64_t batch, int threads, int warmup, int iters,
                          train::Precision precision) {
  return json_result_of("/usr/bin/python3 '" + source_dir() + "/bench/vit_reference.py' --config '" + c.to_json() +
                            "' --batch " + std::to_string(batch) + " --threads " + std::to_string(threads) +
                            " --warmup " + std::to_string(warmup) + " --iters " + std::to_string(iters) +
                            " --precision " + train::to_string(precision) + " 2>/dev/null",
                        "python reference");
}

}  // namespace

void add_bench(CLI::App& app) {
  auto* sub = app.add_subcommand("bench", "Forward and forward+backward images/s of model presets, with the "
                                          "Python PyTorch reference measured in the same run");
  struct Opts {
    std::vector<std::string> arch{"vit_tiny_patch4_28", "vit_small_patch16_224"};
    int64_t batch = 64;
    int warmup = 2, iters = 5;
    bool no_python = false;
    Runtime rt;
  };
  auto o = std::make_shared<Opts>();
  sub->add_option("-a,--arch", o->arch, "model presets")->delimiter(',');
  sub->add_option("-b,--batch", o->batch, "images per step")->check(CLI::PositiveNumber);
  sub->add_option("-w,--warmup", o->warmup, "untimed warm-up steps");
  sub->add_option("-n,--iters", o->iters, "timed steps")->check(CLI::PositiveNumber);
  sub->add_flag("--no-python", o->no_python, "skip the Python PyTorch reference");
  add_model_runtime_options(sub, o->rt);
  sub->callback([o] {
    auto device = apply_runtime(o->rt);
    const auto precision = precision_of(o->rt, device);
    const bool bf16 = precision == train::Precision::BF16;
    int threads = torch::get_num_threads();
    std::printf("hybrid-distill bench: LibTorch %s, %d threads, device %s, batch %ld, %s%s\n", TORCH_VERSION, threads,
                device.str().c_str(), (long)o->batch, train::to_string(precision).c_str(),
                bf16 ? " (autocast, fp32 weights)" : "");
    // libgomp reads its wait policy once, at load: unset means worker threads spin after each
    // parallel region (and the OpenBLAS pool spins too), which on cores shared with other work
    // costs more than the kernels: OMP_WAIT_POLICY=passive measured ~3x faster at 2 threads on a
    // busy 2-core machine. It cannot be changed from inside the process; the Python run inherits it.
    const char* wp = std::getenv("OMP_WAIT_POLICY");
    std::printf("OMP_WAIT_POLICY=%s (Python reference runs with the same environment)\n", wp ? wp : "unset");
    std::printf("%-26s %-9s %10s %9s %12s %10s\n", "preset", "pass", "C++ img/s", "GFLOP/s", "Python img/s",
                "C++/Python");
    for (const auto& name : o->arch) {
      auto cfg = model::preset(name);
      torch::manual_seed(0);
      model::VisionTransformer m(cfg);
      m->to(device);
      auto x = torch::randn({o->batch, cfg.in_chans, cfg.img_size, cfg.img_size}, torch::device(device));
      auto sync = [&] {
        if (device.is_cuda()) torch::cuda::synchronize();
      };
      m->eval();
      double t_fwd = time_per_iter(
          [&] {
            torch::NoGradGuard ng;
            train::AutocastScope autocast(device, bf16);
            m->forward(x);
            sync();
          },
          o->warmup, o->iters);
      m->train();
      double t_train = time_per_iter(
          [&] {
            // set_to_none, as the Python reference's `p.grad = None`: LibTorch 1.13's default
            // zero_grad() fills every gradient with zeros and backward then accumulates into
            // them (fill_ + add_ per parameter) instead of taking over the fresh buffers.
            m->zero_grad(/*set_to_none=*/true);
            torch::Tensor y;
            {
              train::AutocastScope autocast(device, bf16);
              y = m->forward(x);
            }
            y.to(torch::kFloat).pow(2).mean().backward();
            sync();
          },
          o->warmup, o->iters);
      nlohmann::json py = nullptr;
      if (!o->no_python && device.is_cpu()) py = run_python(cfg, o->batch, threads, o->warmup, o->iters, precision);
      double flops = forward_flops(cfg);
      auto row = [&](const char* pass, double t, double mult, const char* pykey) {
        double ips = o->batch / t;
        char pybuf[32] = "-", ratio[32] = "-";
        if (py.is_object()) {
          double pips = py[pykey].get<double>();
          std::snprintf(pybuf, sizeof pybuf, "%.1f", pips);
          std::snprintf(ratio, sizeof ratio, "%.2fx", ips / pips);
        }
        std::printf("%-26s %-9s %10.1f %9.1f %12s %10s\n", name.c_str(), pass, ips, ips * flops * mult / 1e9, pybuf,
                    ratio);
      };
      row("forward", t_fwd, 1.0, "forward_ips");
      row("fwd+bwd", t_train, 3.0, "train_ips");
      std::fflush(stdout);
    }
  });
}

}  // namespace hd::cli
