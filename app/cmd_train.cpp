// `train` (supervised ViT classifier from scratch, DeiT-style: label smoothing, RandomResizedCrop
// + flip, warmup + cosine) and `finetune` (the same from a checkpoint, with layer-wise
// learning-rate decay), each followed by top-1 on the evaluation split.
#include <cstdio>
#include <filesystem>

#include <torch/torch.h>

#include "app/commands.h"
#include "data/dataset.h"
#include "eval/evaluate.h"
#include "io/tfevents.h"
#include "model/checkpoint.h"
#include "model/interop.h"
#include "train/classify.h"
#include "util/error.h"
#include "util/format.h"

namespace hd::cli {

namespace {

struct ClassifierOpts {
  TrainOptions t;
  std::string arch = "vit_tiny_patch4_28", checkpoint, eval_split = "test", pool, head_init = "zero";
  int64_t eval_limit = 0, head_init_images = 10000;
  double smoothing = 0.1, drop_path = 0.1, scale_min = 0.6, layer_decay = 0.75;
  Runtime rt;
};

// Sets the classifier head to a linear probe fitted on the frozen model's pre-logit features
// (what the head reads: the pooled tokens, after fc_norm where the model has one) of at most
// `images` training images, a fixed random subset (LP-FT: fine-tuning starts at the probe's
// accuracy instead of from a zero head on unwhitened features). Returns the probe's train top-1.
double init_head_from_probe(model::VisionTransformer& m, const std::shared_ptr<data::Dataset>& ds, int64_t images,
                            int64_t batch, int workers, uint64_t seed, const c10::Device& device) {
  const auto& cfg = m->config();
  if (!m->head || !cfg.head_bias) throw Error("--head-init probe: the model's classifier head has no bias");
  auto lc = model_loader(cfg, false, batch, workers, seed);
  lc.shuffle = images > 0 && images < static_cast<int64_t>(ds->size());
  data::DataLoader loader(ds, lc);
  const auto train = eval::extract_features(m, loader, eval::Pool::Head, device, images);
  eval::ProbeConfig pc;
  pc.seed = seed;
  auto probe = eval::linear_probe(train, train, cfg.num_classes, pc);
  auto [w, b] = eval::probe_as_linear(probe);
  torch::NoGradGuard ng;
  m->head->weight.copy_(w.to(m->head->weight.device()));
  m->head->bias.copy_(b.to(m->head->bias.device()));
  return probe.train_top1;
}

void run_classifier(const ClassifierOpts& o, bool finetune) {
  auto device = apply_runtime(o.rt);
  auto ds = data::open_dataset(o.t.data, o.t.split, {o.t.skip_bad});
  model::ViTConfig cfg = finetune ? model::checkpoint_config(o.checkpoint, o.arch) : model::preset(o.arch);
  cfg.drop_path = o.drop_path;
  if (!o.pool.empty()) cfg.pool = o.pool == "mean" ? model::Pooling::Mean : model::Pooling::Token;
  cfg.num_classes = static_cast<int64_t>(ds->class_names().size());  // the head follows the data set
  cfg.validate();
  torch::manual_seed(static_cast<uint64_t>(o.t.seed));
  model::VisionTransformer m(cfg);
  double head_probe_top1 = -1;
  if (finetune) {
    // Every weight but the classifier, which is new (zero) for the data set's classes. Any file
    // the published-checkpoint reader accepts (timm / OpenAI CLIP / torchvision names, .pth,
    // wrapper dicts, another grid's positional embedding).
    auto conv = model::to_timm_layout(model::read_checkpoint_file(o.checkpoint).tensors, o.checkpoint);
    auto fit_cfg = cfg;
    model::fit_to_config(conv, fit_cfg, o.checkpoint);
    model::NamedTensors tensors;
    for (auto& [k, v] : conv.tensors)
      if (k.rfind("head.", 0) != 0) tensors.emplace_back(k, v);
    auto rep = model::load_state(*m, tensors, /*strict=*/false, o.checkpoint);
    for (const auto& k : rep.missing)
      if (k.rfind("head.", 0) != 0) throw Error(o.checkpoint + ": tensor '" + k + "' is missing");
    if (!o.t.quiet) {
      for (const auto& n : conv.notes) std::printf("%s: %s\n", o.checkpoint.c_str(), n.c_str());
      if (!rep.unexpected.empty())
        std::printf("ignoring %zu tensor(s) of %s the model has no place for (first: %s)\n", rep.unexpected.size(),
                    o.checkpoint.c_str(), rep.unexpected.front().c_str());
    }
    if (o.head_init == "probe") {
      m->to(device);
      head_probe_top1 = init_head_from_probe(m, ds, o.head_init_images, o.t.batch, o.t.workers,
                                             static_cast<uint64_t>(o.t.seed), device);
      const int64_t all = static_cast<int64_t>(ds->size());
      if (!o.t.quiet)
        std::printf("head: a linear probe on %s training images' frozen features (train top-1 %.2f%%)\n",
                    with_commas(o.head_init_images > 0 ? std::min(o.head_init_images, all) : all).c_str(),
                    100 * head_probe_top1);
    }
  }
  train::ClassifyTask task(m, o.smoothing, finetune ? o.layer_decay : 1.0);
  auto lc = model_loader(cfg, true, o.t.batch, o.t.workers, static_cast<uint64_t>(o.t.seed));
  lc.transform.scale_min = o.scale_min;
  std::string recipe = std::string("command: ") + (finetune ? "finetune" : "train") + "\nmodel: " + cfg.to_json() +
                       "\nlabel_smoothing: " + std::to_string(o.smoothing) + "\nscale_min: " +
                       std::to_string(o.scale_min);
  if (finetune)
    recipe += "\ncheckpoint: " + o.checkpoint + "\nlayer_decay: " + std::to_string(o.layer_decay) +
              "\nhead_init: " + o.head_init +
              (o.head_init == "probe" ? " (" + std::to_string(o.head_init_images) + " images)" : std::string());
  auto tc = train_config(o.t, recipe, device);
  apply_run_control(o.t, tc, lc);
  const bool main_rank = setup_training(o.rt, tc, lc);
  data::DataLoader loader(ds, lc);
  if (!tc.quiet)
    std::printf("%s %s (%s params)%s on %s: %zu images, %zu classes, batch %ld, lr %.3g -> %s\n",
                finetune ? "finetune" : "train", cfg.name.c_str(), with_commas(m->num_params()).c_str(),
                finetune ? (" from " + o.checkpoint).c_str() : "", ds->name().c_str(), ds->size(),
                ds->class_names().size(), (long)o.t.batch, tc.lr, o.t.out.c_str());
  auto res = train::train(task, loader, tc);
  if (!main_rank || res.interrupted || o.eval_split.empty()) return;
  auto test = data::open_dataset(o.t.data, o.eval_split, {o.t.skip_bad});
  auto el = model_loader(cfg, false, o.t.batch, o.t.workers, 0);
  el.shuffle = o.eval_limit > 0;  // a subset: a fixed random one
  data::DataLoader eval_loader(test, el);
  double acc = 0;
  {
    train::AutocastScope autocast(device, tc.precision == train::Precision::BF16);
    acc = eval::evaluate_top1(task.model(), eval_loader, device, o.eval_limit);
  }
  const int64_t n_eval = o.eval_limit > 0 ? std::min<int64_t>(o.eval_limit, test->size()) : test->size();
  nlohmann::json j = {{"task", finetune ? "finetune" : "train"}, {"top1", acc}, {"data", o.t.data},
                      {"eval_split", o.eval_split}, {"images", n_eval}, {"steps", res.steps},
                      {"seconds", res.seconds}, {"model", cfg.name}, {"final_loss", res.last_loss},
                      {"precision", train::to_string(tc.precision)}};
  if (finetune) {
    j["checkpoint"] = o.checkpoint;
    j["head_init"] = o.head_init;
    if (head_probe_top1 >= 0) j["head_probe_train_top1"] = head_probe_top1;
  }
  write_result(o.t.out, j);
  if (!o.t.no_tensorboard) io::write_scalars(o.t.out, res.steps, {{"eval/top1", acc}});
  std::printf("%s: top-1 %.2f%% on %s (%ld images); model: %s/model.safetensors\n", finetune ? "finetune" : "train",
              100 * acc, test->name().c_str(), (long)n_eval, o.t.out.c_str());
}

void add_classifier_command(CLI::App& app, bool finetune) {
  auto* sub = finetune
                  ? app.add_subcommand("finetune", "Fine-tune a ViT checkpoint (e.g. a distilled student) as a classifier "
                                                   "with layer-wise lr decay; writes model.safetensors and result.json")
                  : app.add_subcommand("train", "Supervised training of a ViT classifier; writes model.safetensors and "
                                                "result.json (top-1 on the evaluation split)");
  auto o = std::make_shared<ClassifierOpts>();
  if (finetune) {
    o->arch.clear();
    sub->add_option("-c,--checkpoint", o->checkpoint, "model to fine-tune (.safetensors)")->required()->check(CLI::ExistingFile);
    sub->add_option("-a,--arch", o->arch, "preset, for checkpoints without their config in the metadata");
    sub->add_option("--layer-decay", o->layer_decay, "layer-wise lr decay (1: off)");
    sub->add_option("--head-init", o->head_init,
                    "the new classifier head: zero, or probe (a linear probe fitted on the frozen model's features "
                    "first, so fine-tuning starts at the probe's accuracy: LP-FT)")
        ->check(CLI::IsMember({"zero", "probe"}));
    sub->add_option("--head-init-images", o->head_init_images,
                    "training images the --head-init probe is fitted on, a fixed random subset (0: all)")
        ->check(CLI::NonNegativeNumber);
  } else {
    sub->add_option("-a,--arch", o->arch, "model preset");
  }
  add_train_options(sub, o->t);
  sub->add_option("--eval-split", o->eval_split, "evaluation split (empty: none)");
  sub->add_option("--eval-limit", o->eval_limit, "evaluate on this many images, a fixed random subset (0: all)");
  sub->add_option("--label-smoothing", o->smoothing, "label smoothing");
  sub->add_option("--drop-path", o->drop_path, "stochastic depth rate");
  sub->add_option("--pool", o->pool,
                  std::string("what the classifier reads: token (the CLS token) or mean (the mean of the patch tokens "
                              "after the final norm: the features knn / probe --pool mean read); "
                              "default: the ") + (finetune ? "checkpoint's" : "preset's"))
      ->check(CLI::IsMember({"token", "mean"}));
  sub->add_option("--scale-min", o->scale_min, "RandomResizedCrop minimum area fraction");
  add_training_runtime_options(sub, o->rt);
  sub->callback([o, finetune] { run_classifier(*o, finetune); });
}

}  // namespace

void add_train(CLI::App& app) {
  add_classifier_command(app, false);
  add_classifier_command(app, true);
}

}  // namespace hd::cli
