// `data`: summarise a data set and measure whether the loader keeps up with a model.
// `make-shards`: write a data set as WebDataset tar shards.
#include <cstdio>

#include <torch/torch.h>

#include "app/commands.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "data/webdataset.h"
#include "model/vit.h"
#include "train/model_transform.h"
#include "util/timer.h"

namespace hd::cli {

void add_data(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "data", "Summarise a data set and measure loader throughput, alone and while a model trains on its batches");
  struct Opts {
    std::string data = "fashion-mnist", split = "train", arch = "vit_tiny_patch4_28";
    int64_t batch = 256, batches = 40;
    int workers = 2;
    bool eval_transform = false, skip_bad = false, no_model = false;
    uint64_t seed = 0;
    Runtime rt;
  };
  auto o = std::make_shared<Opts>();
  sub->add_option("-d,--data", o->data, "fashion-mnist, fashion-mnist:DIR, wds:SHARDS or an ImageFolder root");
  sub->add_option("--split", o->split, "train, test or val");
  sub->add_option("-a,--arch", o->arch, "model preset: input size, channels, mean/std, and the model timed");
  sub->add_option("-b,--batch", o->batch, "batch size")->check(CLI::PositiveNumber);
  sub->add_option("-n,--batches", o->batches, "batches to time")->check(CLI::PositiveNumber);
  sub->add_option("-j,--workers", o->workers, "loader worker threads");
  sub->add_option("--seed", o->seed, "shuffle / augmentation seed");
  sub->add_flag("--eval-transform", o->eval_transform, "resize + center crop instead of RandomResizedCrop + flip");
  sub->add_flag("--skip-bad", o->skip_bad, "skip (and count) unreadable images instead of failing");
  sub->add_flag("--no-model", o->no_model, "only time the loader");
  add_runtime_options(sub, o->rt);
  sub->callback([o] {
    auto device = apply_runtime(o->rt);
    Timer t_open;
    auto ds = data::open_dataset(o->data, o->split, {o->skip_bad});
    std::printf("%s: %zu images, %zu classes (opened in %.2f s)\n", ds->name().c_str(), ds->size(),
                ds->class_names().size(), t_open.seconds());
    std::vector<int64_t> counts(ds->class_names().size(), 0);
    for (size_t i = 0; i < ds->size(); ++i) counts.at(static_cast<size_t>(ds->label(i)))++;
    for (size_t c = 0; c < counts.size(); ++c)
      std::printf("  %3zu %-24s %8ld\n", c, ds->class_names()[c].c_str(), (long)counts[c]);

    auto cfg = model::preset(o->arch);
    data::LoaderConfig lc;
    lc.batch_size = o->batch;
    lc.num_workers = o->workers;
    lc.seed = o->seed;
    lc.skip_bad = o->skip_bad;
    lc.transform = train::model_transform(cfg, !o->eval_transform);
    data::DataLoader loader(ds, lc);
    const int64_t n = std::min(o->batches, loader.batches_per_epoch());

    auto run = [&](auto&& consume) {
      loader.start_epoch(0);
      data::Batch b;
      double wait = 0;
      int64_t images = 0;
      Timer total;
      for (int64_t i = 0; i < n; ++i) {
        Timer t;
        if (!loader.next(b)) break;
        wait += t.seconds();
        images += b.images.size(0);
        consume(b);
      }
      return std::make_tuple(images, total.seconds(), wait);
    };
    auto [imgs, secs, wait] = run([](const data::Batch&) {});
    std::printf("loader alone: %ld images in %.2f s = %.0f images/s (%d workers, batch %ld, %s transform)\n",
                (long)imgs, secs, imgs / secs, o->workers, (long)o->batch, o->eval_transform ? "eval" : "train");
    if (o->no_model) return;

    torch::manual_seed(0);
    model::VisionTransformer m(cfg);
    m->to(device);
    m->train();
    auto step = [&](const data::Batch& b) {
      m->zero_grad();
      m->forward(b.images.to(device)).pow(2).mean().backward();
    };
    auto [imgs2, secs2, wait2] = run(step);
    std::printf("with %s fwd+bwd: %.0f images/s; waiting for data %.1f%% of the time\n", cfg.name.c_str(),
                imgs2 / secs2, 100.0 * wait2 / secs2);
    if (loader.skipped_total()) std::printf("skipped %ld unreadable images\n", (long)loader.skipped_total());
  });

  auto* shards = app.add_subcommand(
      "make-shards", "Write a data set as WebDataset tar shards (<key>.jpg|png + <key>.cls) and classes.txt");
  struct ShardOpts {
    std::string data = "fashion-mnist", split = "train", out, prefix;
    int64_t per_shard = 1000;
  };
  auto so = std::make_shared<ShardOpts>();
  shards->add_option("-d,--data", so->data, "fashion-mnist, fashion-mnist:DIR, wds:SHARDS or an ImageFolder root");
  shards->add_option("--split", so->split, "split to write");
  shards->add_option("-o,--out", so->out, "folder of the shards")->required();
  shards->add_option("--prefix", so->prefix, "shard file names PREFIX-000000.tar, ... (default: the split)");
  shards->add_option("--per-shard", so->per_shard, "samples per shard")->check(CLI::PositiveNumber);
  shards->callback([so] {
    Timer t;
    auto ds = data::open_dataset(so->data, so->split);
    const std::string spec = data::write_shards(*ds, so->out, so->prefix.empty() ? so->split : so->prefix, so->per_shard);
    std::printf("%s: %zu samples, %zu classes written in %.1f s; read them with --data 'wds:%s'\n", ds->name().c_str(),
                ds->size(), ds->class_names().size(), t.seconds(), spec.c_str());
  });
}

}  // namespace hd::cli
