#include <cstdio>
#include <filesystem>
#include <sstream>

#include <torch/torch.h>

#include "app/commands.h"
#include "parallel/comm.h"
#include "train/model_transform.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/parse.h"
#include "util/threads.h"

namespace hd::cli {

void add_runtime_options(CLI::App* sub, Runtime& rt) {
  sub->add_option("-t,--threads", rt.threads, "CPU threads for LibTorch (0 = all cores, shared among LOCAL_WORLD_SIZE processes)");
  sub->add_option("--device", rt.device, "cpu, cuda or cuda:N");
}

void add_model_runtime_options(CLI::App* sub, Runtime& rt) {
  add_runtime_options(sub, rt);
  sub->add_option("--precision", rt.precision,
                  "fp32, bf16 (autocast; trained models keep fp32 master weights, frozen ones run in bf16) or auto "
                  "(bf16 on CUDA and on CPUs with native bf16)")
      ->capture_default_str();
}

void add_training_runtime_options(CLI::App* sub, Runtime& rt) {
  add_model_runtime_options(sub, rt);
  sub->add_option("--dist-timeout", rt.dist_timeout,
                  "multi-process runs: seconds to wait for the other ranks before failing");
}

train::Precision precision_of(const Runtime& rt, const c10::Device& device) {
  return train::parse_precision(rt.precision, device);
}

bool setup_training(const Runtime& rt, train::TrainConfig& tc, data::LoaderConfig& lc) {
  tc.precision = precision_of(rt, tc.device);
  lc.pin_memory = tc.device.is_cuda();
  const auto env = parallel::env_from_environment();
  if (!env.distributed()) return true;
  if (lc.batch_size % env.world_size != 0)
    throw Error("batch " + std::to_string(lc.batch_size) + " (the global batch) is not divisible by WORLD_SIZE=" +
                std::to_string(env.world_size));
  if (!(rt.dist_timeout > 0)) throw Error("--dist-timeout must be positive");
  tc.comm = parallel::Comm::join(env, tc.device, std::chrono::milliseconds(static_cast<int64_t>(rt.dist_timeout * 1000)));
  lc.batch_size /= env.world_size;
  lc.rank = env.rank;
  lc.world_size = env.world_size;
  if (env.rank != 0) tc.quiet = true;
  return env.rank == 0;
}

c10::Device apply_runtime(const Runtime& rt) {
  set_threads(rt.threads);
  c10::Device dev(c10::kCPU);
  try {
    dev = c10::Device(rt.device);
  } catch (const std::exception&) {
    throw Error("--device '" + rt.device + "' is not a device (use cpu, cuda or cuda:N)");
  }
  if (dev.is_cuda() && !torch::cuda::is_available())
    throw Error("--device " + rt.device + ": this build of LibTorch has no usable CUDA device");
  if (!dev.is_cuda() || dev.has_index()) return dev;
  // One GPU per local process.
  if (const auto env = parallel::env_from_environment(); env.distributed()) {
    if (env.local_rank >= static_cast<int64_t>(torch::cuda::device_count()))
      throw Error("LOCAL_RANK=" + std::to_string(env.local_rank) + " but only " +
                  std::to_string(torch::cuda::device_count()) + " CUDA device(s) are visible");
    dev = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank));
  }
  return dev;
}

std::vector<int64_t> parse_layers(const std::string& spec, int64_t depth, const std::string& what) {
  std::vector<int64_t> out;
  if (spec.empty() || spec == "none") return out;
  if (spec == "all") {
    for (int64_t i = 0; i < depth; ++i) out.push_back(i);
    return out;
  }
  auto parse_one = [&](const std::string& s) -> int64_t {
    auto parsed = parse_int(s);
    if (!parsed) throw Error(what + ": '" + s + "' is not a layer index");
    int64_t v = *parsed;
    if (v < 0) v += depth;
    if (v < 0 || v >= depth)
      throw Error(what + ": layer " + s + " is out of range for a " + std::to_string(depth) + "-block model");
    return v;
  };
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) {
    auto dash = item.find('-', 1);  // a leading '-' is a negative index, not a range
    if (dash != std::string::npos) {
      int64_t a = parse_one(item.substr(0, dash)), b = parse_one(item.substr(dash + 1));
      if (b < a) throw Error(what + ": range '" + item + "' is empty");
      for (int64_t i = a; i <= b; ++i) out.push_back(i);
    } else {
      out.push_back(parse_one(item));
    }
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

void add_train_options(CLI::App* sub, TrainOptions& o) {
  sub->add_option("-d,--data", o.data, "fashion-mnist, fashion-mnist:DIR, wds:SHARDS (tar shards) or an ImageFolder root");
  sub->add_option("--split", o.split, "training split");
  sub->add_option("-o,--out", o.out, "run folder")->required();
  sub->add_option("-e,--epochs", o.epochs, "epochs");
  sub->add_option("-b,--batch", o.batch, "batch size");
  sub->add_option("--max-steps", o.max_steps, "stop after this many steps (0: all epochs)");
  sub->add_option("--lr", o.lr, "learning rate at --base-batch (scaled linearly with --batch)");
  sub->add_option("--base-batch", o.base_batch, "batch size --lr refers to");
  sub->add_option("--min-lr", o.min_lr, "final learning rate of the cosine schedule");
  sub->add_option("--weight-decay", o.weight_decay, "AdamW weight decay (not on norms, biases, pos_embed, cls_token)");
  sub->add_option("--warmup-epochs", o.warmup, "linear warmup epochs");
  sub->add_option("--clip-grad", o.clip, "gradient norm clip (0: off)");
  sub->add_option("-j,--workers", o.workers, "loader threads");
  sub->add_option("-s,--seed", o.seed, "seed");
  sub->add_option("--checkpoint-every", o.checkpoint_every, "steps between checkpoints (0: epoch ends only)");
  sub->add_option("--log-every", o.log_every, "steps between progress lines");
  add_run_control(sub, o, "changed options");
}

void add_run_control(CLI::App* sub, RunControl& o, const std::string& changed) {
  sub->add_flag("--resume", o.resume, "continue from the run folder's checkpoint");
  sub->add_flag("--force", o.force, "start over in a used run folder, or resume despite " + changed);
  sub->add_flag("-q,--quiet", o.quiet, "no progress output");
  sub->add_option("--stop-after", o.stop_after, "save a checkpoint and stop after this step (continue with --resume)");
  sub->add_flag("--no-tensorboard", o.no_tensorboard, "no TensorBoard events file in the run folder");
  sub->add_flag("--skip-bad", o.skip_bad, "skip (and count) bad samples (unreadable images, bad shard members) instead of failing");
  sub->add_flag("--exact-jpeg", o.exact_jpeg, "decode training JPEGs at full size (no reduced DCT scale for large crops)");
}

void apply_run_control(const RunControl& o, train::TrainConfig& tc, data::LoaderConfig& lc) {
  tc.resume = o.resume;
  tc.force = o.force;
  tc.quiet = o.quiet;
  tc.stop_at = o.stop_after;
  tc.tensorboard = !o.no_tensorboard;
  lc.skip_bad = o.skip_bad;
  lc.transform.jpeg_dct_scaling = !o.exact_jpeg;
}

train::TrainConfig train_config(const TrainOptions& o, const std::string& recipe, const c10::Device& device) {
  if (o.batch <= 0 || o.epochs <= 0 || o.base_batch <= 0) throw Error("--batch, --epochs and --base-batch must be positive");
  train::TrainConfig tc;
  tc.run_dir = o.out;
  tc.epochs = o.epochs;
  tc.max_steps = o.max_steps;
  tc.lr = o.lr * static_cast<double>(o.batch) / o.base_batch;
  tc.min_lr = o.min_lr;
  tc.warmup_epochs = o.warmup;
  tc.adamw.weight_decay = o.weight_decay;
  tc.clip_grad = o.clip;
  tc.seed = static_cast<uint64_t>(o.seed);
  tc.log_every = o.log_every;
  tc.checkpoint_every = o.checkpoint_every;
  tc.device = device;
  std::ostringstream r;
  r << recipe << "\ndata: " << o.data << ":" << o.split << "\nepochs: " << o.epochs << "\nbatch: " << o.batch
    << "\nlr: " << o.lr << "\nbase_batch: " << o.base_batch << "\nmin_lr: " << o.min_lr
    << "\nweight_decay: " << o.weight_decay << "\nwarmup_epochs: " << o.warmup << "\nclip_grad: " << o.clip
    << "\nseed: " << o.seed << "\nmax_steps: " << o.max_steps << "\n";
  tc.recipe_text = r.str();
  return tc;
}

data::LoaderConfig model_loader(const model::ViTConfig& cfg, bool train, int64_t batch, int workers, uint64_t seed) {
  data::LoaderConfig lc;
  lc.batch_size = batch;
  lc.num_workers = workers;
  lc.seed = seed;
  lc.shuffle = train;
  lc.drop_last = train;
  lc.transform = train::model_transform(cfg, train);
  return lc;
}

namespace {
std::string g_command_line;
}

void set_command_line(int argc, char** argv) {
  std::string out;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    const bool plain = !a.empty() && a.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                         "0123456789_-+=/.,:@%") == std::string::npos;
    if (!plain) {
      std::string q = "'";
      for (char c : a) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
      a = q + "'";
    }
    out += (i ? " " : "") + a;
  }
  g_command_line = out;
}

const std::string& command_line() { return g_command_line; }

std::string write_result(const std::string& dir, nlohmann::json j) {
  std::filesystem::create_directories(dir);
  j["command"] = command_line();
  j["version"] = HD_VERSION;
  j["build"] = build_info();
  const auto path = (std::filesystem::path(dir) / "result.json").string();
  const std::string text = j.dump(2) + "\n";
  atomic_write_file(path, [&](std::FILE* f) { std::fwrite(text.data(), 1, text.size(), f); });
  return path;
}

std::string source_dir() { return HD_SOURCE_DIR; }

}  // namespace hd::cli
