// `distill` (train a student from a recipe) and `dump-step` (one forward, every tensor out).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <torch/torch.h>

#include "app/commands.h"
#include "data/dataset.h"
#include "distill/hybrid.h"
#include "distill/recipe.h"
#include "distill/task.h"
#include "distill/teacher_cache.h"
#include "io/safetensors.h"
#include "train/trainer.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/format.h"

namespace hd::cli {

namespace fs = std::filesystem;

namespace {

distill::HybridDistiller build_distiller(const distill::Recipe& r, const c10::Device& device,
                                         train::Precision precision = train::Precision::FP32) {
  torch::manual_seed(r.seed);
  model::VisionTransformer student(r.student);
  auto teachers = distill::load_teachers(r, device, train::inference_dtype(precision));
  distill::HybridDistiller d(r, student, std::move(teachers));
  d->to(device);
  return d;
}
}  // namespace

void add_distill(CLI::App& app) {
  auto* sub = app.add_subcommand("distill", "Train a student ViT from frozen teachers as a recipe describes");
  struct Opts : RunControl {
    std::string recipe, out, teacher_cache;
    double teacher_cache_gb = 20;
    std::vector<std::string> set;
    int64_t max_steps = -1;
    Runtime rt;
  };
  auto o = std::make_shared<Opts>();
  sub->add_option("-r,--recipe", o->recipe, "recipe YAML (see configs/)")->required()->check(CLI::ExistingFile);
  sub->add_option("--set", o->set,
                  "override a recipe key, KEY=VALUE (repeatable), e.g. train.epochs=3 or teachers.mim.checkpoint=F");
  sub->add_option("-o,--out", o->out, "run folder (default: runs/<recipe name>)");
  sub->add_option("--max-steps", o->max_steps, "stop after this many steps (-1: the recipe's)");
  add_run_control(sub, *o, "a changed recipe");
  sub->add_option("--teacher-cache", o->teacher_cache,
                  "folder of teacher outputs keyed by content, shared by runs with the same teachers and views "
                  "(see data.seed): each teacher forward is computed once");
  sub->add_option("--teacher-cache-gb", o->teacher_cache_gb, "bound on the --teacher-cache folder's size, GiB")
      ->check(CLI::PositiveNumber);
  add_training_runtime_options(sub, o->rt);
  sub->callback([o] {
    auto device = apply_runtime(o->rt);
    auto r = distill::load_recipe(o->recipe, o->set);
    if (o->max_steps >= 0) r.max_steps = o->max_steps;
    std::string run_dir = o->out.empty() ? "runs/" + r.name : o->out;
    auto ds = data::open_dataset(r.data.dataset, r.data.split, {o->skip_bad});
    auto lc = distill::loader_config(r);
    auto tc = distill::train_config(r, run_dir);
    tc.device = device;
    apply_run_control(*o, tc, lc);
    setup_training(o->rt, tc, lc);
    auto d = build_distiller(r, device, tc.precision);
    data::DataLoader loader(ds, lc);
    std::shared_ptr<distill::TeacherCache> cache;
    if (!o->teacher_cache.empty()) {
      cache = std::make_shared<distill::TeacherCache>(
          o->teacher_cache, static_cast<uint64_t>(o->teacher_cache_gb * double(1ull << 30)));
      d->set_teacher_cache(cache);
      // The batches this run brings at most (a resumed run brings fewer).
      const int64_t all = r.epochs * loader.batches_per_epoch();
      int64_t steps = r.max_steps > 0 ? std::min(r.max_steps, all) : all;
      if (o->stop_after > 0) steps = std::min(steps, o->stop_after);
      cache->plan(steps, lc.world_size);
    }
    if (!tc.quiet) {
      std::printf("distill '%s': student %s (%s params), %zu teacher(s), masking %s, %s: %zu images, batch %ld, lr %.3g, "
                  "%d threads, device %s, %s, %ld process(es) -> %s\n",
                  r.name.c_str(), r.student.name.c_str(), with_commas(d->student->num_params()).c_str(),
                  r.teachers.size(), distill::to_string(r.mask.strategy).c_str(), ds->name().c_str(), ds->size(),
                  (long)r.batch, tc.lr, torch::get_num_threads(), device.str().c_str(),
                  train::to_string(tc.precision).c_str(), (long)lc.world_size, run_dir.c_str());
    }
    distill::DistillTask task(d);
    auto res = train::train(task, loader, tc);
    if (cache) {
      if (!tc.quiet) std::printf("%s\n", cache->summary().c_str());
      // Rank 0's counters, next to the run's metrics.
      if (lc.rank == 0)
        atomic_write_file((fs::path(run_dir) / "teacher_cache.json").string(),
                          [&](std::FILE* f) { std::fprintf(f, "%s\n", cache->stats_json().c_str()); });
    }
    if (!tc.quiet && !res.interrupted)
      std::printf("done: %ld steps in %.1f s, loss %.4f -> %.4f; student: %s/student.safetensors\n", (long)res.steps,
                  res.seconds, res.first_loss, res.last_loss, run_dir.c_str());
  });

  auto* dump = app.add_subcommand(
      "dump-step",
      "Run one distillation forward on float32 `images` [B,C,H,W] and write mask.keep, target.*, pred.*, loss.*");
  struct DOpts {
    std::string recipe, input, out;
    std::vector<std::string> set;
    Runtime rt;
  };
  auto d = std::make_shared<DOpts>();
  dump->add_option("-r,--recipe", d->recipe, "recipe YAML")->required()->check(CLI::ExistingFile);
  dump->add_option("--set", d->set, "override a recipe key, KEY=VALUE (repeatable)");
  dump->add_option("-i,--input", d->input, ".safetensors with `images` normalised for the student")->required();
  dump->add_option("-o,--out", d->out, "output .safetensors")->required();
  d->rt.precision = "fp32";  // a reproducible look at one step: exact unless bf16 is asked for
  add_model_runtime_options(dump, d->rt);
  dump->callback([d] {
    auto device = apply_runtime(d->rt);
    const auto precision = precision_of(d->rt, device);
    if (precision == train::Precision::FP32) train::disable_tf32();
    auto r = distill::load_recipe(d->recipe, d->set);
    auto dist = build_distiller(r, device, precision);
    auto in = io::SafeTensorsFile::open(d->input);
    if (!in.contains("images")) throw Error(d->input + ": no tensor named 'images'");
    auto images = in.load("images");
    const auto& c = r.student;
    if (images.scalar_type() != torch::kFloat || images.dim() != 4 || images.size(1) != c.in_chans ||
        images.size(2) != c.img_size || images.size(3) != c.img_size)
      throw Error(d->input + ": 'images' must be float32 [B," + std::to_string(c.in_chans) + "," +
                  std::to_string(c.img_size) + "," + std::to_string(c.img_size) + "]");
    dist->eval();  // no augmentation, no drop path: a reproducible look at one step
    torch::manual_seed(r.seed);
    distill::DistillOutput out;
    {
      train::AutocastScope autocast(device, precision == train::Precision::BF16);
      out = dist->forward(images.to(device), /*keep_tensors=*/true);
    }
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    tensors.emplace_back("mask.keep", out.keep.cpu());
    for (auto& [k, v] : out.targets) tensors.emplace_back("target." + k, v.detach().cpu().contiguous());
    for (auto& [k, v] : out.preds) tensors.emplace_back("pred." + k, v.detach().cpu().contiguous());
    for (auto& [k, v] : out.terms) tensors.emplace_back("loss." + k, v.detach().cpu());
    // loss.total = Σ weight · target term; a multi-layer target's term (its per-layer terms'
    // mean, or sum) is written too, and the formula goes into the metadata.
    std::string formula;
    for (auto& t : out.target_terms) {
      if (t.layers.size() > 1) tensors.emplace_back("loss." + t.name, t.value.detach().cpu());
      std::ostringstream f;
      f << t.weight << "*" << t.name;
      if (t.layers.size() > 1) {
        f << "(";
        for (size_t i = 0; i < t.layers.size(); ++i) f << (i ? "," : "") << t.layers[i];
        f << ")";
      }
      formula += (formula.empty() ? "" : " + ") + f.str();
    }
    tensors.emplace_back("loss.total", out.loss.detach().cpu());
    io::save_safetensors(d->out, tensors, {{"recipe", r.name}, {"loss.total", formula}, {"precision", train::to_string(precision)}});
    std::printf("%s: kept %ld of %ld patches; loss %.6f = %s; wrote %s\n", d->input.c_str(), (long)out.keep.size(1),
                (long)c.num_patches(), out.loss.item<double>(), formula.c_str(), d->out.c_str());
  });
}

}  // namespace hd::cli
