// Distillation step throughput (images/s), in one run with one thread count:
//   (a) student forward+backward on the tokens progressive masking keeps (70%^3 of the patches,
//       + CLS) vs on all tokens;
//   (b) a full hybrid step (MIM teacher relations at blocks L-3, L-2 + supervised teacher
//       LayerNorm-whitened features, progressive redundant token masking from the MIM teacher's
//       block inputs at {0, L/3, 2L/3}, smooth L1 beta 2, backward, grad clip 3.0, AdamW) vs a
//       single-teacher step (features target only, the same masking from that teacher);
//   (c) per-phase time of the hybrid step (teachers + mask, student forward + loss, backward,
//       clip + AdamW), its model FLOPs and achieved GFLOP/s next to the measured fp32 and bf16
//       GEMM peaks at the same thread count, and the process's peak memory;
//   (d) the same four computations in Python PyTorch (bench/hybrid_step.py, /usr/bin/python3),
//       on the same weights and images, with the same threads and batch; the first two losses
//       of each step kind are printed from both sides as a check that they compute the same thing.
//
// Teachers are random-init (timm init) models written to temporary checkpoints; the recipes are
// YAML text parsed by distill::parse_recipe, so the step is exactly what `hybrid-distill distill`
// runs per batch (data loading excluded).
//
// Usage: bench_distill [--arch A] [--student-arch A] [--teacher-arch A] [--batch N] [--threads T]
//                      [--warmup W] [--iters N] [--rounds R] [--precision fp32|bf16] [--no-python]
//   bf16: teachers in bf16, the student under bf16 autocast (fp32 master weights), on both sides.
//   default: student and both teachers vit_tiny_patch4_28, batch 64, all hardware threads.
//   ViT-S/16 224: --arch vit_small_patch16_224 --batch 16 --warmup 1 --iters 3
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/cuda.h>
#include <torch/torch.h>
#include <torch/version.h>

#include "distill/hybrid.h"
#include "distill/masking.h"
#include "distill/recipe.h"
#include "distill/task.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/vit.h"
#include "train/optim.h"
#include "train/precision.h"
#include "train/step.h"
#include "util/error.h"
#include "util/subprocess.h"
#include "util/threads.h"
#include "util/timer.h"

namespace fs = std::filesystem;
using namespace hd;

namespace {

struct Opts {
  std::string student_arch = "vit_tiny_patch4_28", teacher_arch = "vit_tiny_patch4_28";
  int64_t batch = 64;
  int threads = 0;
  int warmup = 2, iters = 5, rounds = 2;
  bool python = true;
  double lr = 1e-3;
  bool bf16 = false;
  std::string device = "cpu";
};

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr,
               "%s\nusage: bench_distill [--arch A] [--student-arch A] [--teacher-arch A] [--batch N] "
               "[--threads T] [--warmup W] [--iters N] [--rounds R] [--precision fp32|bf16] [--device cpu|cuda] "
               "[--no-python]\n",
               msg);
  std::exit(2);
}

Opts parse(int argc, char** argv) {
  Opts o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value after " + a).c_str());
      return argv[++i];
    };
    if (a == "--arch") o.student_arch = o.teacher_arch = val();
    else if (a == "--student-arch") o.student_arch = val();
    else if (a == "--teacher-arch") o.teacher_arch = val();
    else if (a == "--batch" || a == "-b") o.batch = std::stoll(val());
    else if (a == "--threads" || a == "-t") o.threads = std::stoi(val());
    else if (a == "--warmup" || a == "-w") o.warmup = std::stoi(val());
    else if (a == "--iters" || a == "-n") o.iters = std::stoi(val());
    else if (a == "--rounds" || a == "-r") o.rounds = std::stoi(val());
    else if (a == "--lr") o.lr = std::stod(val());
    else if (a == "--no-python") o.python = false;
    else if (a == "--device") o.device = val();
    else if (a == "--precision") {
      auto v = val();
      if (v != "fp32" && v != "bf16") usage("--precision: fp32 or bf16");
      o.bf16 = v == "bf16";
    }
    else if (a == "-h" || a == "--help") usage("");
    else usage(("unknown option " + a).c_str());
  }
  if (o.batch <= 0 || o.iters <= 0 || o.rounds <= 0 || o.warmup < 0) usage("batch, iters and rounds must be positive");
  return o;
}

// The recipe of one step kind. `hybrid`: MIM teacher (relations) + supervised teacher
// (features), masking driven by the MIM teacher; otherwise the supervised teacher alone, which
// then drives the same progressive masking.
std::string recipe_text(const Opts& o, const std::string& dir, bool hybrid, const model::ViTConfig& tc) {
  const std::string rel_layers = "[" + std::to_string(tc.depth - 3) + ", " + std::to_string(tc.depth - 2) + "]";
  // Relations between models with different head counts are compared head-averaged.
  const bool avg = model::preset(o.student_arch).num_heads != tc.num_heads;
  std::string t = "name: bench_" + std::string(hybrid ? "hybrid" : "single") + "\n";
  t += "student: {arch: " + o.student_arch + "}\n";
  t += "teachers:\n";
  if (hybrid)
    t += "  - {name: mim, checkpoint: " + dir + "/mim.safetensors, targets: [{kind: relation, layers: " + rel_layers +
         (avg ? ", head_mapping: average" : "") + "}]}\n";
  t += "  - {name: sup, checkpoint: " + dir + "/sup.safetensors, targets: [{kind: features, norm: layernorm}]}\n";
  t += "masking: {strategy: progressive, teacher: " + std::string(hybrid ? "mim" : "sup") + ", drop_ratio: 0.3}\n";
  t += "loss: {type: smooth_l1, beta: 2.0}\n";
  t += "optim: {weight_decay: 0.05, betas: [0.9, 0.999], eps: 1.0e-8, clip_grad: 3.0}\n";
  t += "train: {batch: " + std::to_string(o.batch) + "}\n";
  return t;
}

// One distillation step: the trainer's own step (train::TrainStep: autocast forward and loss,
// backward, grad clipping, AdamW over every trainable parameter of the distiller with its decay
// groups) on a DistillTask, as `hybrid-distill distill` runs it per batch.
struct Stepper {
  std::unique_ptr<distill::DistillTask> task;
  std::unique_ptr<train::TrainStep> step_;
  double lr = 1e-3;
  int64_t steps = 0;
  // Seconds of the last step's phases: forward (teachers, mask, student, loss), backward, clip + AdamW.
  double t_fwd = 0, t_bwd = 0, t_opt = 0;

  c10::Device device;
  Stepper(const distill::Recipe& r, const std::string& student_ckpt, double lr_, train::Precision precision,
          const c10::Device& dev)
      : lr(lr_), device(dev) {
    auto student = model::load_model(student_ckpt);
    task = std::make_unique<distill::DistillTask>(
        distill::HybridDistiller(r, student, distill::load_teachers(r, device, train::inference_dtype(precision))));
    // The recipe's optimiser settings as `distill` derives them; the benchmark's fixed rate.
    auto tc = distill::train_config(r, "");
    tc.lr = lr;
    tc.precision = precision;
    tc.device = device;
    step_ = std::make_unique<train::TrainStep>(*task, train::step_config(tc));
  }
  distill::HybridDistiller& d() { return task->distiller(); }
  double step(const torch::Tensor& images) {
    data::Batch b;
    b.images = images;
    b.labels = torch::zeros({images.size(0)}, torch::kLong);
    auto s = step_->run(b, lr, steps++);
    if (device.is_cuda()) torch::cuda::synchronize();  // phases and step times include the GPU's work
    t_fwd = s.t_forward;
    t_bwd = s.t_backward;
    t_opt = s.t_optimizer;
    return s.loss;
  }
  // The teachers' part of the forward (full image, the recipe's layers, mask), timed alone.
  double teachers_seconds(const torch::Tensor& images) {
    Timer t;
    torch::NoGradGuard ng;
    std::vector<torch::Tensor> inputs;
    std::vector<model::Taps> taps;
    auto& dd = d();
    for (size_t ti = 0; ti < dd->teachers().size(); ++ti) {
      auto& m = dd->teachers()[ti].model;
      inputs.push_back(images.to(dd->teachers()[ti].dtype));
      taps.push_back(m->forward_taps(inputs.back(), dd->teacher_tap_spec(ti)));
    }
    dd->compute_mask(inputs, taps, images.size(0), c10::nullopt);
    if (device.is_cuda()) torch::cuda::synchronize();
    return t.seconds();
  }
  // Trainable tensors with their distiller names (student.*, proj_*), for the Python side.
  std::vector<std::pair<std::string, torch::Tensor>> trainables() {
    std::vector<std::pair<std::string, torch::Tensor>> out;
    for (auto& p : d()->named_parameters())
      if (p.value().requires_grad()) out.emplace_back(p.key(), p.value().detach().cpu().clone());
    return out;
  }
};

nlohmann::json run_python(const std::string& script, const std::string& dir, const Opts& o, int threads) {
  return hd::json_result_of("/usr/bin/python3 '" + script + "' --dir '" + dir + "' --threads " + std::to_string(threads) +
                                " --warmup " + std::to_string(o.warmup) + " --iters " + std::to_string(o.iters) +
                                (o.bf16 ? " --precision bf16" : "") + " --device " + o.device,
                            "python reference");
}

// Achieved GFLOP/s of an n x n x n matrix product in `dtype` (the machine's GEMM peak as LibTorch
// reaches it, at the current thread count).
double gemm_gflops(torch::ScalarType dtype, const c10::Device& device, int64_t n = 1024) {
  if (device.is_cuda()) n = 8192;  // a GPU needs a large product to reach its peak
  auto a = torch::randn({n, n}).to(device, dtype), b = torch::randn({n, n}).to(device, dtype);
  auto sync = [&] {
    if (device.is_cuda()) torch::cuda::synchronize();
  };
  for (int i = 0; i < 2; ++i) torch::mm(a, b);
  sync();
  int reps = 0;
  Timer t;
  while (t.seconds() < 1.0 || reps < 3) {
    torch::mm(a, b);
    ++reps;
    sync();
  }
  return 2.0 * static_cast<double>(n * n * n) * reps / t.seconds() / 1e9;
}

// Multiply-add FLOPs (x2) of a ViT forward over `tokens` tokens through `blocks` blocks, patch
// embedding of `patches` patches included (matrix products and attention; elementwise work
// ignored, as MFU conventions do).
double vit_forward_flops(const model::ViTConfig& c, int64_t tokens, int64_t patches, int64_t blocks) {
  const double D = static_cast<double>(c.embed_dim), N = static_cast<double>(tokens);
  const double hidden = static_cast<double>(c.mlp_hidden());
  const double per_block = 2 * N * (3 * D * D + D * D + 2 * D * hidden) + 2 * 2 * N * N * D;
  const double embed = 2.0 * static_cast<double>(patches) * c.in_chans * c.patch_size * c.patch_size * D;
  return embed + per_block * static_cast<double>(blocks);
}

}  // namespace

int main(int argc, char** argv) {
  // As hybrid-distill itself: passive OpenMP waiting unless the user set a policy (re-executes
  // once). The Python reference inherits the environment, so both sides run with the same one.
  hd::ensure_passive_openmp(argv);
  Opts o = parse(argc, argv);
  try {
    const int threads = set_threads(o.threads);
    char tmpl[] = "/tmp/hd_bench_distill_XXXXXX";
    if (!mkdtemp(tmpl)) throw Error("cannot create a temporary directory");
    const std::string dir = tmpl;
    struct Cleanup {
      std::string d;
      ~Cleanup() {
        std::error_code ec;
        fs::remove_all(d, ec);
      }
    } cleanup{dir};

    // Random-init teachers (no classifier head) and the initial student, as checkpoints.
    auto tcfg = model::preset(o.teacher_arch);
    tcfg.num_classes = 0;
    torch::manual_seed(1);
    model::VisionTransformer mim(tcfg);
    model::save_model(dir + "/mim.safetensors", mim);
    torch::manual_seed(2);
    model::VisionTransformer sup(tcfg);
    model::save_model(dir + "/sup.safetensors", sup);

    auto hybrid_recipe = distill::parse_recipe(recipe_text(o, dir, true, tcfg), "bench hybrid recipe", dir);
    auto single_recipe = distill::parse_recipe(recipe_text(o, dir, false, tcfg), "bench single recipe", dir);
    const auto& scfg = hybrid_recipe.student;
    torch::manual_seed(0);
    model::VisionTransformer student0(scfg);
    model::save_model(dir + "/student.safetensors", student0);

    torch::manual_seed(3);
    const c10::Device device(o.device);
    if (device.is_cuda() && !torch::cuda::is_available()) throw Error("--device " + o.device + ": no CUDA device");
    auto images = torch::randn({o.batch, scfg.in_chans, scfg.img_size, scfg.img_size}).to(device);
    const int64_t P = scfg.num_patches();
    int64_t kept = P;
    for (size_t i = 0; i < hybrid_recipe.mask.layers.size(); ++i) kept = distill::kept_after_step(kept, hybrid_recipe.mask.drop_ratio);

    std::printf("bench_distill: LibTorch %s, %d threads, batch %ld, %s, OMP_WAIT_POLICY=%s\n", TORCH_VERSION, threads,
                (long)o.batch, o.bf16 ? "bf16 (autocast student, bf16 teachers)" : "fp32", std::getenv("OMP_WAIT_POLICY") ? std::getenv("OMP_WAIT_POLICY") : "unset");
    std::printf("student %s, teachers 2 x %s (random init), %ld patches -> %ld kept (%.1f%%, progressive 70%%^%zu), "
                "relations at teacher blocks %ld,%ld\n",
                o.student_arch.c_str(), o.teacher_arch.c_str(), (long)P, (long)kept, 100.0 * kept / P,
                hybrid_recipe.mask.layers.size(), (long)tcfg.depth - 3, (long)tcfg.depth - 2);
    std::fflush(stdout);

    // (a) Student forward+backward, all tokens vs the kept count.
    auto s = model::load_model(dir + "/student.safetensors");
    s->train();
    auto keep = distill::random_keep(o.batch, P, kept, device);
    auto fb = [&](const torch::Tensor& k) {
      s->zero_grad(/*set_to_none=*/true);
      torch::Tensor l;
      {
        train::AutocastScope autocast(device, o.bf16);
        l = s->forward_features(images, k).to(torch::kFloat).pow(2).mean();
      }
      l.backward();
      if (device.is_cuda()) torch::cuda::synchronize();
    };
    // (b) Full steps. The first two losses (before / after one update) are the check against Python.
    const auto precision = o.bf16 ? train::Precision::BF16 : train::Precision::FP32;
    Stepper hybrid(hybrid_recipe, dir + "/student.safetensors", o.lr, precision, device);
    Stepper single(single_recipe, dir + "/student.safetensors", o.lr, precision, device);
    io::save_safetensors(dir + "/hybrid_trainable.safetensors", hybrid.trainables());
    io::save_safetensors(dir + "/single_trainable.safetensors", single.trainables());
    const double hl0 = hybrid.step(images), hl1 = hybrid.step(images);
    const double sl0 = single.step(images), sl1 = single.step(images);

    // (c) Python on the same files.
    const std::string script = (fs::path(__FILE__).parent_path() / "hybrid_step.py").string();
    if (o.python) {
      io::save_safetensors(dir + "/images.safetensors", {{"images", images.cpu()}});
      nlohmann::json spec = {
          {"student", nlohmann::json::parse(scfg.to_json())},
          {"teacher", nlohmann::json::parse(tcfg.to_json())},
          {"kept", kept},
          {"mask_layers", hybrid_recipe.mask.layers},
          {"single_mask_layers", single_recipe.mask.layers},
          {"drop_ratio", hybrid_recipe.mask.drop_ratio},
          {"relation_layers", {tcfg.depth - 3, tcfg.depth - 2}},
          {"head_average", scfg.num_heads != tcfg.num_heads},
          {"beta", hybrid_recipe.smooth_l1_beta},
          {"lr", o.lr},
          {"weight_decay", hybrid_recipe.optim.weight_decay},
          {"betas", {hybrid_recipe.optim.beta1, hybrid_recipe.optim.beta2}},
          {"eps", hybrid_recipe.optim.eps},
          {"clip_grad", hybrid_recipe.optim.clip_grad},
          {"precision", o.bf16 ? "bf16" : "fp32"},
      };
      std::FILE* f = std::fopen((dir + "/spec.json").c_str(), "w");
      if (!f) throw Error("cannot write " + dir + "/spec.json");
      std::fputs(spec.dump().c_str(), f);
      std::fclose(f);
    }

    // Timing. The machine may be shared with other work whose load comes and goes, so (1) the
    // four kinds run round-robin, step by step, and (2) C++ and Python alternate in rounds;
    // each figure is the median over all its timed steps.
    const std::vector<std::string> kinds{"student_all", "student_keep", "single", "hybrid"};
    std::map<std::string, std::function<void()>> fns{{"student_all", [&] { fb({}); }},
                                                      {"student_keep", [&] { fb(keep); }},
                                                      {"single", [&] { single.step(images); }},
                                                      {"hybrid", [&] { hybrid.step(images); }}};
    std::map<std::string, std::vector<double>> ct, pt;
    std::vector<double> ph_fwd, ph_bwd, ph_opt, ph_teach;
    nlohmann::json py = nullptr;
    for (const auto& k : kinds)
      for (int i = 0; i < o.warmup; ++i) fns[k]();
    for (int round = 0; round < o.rounds; ++round) {
      for (int i = 0; i < o.iters; ++i)
        for (const auto& k : kinds) {
          Timer tm;
          fns[k]();
          ct[k].push_back(tm.seconds());
          if (k == "hybrid") {
            ph_fwd.push_back(hybrid.t_fwd);
            ph_bwd.push_back(hybrid.t_bwd);
            ph_opt.push_back(hybrid.t_opt);
            ph_teach.push_back(hybrid.teachers_seconds(images));
          }
        }
      if (o.python) {
        auto r = run_python(script, dir, o, threads);
        if (!r.is_object()) {
          std::printf("Python reference: no result\n");
          o.python = false;
          continue;
        }
        py = r;
        for (const auto& k : kinds)
          for (const auto& t : r["times"][k]) pt[k].push_back(t.get<double>());
      }
      std::printf("round %d/%d done\n", round + 1, o.rounds);
      std::fflush(stdout);
    }
    auto median = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v.empty() ? 0.0 : v[v.size() / 2];
    };
    auto ips = [&](double t) { return static_cast<double>(o.batch) / t; };
    std::map<std::string, double> cm, pm;
    for (const auto& k : kinds) {
      cm[k] = median(ct[k]);
      if (!pt[k].empty()) pm[k] = median(pt[k]);
    }

    std::printf("\n%-38s %10s %14s %12s %14s %10s\n", "step", "C++ img/s", "C++ ratio", "Python img/s", "Python ratio",
                "C++/Python");
    auto ratio = [](const std::map<std::string, double>& m, const std::string& a, const std::string& b,
                    const char* word) -> std::string {
      if (!m.count(a) || !m.count(b)) return "-";
      char buf[48];
      std::snprintf(buf, sizeof buf, "%.2fx %s", m.at(a) / m.at(b), word);
      return buf;
    };
    auto row = [&](const std::string& what, const std::string& k, const std::string& cr, const std::string& pr) {
      char pyb[32] = "-", cmp[32] = "-";
      if (pm.count(k)) {
        std::snprintf(pyb, sizeof pyb, "%.*f", ips(pm[k]) < 10 ? 2 : 1, ips(pm[k]));
        std::snprintf(cmp, sizeof cmp, "%.2fx", pm[k] / cm[k]);
      }
      std::printf("%-38s %10.*f %14s %12s %14s %10s\n", what.c_str(), ips(cm[k]) < 10 ? 2 : 1, ips(cm[k]), cr.c_str(), pyb,
                  pr.c_str(), cmp);
    };
    char kept_label[64];
    std::snprintf(kept_label, sizeof kept_label, "student fwd+bwd, %ld/%ld patches+CLS", (long)kept, (long)P);
    row("student fwd+bwd, all tokens", "student_all", "1", "1");
    row(kept_label, "student_keep", ratio(cm, "student_all", "student_keep", "faster"),
        ratio(pm, "student_all", "student_keep", "faster"));
    row("single-teacher step (features)", "single", "1", "1");
    row("hybrid step (relations+features)", "hybrid", ratio(cm, "hybrid", "single", "cost"),
        ratio(pm, "hybrid", "single", "cost"));
    std::printf("(%d timed steps per kind and side: %d rounds x %d; kept/all ratio = time(all)/time(kept), "
                "hybrid/single = time(hybrid)/time(single);\n a step = teachers + mask + student + loss + backward + "
                "grad clip 3.0 + AdamW, data loading excluded)\n",
                o.rounds * o.iters, o.rounds, o.iters);
    {
      // (c) Where the hybrid step's time goes, and how close it gets to the GEMM peak.
      const double fwd = median(ph_fwd), bwd = median(ph_bwd), opt = median(ph_opt), teach = median(ph_teach);
      const double sum = fwd + bwd + opt;
      const int64_t depth = scfg.depth;
      const double student_f = 3 * vit_forward_flops(scfg, kept + 1, kept, depth);  // forward + 2x backward
      const double mim_f = vit_forward_flops(tcfg, P + 1, P, tcfg.depth - 1);        // up to block L-2
      const double sup_f = vit_forward_flops(tcfg, P + 1, P, tcfg.depth);
      const double step_flops = static_cast<double>(o.batch) * (student_f + mim_f + sup_f);
      const double achieved = step_flops / cm["hybrid"] / 1e9;
      const double peak32 = gemm_gflops(torch::kFloat, device), peak16 = gemm_gflops(torch::kBFloat16, device);
      std::printf("\nhybrid step phases (median): teachers+mask %.1f ms (timed alone), forward incl. teachers %.1f ms "
                  "(%.0f%%), backward %.1f ms (%.0f%%), clip+AdamW %.1f ms (%.0f%%)\n",
                  1e3 * teach, 1e3 * fwd, 100 * fwd / sum, 1e3 * bwd, 100 * bwd / sum, 1e3 * opt, 100 * opt / sum);
      std::printf("hybrid step: %.2f GFLOP (model FLOPs: student fwd+bwd %.2f, MIM teacher %.2f, sup teacher %.2f) "
                  "-> %.1f GFLOP/s achieved\n",
                  step_flops / 1e9, o.batch * student_f / 1e9, o.batch * mim_f / 1e9, o.batch * sup_f / 1e9, achieved);
      std::printf("GEMM peak (1024^3 torch::mm, %d threads): fp32 %.1f GFLOP/s, bf16 %.1f GFLOP/s -> step at %.0f%% of "
                  "the %s peak%s\n",
                  threads, peak32, peak16, 100 * achieved / (o.bf16 ? peak16 : peak32), o.bf16 ? "bf16" : "fp32",
                  train::cpu_has_native_bf16() ? "" : " (this CPU has no native bf16: LibTorch emulates bf16 GEMMs)");
      struct rusage ru {};
      getrusage(RUSAGE_SELF, &ru);
      std::printf("peak resident memory of this process: %.0f MiB (C++ side; the Python reference runs as a child)\n",
                  ru.ru_maxrss / 1024.0);
    }
    std::printf("\nloss check (step 0, step 1 after one AdamW update):\n");
    std::printf("  hybrid  C++ %.6f %.6f", hl0, hl1);
    if (py.is_object()) std::printf("   Python %.6f %.6f", py["hybrid_loss"][0].get<double>(), py["hybrid_loss"][1].get<double>());
    std::printf("\n  single  C++ %.6f %.6f", sl0, sl1);
    if (py.is_object()) std::printf("   Python %.6f %.6f", py["single_loss"][0].get<double>(), py["single_loss"][1].get<double>());
    std::printf("\n");
    if (py.is_object()) std::printf("Python: torch %s, %d threads\n", py["torch"].get<std::string>().c_str(), py["threads"].get<int>());
    else if (o.python) std::printf("Python reference: no result\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_distill: %s\n", e.what());
    return 1;
  }
  return 0;
}
