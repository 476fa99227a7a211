// The CLI is a thin layer over the library: each subcommand lives in its own cmd_*.cpp and only
// parses options, calls library functions and prints.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <c10/core/Device.h>

#include "data/loader.h"
#include "model/config.h"
#include "train/trainer.h"

namespace hd::cli {

void add_presets(CLI::App& app);
void add_inspect(CLI::App& app);
void add_init(CLI::App& app);
void add_export(CLI::App& app);
void add_features(CLI::App& app);
void add_bench(CLI::App& app);
void add_data(CLI::App& app);
void add_distill(CLI::App& app);  // distill + dump-step
void add_train(CLI::App& app);     // train + finetune
void add_pretrain(CLI::App& app);  // pretrain-mae
void add_eval(CLI::App& app);      // knn + probe
void add_analyze(CLI::App& app);
void add_compare(CLI::App& app);
void add_launch(CLI::App& app);    // N local processes of one data-parallel job

// Options shared by several subcommands.
struct Runtime {
  int threads = 0;             // 0: all hardware threads
  std::string device = "cpu";  // cpu | cuda | cuda:N
  // Commands that run a model (add_model_runtime_options):
  std::string precision = "auto";  // fp32 | bf16 | auto
  // Training commands only (add_training_runtime_options):
  double dist_timeout = 300;       // seconds a collective may wait for the other ranks
};
// -t/--threads and --device.
void add_runtime_options(CLI::App* sub, Runtime& rt);
// add_runtime_options plus --precision: every command that runs a model.
void add_model_runtime_options(CLI::App* sub, Runtime& rt);
// add_model_runtime_options plus --dist-timeout.
void add_training_runtime_options(CLI::App* sub, Runtime& rt);
// --precision resolved for `device` (auto: bf16 on CUDA and on CPUs with native bf16).
train::Precision precision_of(const Runtime& rt, const c10::Device& device);
// Applies the thread count and resolves the device (hd::Error if CUDA is asked for but absent).
// With WORLD_SIZE > 1 in the environment, cuda means cuda:LOCAL_RANK.
c10::Device apply_runtime(const Runtime& rt);

// Precision and data parallelism of a training run: resolves --precision into `tc`; when the
// environment describes a multi-process job (RANK, WORLD_SIZE, ...), joins it (tc.comm) and
// shards `lc` for this rank, lc.batch_size (the global batch) divided among the ranks. Pins
// batches for CUDA. Returns whether this process is the one that prints and writes (rank 0).
bool setup_training(const Runtime& rt, train::TrainConfig& tc, data::LoaderConfig& lc);

// How a training run is driven, the same for every training command (train, finetune,
// pretrain-mae, distill): resuming, stopping, output, and the handling of bad or JPEG inputs.
struct RunControl {
  bool resume = false, force = false, quiet = false, no_tensorboard = false, skip_bad = false, exact_jpeg = false;
  int64_t stop_after = 0;
};
// The flags --resume, --force, -q, --stop-after, --no-tensorboard, --skip-bad, --exact-jpeg;
// `changed` says what --force lets a resumed run differ in ("changed options", "a changed recipe").
void add_run_control(CLI::App* sub, RunControl& o, const std::string& changed);
// Hands the run-control flags to the trainer and the loader.
void apply_run_control(const RunControl& o, train::TrainConfig& tc, data::LoaderConfig& lc);

// The training-loop options of the commands that take them from the command line (train,
// finetune, pretrain-mae; distill reads them from its recipe).
struct TrainOptions : RunControl {
  std::string data = "fashion-mnist", split = "train", out;
  int64_t epochs = 10, batch = 128, max_steps = 0, seed = 0, checkpoint_every = 0, log_every = 20;
  double lr = 1e-3, base_batch = 256, min_lr = 1e-5, weight_decay = 0.05, warmup = 1, clip = 0;
  int workers = 2;
};
void add_train_options(CLI::App* sub, TrainOptions& o);
// The trainer's config from the options (lr scaled by batch / base_batch); `recipe` is what
// --resume must find unchanged. The run-control flags come in with apply_run_control.
train::TrainConfig train_config(const TrainOptions& o, const std::string& recipe, const c10::Device& device);
// A loader producing `cfg`'s input: training (RandomResizedCrop + flip, shuffled, full batches
// only) or evaluation (resize + center crop, every image in order).
data::LoaderConfig model_loader(const model::ViTConfig& cfg, bool train, int64_t batch, int workers, uint64_t seed);

// "all", "" (none), or a comma list of indices and ranges ("0,3,8-11"); negative indices count
// from the end (-1 = last). Validated against `depth`; `what` names the option for messages.
std::vector<int64_t> parse_layers(const std::string& spec, int64_t depth, const std::string& what);

// The command line this process was started with (shell-quoted), recorded in result files.
void set_command_line(int argc, char** argv);
const std::string& command_line();
// Version, git commit ("unknown" without git; "-dirty" with uncommitted changes), LibTorch version
// and visible devices ("cpu" or "cpu, cuda x N"), as --version prints them.
nlohmann::json build_info();
std::string version_text();
// Writes `j` plus "command", "version" and "build" (build_info()) to DIR/result.json
// (atomically); returns its path.
std::string write_result(const std::string& dir, nlohmann::json j);

// Directory of the source tree's bench/ scripts (compiled in), for the Python reference runs.
std::string source_dir();

}  // namespace hd::cli
