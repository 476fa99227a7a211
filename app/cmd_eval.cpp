// `knn` and `probe`: evaluation of a frozen encoder's features (weighted k-NN, linear probe) on
// a data set's test split, each writing result.json and printing a one-line summary.
#include <cstdio>
#include <filesystem>
#include <functional>

#include <torch/torch.h>

#include "app/commands.h"
#include "data/dataset.h"
#include "eval/evaluate.h"
#include "model/checkpoint.h"
#include "util/timer.h"

namespace hd::cli {

namespace fs = std::filesystem;

namespace {

struct EvalOpts {
  std::string checkpoint, arch, data = "fashion-mnist", train_split = "train", test_split = "test", out, pool = "cls",
                                cache;
  int64_t train_limit = 0, test_limit = 0, batch = 256, seed = 0;
  int workers = 2;
  bool quiet = false;
  Runtime rt;
};

void add_eval_options(CLI::App* sub, EvalOpts& o) {
  sub->add_option("-c,--checkpoint", o.checkpoint, "encoder (.safetensors)")->required()->check(CLI::ExistingFile);
  sub->add_option("-a,--arch", o.arch, "preset, for checkpoints without their config in the metadata");
  sub->add_option("-d,--data", o.data, "fashion-mnist, fashion-mnist:DIR or an ImageFolder root");
  sub->add_option("--train-split", o.train_split, "split the classifier is fitted on");
  sub->add_option("--test-split", o.test_split, "split top-1 is measured on");
  sub->add_option("--train-limit", o.train_limit, "use this many training images, a fixed random subset (0: all)");
  sub->add_option("--test-limit", o.test_limit, "use this many test images, a fixed random subset (0: all)");
  sub->add_option("--pool", o.pool, "features: cls (CLS token) or mean (mean of the patch tokens)")
      ->check(CLI::IsMember({"cls", "mean"}));
  sub->add_option("-o,--out", o.out, "result folder (result.json)")->required();
  sub->add_option("--feature-cache", o.cache, "folder caching extracted features, keyed by checkpoint and options");
  sub->add_option("-b,--batch", o.batch, "batch size of the feature extraction");
  sub->add_option("-j,--workers", o.workers, "loader threads");
  sub->add_option("-s,--seed", o.seed, "seed (subsets, probe)");
  sub->add_flag("-q,--quiet", o.quiet, "no progress output");
  add_model_runtime_options(sub, o.rt);
}

struct Features {
  eval::FeatureSet train, test;
  int64_t num_classes = 0;
  model::ViTConfig cfg;
};

Features features(const EvalOpts& o, const c10::Device& device) {
  Features f;
  auto pool = eval::parse_pool(o.pool);
  const auto precision = precision_of(o.rt, device);
  model::VisionTransformer m{nullptr};
  auto one = [&](const std::string& split, int64_t limit, eval::FeatureSet& out) {
    auto ds = data::open_dataset(o.data, split);
    f.num_classes = static_cast<int64_t>(ds->class_names().size());
    std::string key, path;
    if (!o.cache.empty()) {
      const auto abs = fs::absolute(o.checkpoint).lexically_normal().string();
      key = abs + "|" + std::to_string(fs::file_size(o.checkpoint)) + "|" +
            std::to_string(fs::last_write_time(o.checkpoint).time_since_epoch().count()) + "|" + o.arch + "|" +
            o.data + "|" + split + "|" + std::to_string(limit) + "|" + o.pool + "|" + std::to_string(o.seed) + "|" +
            train::to_string(precision) + "|" + HD_VERSION;
      char name[32];
      std::snprintf(name, sizeof name, "%016zx", std::hash<std::string>{}(key));
      fs::create_directories(o.cache);
      path = (fs::path(o.cache) / (std::string(name) + ".safetensors")).string();
      if (eval::load_features(path, key, out)) return;
    }
    if (!m) m = model::load_model(o.checkpoint, o.arch, /*strict=*/false);
    m->to(device);
    auto lc = model_loader(m->config(), false, o.batch, o.workers, static_cast<uint64_t>(o.seed));
    lc.shuffle = limit > 0;  // a subset: a fixed random one, not the first images of the file
    data::DataLoader loader(ds, lc);
    Timer t;
    {
      // bf16: the encoder's matrix products under autocast; features are returned in float32.
      train::AutocastScope autocast(device, precision == train::Precision::BF16);
      out = eval::extract_features(m, loader, pool, device, limit);
    }
    if (!o.quiet)
      std::printf("features of %ld %s images in %.1f s (%.0f img/s)\n", (long)out.labels.size(0), ds->name().c_str(),
                  t.seconds(), out.labels.size(0) / std::max(t.seconds(), 1e-9));
    if (!path.empty()) eval::save_features(path, out, key);
  };
  f.cfg = model::checkpoint_config(o.checkpoint, o.arch);
  one(o.train_split, o.train_limit, f.train);
  one(o.test_split, o.test_limit, f.test);
  return f;
}

nlohmann::json base_result(const EvalOpts& o, const Features& f, const char* task) {
  return {{"task", task},
          {"checkpoint", o.checkpoint},
          {"model", f.cfg.name},
          {"data", o.data},
          {"pool", o.pool},
          {"train_split", o.train_split},
          {"test_split", o.test_split},
          {"train_images", f.train.labels.size(0)},
          {"test_images", f.test.labels.size(0)}};
}

}  // namespace

void add_eval(CLI::App& app) {
  {
    auto* sub = app.add_subcommand("knn", "Weighted k-NN top-1 on frozen features (cosine similarity, "
                                          "temperature-weighted votes); writes result.json");
    auto o = std::make_shared<EvalOpts>();
    auto k = std::make_shared<int64_t>(20);
    auto temp = std::make_shared<double>(0.07);
    add_eval_options(sub, *o);
    sub->add_option("-k", *k, "neighbours")->check(CLI::PositiveNumber);
    sub->add_option("--temperature", *temp, "vote weight exp(similarity / temperature)")->check(CLI::PositiveNumber);
    sub->callback([o, k, temp] {
      auto device = apply_runtime(o->rt);
      Timer t;
      auto f = features(*o, device);
      auto scores = eval::knn_scores(f.train, f.test.features, *k, *temp, f.num_classes);
      double acc = eval::top1(scores, f.test.labels);
      auto j = base_result(*o, f, "knn");
      j["top1"] = acc;
      j["k"] = *k;
      j["temperature"] = *temp;
      j["seconds"] = t.seconds();
      write_result(o->out, j);
      std::printf("knn: top-1 %.2f%% (k=%ld, T=%g, %s features, %ld train / %ld test images) %s\n", 100 * acc, (long)*k,
                  *temp, o->pool.c_str(), (long)f.train.labels.size(0), (long)f.test.labels.size(0),
                  o->checkpoint.c_str());
    });
  }
  {
    auto* sub = app.add_subcommand("probe", "Linear probe top-1 on frozen features (standardised features, AdamW, "
                                            "cosine schedule); writes result.json");
    auto o = std::make_shared<EvalOpts>();
    auto pc = std::make_shared<eval::ProbeConfig>();
    add_eval_options(sub, *o);
    sub->add_option("-e,--epochs", pc->epochs, "epochs over the training features")->check(CLI::PositiveNumber);
    sub->add_option("--lr", pc->lr, "peak learning rate")->check(CLI::PositiveNumber);
    sub->add_option("--weight-decay", pc->weight_decay, "AdamW weight decay");
    sub->add_option("--probe-batch", pc->batch, "batch size of the probe")->check(CLI::PositiveNumber);
    sub->callback([o, pc] {
      auto device = apply_runtime(o->rt);
      Timer t;
      auto f = features(*o, device);
      pc->seed = static_cast<uint64_t>(o->seed);
      auto r = eval::linear_probe(f.train, f.test, f.num_classes, *pc);
      auto j = base_result(*o, f, "probe");
      j["top1"] = r.test_top1;
      j["train_top1"] = r.train_top1;
      j["epochs"] = pc->epochs;
      j["lr"] = pc->lr;
      j["weight_decay"] = pc->weight_decay;
      j["seconds"] = t.seconds();
      write_result(o->out, j);
      std::printf("probe: top-1 %.2f%% (train %.2f%%, %s features, %ld train / %ld test images) %s\n",
                  100 * r.test_top1, 100 * r.train_top1, o->pool.c_str(), (long)f.train.labels.size(0),
                  (long)f.test.labels.size(0), o->checkpoint.c_str());
    });
  }
}

}  // namespace hd::cli
