// `knn` and `probe`: evaluation of a frozen encoder's features (weighted k-NN, linear probe) on
// a data set's test split; `dense`: a linear classifier on every patch token of 2x2 mosaics
// (per-token accuracy, mIoU). Each writes result.json and prints a one-line summary.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>

#include <torch/torch.h>

#include "app/commands.h"
#include "data/dataset.h"
#include "data/mosaic.h"
#include "eval/dense.h"
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
  sub->add_option("--pool", o.pool,
                  "features: cls (CLS token), mean (mean of the patch tokens) or head (the classifier's input: "
                  "the model's own pooling and fc_norm)")
      ->check(CLI::IsMember({"cls", "mean", "head"}));
  sub->add_option("-o,--out", o.out, "result folder (result.json)")->required();
  sub->add_option("--feature-cache", o.cache, "folder caching extracted features, keyed by checkpoint and options");
  sub->add_option("-b,--batch", o.batch, "batch size of the feature extraction");
  sub->add_option("-j,--workers", o.workers, "loader threads");
  sub->add_option("-s,--seed", o.seed, "seed (subsets, probe)");
  sub->add_flag("-q,--quiet", o.quiet, "no progress output");
  add_model_runtime_options(sub, o.rt);
}

// Part of every feature-cache key: the checkpoint file (absolute path, size, modification time)
// and --arch.
std::string checkpoint_key(const std::string& checkpoint, const std::string& arch) {
  const auto abs = fs::absolute(checkpoint).lexically_normal().string();
  return abs + "|" + std::to_string(fs::file_size(checkpoint)) + "|" +
         std::to_string(fs::last_write_time(checkpoint).time_since_epoch().count()) + "|" + arch;
}

// The features cached in folder `cache` under `key`, or else `extract()`ed and stored there;
// without a cache folder (""), just extracted.
void cached_features(const std::string& cache, const std::string& key, eval::FeatureSet& out,
                     const std::function<void(eval::FeatureSet&)>& extract) {
  std::string path;
  if (!cache.empty()) {
    char name[32];
    std::snprintf(name, sizeof name, "%016zx", std::hash<std::string>{}(key));
    fs::create_directories(cache);
    path = (fs::path(cache) / (std::string(name) + ".safetensors")).string();
    if (eval::load_features(path, key, out)) return;
  }
  extract(out);
  if (!path.empty()) eval::save_features(path, out, key);
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
  auto one = [&](const std::string& split, int64_t limit, eval::FeatureSet& features) {
    auto ds = data::open_dataset(o.data, split);
    f.num_classes = static_cast<int64_t>(ds->class_names().size());
    std::string key;
    if (!o.cache.empty())
      key = checkpoint_key(o.checkpoint, o.arch) + "|" + o.data + "|" + split + "|" + std::to_string(limit) + "|" +
            o.pool + "|" + std::to_string(o.seed) + "|" + train::to_string(precision) + "|" + HD_VERSION;
    cached_features(o.cache, key, features, [&](eval::FeatureSet& out) {
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
    });
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

struct DenseOpts {
  std::string checkpoint, arch, data = "fashion-mnist", out, cache;
  int64_t train_n = 4000, test_n = 1000, batch = 256, seed = 0;
  bool quiet = false;
  Runtime rt;
  eval::ProbeConfig probe;
};

void dense(const DenseOpts& o) {
  auto device = apply_runtime(o.rt);
  const auto precision = precision_of(o.rt, device);
  Timer t;
  const auto cfg = model::checkpoint_config(o.checkpoint, o.arch);
  model::VisionTransformer m{nullptr};
  std::vector<std::string> classes;
  auto one = [&](const std::string& split, int64_t n, eval::FeatureSet& tokens) {
    auto ds = data::open_dataset(o.data, split);
    classes = ds->class_names();
    data::MosaicConfig mc;
    mc.img_size = cfg.img_size;
    mc.patch = cfg.patch_size;
    mc.channels = cfg.in_chans;
    mc.seed = static_cast<uint64_t>(o.seed);
    data::MosaicDataset mosaics(ds, mc);
    std::string key;
    if (!o.cache.empty())
      key = checkpoint_key(o.checkpoint, o.arch) + "|dense|" + o.data + "|" + split + "|" + std::to_string(n) + "|" +
            std::to_string(mc.min_cells) + "|" + std::to_string(o.seed) + "|" + train::to_string(precision) + "|" +
            HD_VERSION;
    cached_features(o.cache, key, tokens, [&](eval::FeatureSet& out) {
      if (!m) m = model::load_model(o.checkpoint, o.arch, /*strict=*/false);
      m->to(device);
      Timer te;
      {
        // bf16: the encoder's matrix products under autocast; tokens are returned in float32.
        train::AutocastScope autocast(device, precision == train::Precision::BF16);
        out = eval::extract_tokens(m, mosaics, n, device, o.batch);
      }
      if (!o.quiet)
        std::printf("tokens of %ld %s mosaics in %.1f s (%.0f mosaics/s)\n", (long)n, ds->name().c_str(), te.seconds(),
                    n / std::max(te.seconds(), 1e-9));
    });
  };
  eval::FeatureSet train_tokens, test_tokens;
  one("train", o.train_n, train_tokens);
  one("test", o.test_n, test_tokens);
  const auto num_classes = static_cast<int64_t>(classes.size());
  auto r = eval::dense_probe(train_tokens, test_tokens, num_classes, o.probe);
  nlohmann::json iou = nlohmann::json::object();
  for (int64_t k = 0; k < num_classes; ++k)
    iou[classes[k]] = std::isnan(r.test.iou[k]) ? nlohmann::json(nullptr) : nlohmann::json(r.test.iou[k]);
  nlohmann::json j = {{"task", "dense"},
                      {"checkpoint", o.checkpoint},
                      {"model", cfg.name},
                      {"data", o.data},
                      {"train_split", "train"},
                      {"test_split", "test"},
                      {"n_train", o.train_n},
                      {"n_test", o.test_n},
                      {"train_tokens", train_tokens.labels.size(0)},
                      {"test_tokens", test_tokens.labels.size(0)},
                      {"grid", cfg.grid_size()},
                      {"token_acc", r.test.accuracy},
                      {"train_token_acc", r.train_accuracy},
                      {"miou", r.test.miou},
                      {"iou", iou},
                      {"precision", train::to_string(precision)},
                      {"epochs", o.probe.epochs},
                      {"lr", o.probe.lr},
                      {"weight_decay", o.probe.weight_decay},
                      {"probe_batch", o.probe.batch},
                      {"seed", o.seed},
                      {"seconds", t.seconds()}};
  write_result(o.out, j);
  std::printf("dense: mIoU %.2f%%, token accuracy %.2f%% (train %.2f%%, %ld train / %ld test mosaics of %ldx%ld tokens) "
              "%s\n",
              100 * r.test.miou, 100 * r.test.accuracy, 100 * r.train_accuracy, (long)o.train_n, (long)o.test_n,
              (long)cfg.grid_size(), (long)cfg.grid_size(), o.checkpoint.c_str());
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
  {
    auto* sub = app.add_subcommand("dense", "Dense probe: a linear classifier on every patch token of 2x2 mosaics of "
                                            "the data set, per-token accuracy and mIoU; writes result.json");
    auto o = std::make_shared<DenseOpts>();
    o->probe.epochs = 10;
    o->probe.batch = 1024;
    sub->add_option("-c,--checkpoint", o->checkpoint, "encoder (.safetensors)")->required()->check(CLI::ExistingFile);
    sub->add_option("-a,--arch", o->arch, "preset, for checkpoints without their config in the metadata");
    sub->add_option("-d,--data", o->data, "fashion-mnist, fashion-mnist:DIR or an ImageFolder root (train / test splits)");
    sub->add_option("-o,--out", o->out, "result folder (result.json)")->required();
    sub->add_option("--train-n", o->train_n, "mosaics of the train split the classifier is fitted on")
        ->check(CLI::PositiveNumber);
    sub->add_option("--test-n", o->test_n, "mosaics of the test split accuracy and mIoU are measured on")
        ->check(CLI::PositiveNumber);
    sub->add_option("--feature-cache", o->cache, "folder caching extracted tokens, keyed by checkpoint and options");
    sub->add_option("-b,--batch", o->batch, "batch size of the token extraction")->check(CLI::PositiveNumber);
    sub->add_option("-s,--seed", o->seed, "seed (mosaics, probe)");
    sub->add_option("-e,--epochs", o->probe.epochs, "epochs over the training tokens")->check(CLI::PositiveNumber);
    sub->add_option("--lr", o->probe.lr, "peak learning rate")->check(CLI::PositiveNumber);
    sub->add_option("--weight-decay", o->probe.weight_decay, "AdamW weight decay");
    sub->add_option("--probe-batch", o->probe.batch, "batch size (tokens) of the probe")->check(CLI::PositiveNumber);
    sub->add_flag("-q,--quiet", o->quiet, "no progress output");
    add_model_runtime_options(sub, o->rt);
    sub->callback([o] {
      o->probe.seed = static_cast<uint64_t>(o->seed);
      dense(*o);
    });
  }
}

}  // namespace hd::cli
