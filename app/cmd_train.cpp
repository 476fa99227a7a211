// `train`: supervised training of a ViT classifier (DeiT-style: label smoothing,
// RandomResizedCrop + flip, warmup + cosine), then top-1 on the test split.
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "app/commands.h"
#include "data/dataset.h"
#include "train/classify.h"
#include "train/inputs.h"
#include "util/common.h"

namespace hd::cli {

void add_train(CLI::App& app) {
  auto* sub = app.add_subcommand("train", "Supervised training of a ViT classifier; writes model.safetensors and "
                                          "result.json (top-1 on the evaluation split)");
  struct Opts {
    std::string arch = "vit_tiny_patch4_28", data = "fashion-mnist", split = "train", eval_split = "test", out;
    int64_t epochs = 10, batch = 128, max_steps = 0, seed = 0;
    double lr = 1e-3, base_batch = 256, min_lr = 1e-5, weight_decay = 0.05, warmup = 1, smoothing = 0.1,
           drop_path = 0.1, clip = 0, scale_min = 0.6;
    int workers = 2;
    bool resume = false, force = false, quiet = false;
    Runtime rt;
  };
  auto o = std::make_shared<Opts>();
  sub->add_option("-a,--arch", o->arch, "model preset");
  sub->add_option("-d,--data", o->data, "fashion-mnist, fashion-mnist:DIR or an ImageFolder root");
  sub->add_option("--split", o->split, "training split");
  sub->add_option("--eval-split", o->eval_split, "evaluation split (empty: none)");
  sub->add_option("-o,--out", o->out, "run folder")->required();
  sub->add_option("-e,--epochs", o->epochs, "epochs");
  sub->add_option("-b,--batch", o->batch, "batch size");
  sub->add_option("--max-steps", o->max_steps, "stop after this many steps (0: all epochs)");
  sub->add_option("--lr", o->lr, "learning rate at --base-batch (scaled linearly with --batch)");
  sub->add_option("--base-batch", o->base_batch, "batch size --lr refers to");
  sub->add_option("--min-lr", o->min_lr, "final learning rate of the cosine schedule");
  sub->add_option("--weight-decay", o->weight_decay, "AdamW weight decay (not on norms, biases, pos_embed, cls_token)");
  sub->add_option("--warmup-epochs", o->warmup, "linear warmup epochs");
  sub->add_option("--label-smoothing", o->smoothing, "label smoothing");
  sub->add_option("--drop-path", o->drop_path, "stochastic depth rate");
  sub->add_option("--clip-grad", o->clip, "gradient norm clip (0: off)");
  sub->add_option("--scale-min", o->scale_min, "RandomResizedCrop minimum area fraction");
  sub->add_option("-j,--workers", o->workers, "loader threads");
  sub->add_option("-s,--seed", o->seed, "seed");
  sub->add_flag("--resume", o->resume, "continue from the run folder's checkpoint");
  sub->add_flag("--force", o->force, "start over in a used run folder");
  sub->add_flag("-q,--quiet", o->quiet, "no progress output");
  add_runtime_options(sub, o->rt);
  sub->callback([o] {
    auto device = apply_runtime(o->rt);
    auto cfg = model::preset(o->arch);
    cfg.drop_path = o->drop_path;
    auto ds = data::open_dataset(o->data, o->split);
    cfg.num_classes = static_cast<int64_t>(ds->class_names().size());  // the head follows the data set
    torch::manual_seed(static_cast<uint64_t>(o->seed));
    model::VisionTransformer m(cfg);
    train::ClassifyTask task(m, o->smoothing);
    data::LoaderConfig lc;
    lc.batch_size = o->batch;
    lc.num_workers = o->workers;
    lc.seed = static_cast<uint64_t>(o->seed);
    lc.transform = train::model_transform(cfg, true);
    lc.transform.scale_min = o->scale_min;
    data::DataLoader loader(ds, lc);
    train::TrainConfig tc;
    tc.run_dir = o->out;
    tc.epochs = o->epochs;
    tc.max_steps = o->max_steps;
    tc.lr = o->lr * o->batch / o->base_batch;
    tc.min_lr = o->min_lr;
    tc.warmup_epochs = o->warmup;
    tc.adamw.weight_decay = o->weight_decay;
    tc.clip_grad = o->clip;
    tc.seed = static_cast<uint64_t>(o->seed);
    tc.resume = o->resume;
    tc.force = o->force;
    tc.quiet = o->quiet;
    tc.device = device;
    tc.recipe_text = "train " + cfg.to_json() + " data=" + o->data + " lr=" + std::to_string(o->lr) +
                     " batch=" + std::to_string(o->batch) + " epochs=" + std::to_string(o->epochs);
    if (!o->quiet)
      std::printf("train %s (%s params) on %s: %zu images, %zu classes, batch %ld, lr %.3g -> %s\n", cfg.name.c_str(),
                  with_commas(m->num_params()).c_str(), ds->name().c_str(), ds->size(), ds->class_names().size(),
                  (long)o->batch, tc.lr, o->out.c_str());
    auto res = train::train(task, loader, tc);
    if (res.interrupted || o->eval_split.empty()) return;
    auto test = data::open_dataset(o->data, o->eval_split);
    data::LoaderConfig el = lc;
    el.shuffle = false;
    el.drop_last = false;
    el.transform = train::model_transform(cfg, false);
    data::DataLoader eval_loader(test, el);
    double acc = train::evaluate_top1(task.model(), eval_loader, device);
    nlohmann::json j = {{"top1", acc}, {"eval_split", o->eval_split}, {"images", test->size()},
                        {"steps", res.steps}, {"seconds", res.seconds}, {"model", cfg.name}};
    auto path = (std::filesystem::path(o->out) / "result.json").string();
    std::string text = j.dump(2) + "\n";
    atomic_write_file(path, [&](std::FILE* f) { std::fwrite(text.data(), 1, text.size(), f); });
    std::printf("top-1 %.2f%% on %s (%zu images); model: %s/model.safetensors\n", 100 * acc, test->name().c_str(),
                test->size(), o->out.c_str());
  });
}

}  // namespace hd::cli
