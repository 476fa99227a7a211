#include "train/trainer.h"

#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "io/safetensors.h"
#include "io/tfevents.h"
#include "model/checkpoint.h"
#include "parallel/comm.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/timer.h"

namespace hd::train {

namespace fs = std::filesystem;

namespace {

std::atomic<bool> g_stop{false};
extern "C" void on_signal(int) { g_stop.store(true); }

std::string hash_text(const std::string& s) {
  return std::to_string(std::hash<std::string>{}(s));
}

std::string fmt_duration(double s) {
  char buf[32];
  long t = static_cast<long>(s);
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
  else std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  return buf;
}

struct Position {
  int64_t step = 0, epoch = 0, batch = 0;  // next step to run; epoch and batch index within it
};

// The files of a run folder.
struct RunFiles {
  std::string dir, checkpoint, metrics, recipe;
  explicit RunFiles(const std::string& d)
      : dir(d),
        checkpoint((fs::path(d) / "checkpoint.safetensors").string()),
        metrics((fs::path(d) / "metrics.jsonl").string()),
        recipe((fs::path(d) / "recipe.yaml").string()) {}
  std::string last_good() const {
    std::error_code ec;
    return fs::exists(checkpoint, ec) ? "the last good checkpoint is " + checkpoint
                                      : std::string("no checkpoint was saved yet");
  }
};

// A non-negative integer of the checkpoint's metadata; hd::Error naming the file otherwise.
int64_t meta_count(const std::map<std::string, std::string>& meta, const std::string& key, const std::string& path) {
  auto it = meta.find(key);
  if (it == meta.end())
    throw Error(path + ": not a training checkpoint (no '" + key + "' in its metadata); --force starts over");
  const std::string& v = it->second;
  if (v.empty() || v.size() > 18 || v.find_first_not_of("0123456789") != std::string::npos)
    throw Error(path + ": metadata '" + key + "' is not a count: '" + v.substr(0, 40) + "'");
  return std::stoll(v);
}

// Temporary files (".NAME.tmpDIGITS", see atomic_write_file) that a process killed while saving
// left in the run folder; the files they were meant to replace are intact. A checkpoint-sized
// leftover per kill would otherwise fill the disk of a long, often restarted run.
void remove_stale_temporaries(const std::string& dir) {
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    const auto tmp = name.rfind(".tmp");
    if (name.size() > 1 && name[0] == '.' && tmp != std::string::npos && tmp > 1 && tmp + 4 < name.size() &&
        name.find_first_not_of("0123456789", tmp + 4) == std::string::npos)
      fs::remove(it->path(), ec);
  }
}

// Creates the run folder and fails early (before hours of work) if it is not writable.
void prepare_run_folder(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(dir + ": cannot create the run folder: " + ec.message());
  std::string probe = (fs::path(dir) / ".write_test").string();
  std::FILE* f = std::fopen(probe.c_str(), "w");
  if (!f) throw Error(dir + ": run folder is not writable: " + std::strerror(errno));
  std::fclose(f);
  std::remove(probe.c_str());
  remove_stale_temporaries(dir);
}

// What a checkpoint must match to be resumed by this run.
struct ResumeCheck {
  std::string recipe_hash;
  bool force = false;
  int64_t global_batch = 0, per_epoch = 0;
};

// Restores the module, the optimiser state and the CPU random generator from a training
// checkpoint; returns the position to continue at. hd::Error naming the file when it belongs to
// another recipe (unless forced), global batch or data set, or is not a training checkpoint.
Position resume_from(const std::string& path, torch::nn::Module& module, AdamW& opt, const ResumeCheck& want) {
  auto file = io::SafeTensorsFile::open(path);
  const auto& meta = file.metadata();
  auto h = meta.find("recipe_hash");
  if (h != meta.end() && h->second != want.recipe_hash && !want.force)
    throw Error(path + ": was written with a different recipe; refusing to resume (use --force to resume anyway)");
  Position pos;
  pos.step = meta_count(meta, "step", path);
  pos.epoch = meta_count(meta, "epoch", path);
  pos.batch = meta_count(meta, "batch", path);
  if (meta.count("global_batch") && meta_count(meta, "global_batch", path) != want.global_batch)
    throw Error(path + ": was written with a global batch of " + meta.at("global_batch") + " images, this run has " +
                std::to_string(want.global_batch) +
                " (batch per process x processes); its data position would not carry over");
  if (pos.batch > want.per_epoch)
    throw Error(path + ": resumes at batch " + std::to_string(pos.batch) + " of an epoch of " +
                std::to_string(want.per_epoch) + " batches (written with another batch size or data set?)");
  NamedTensors model_state, rest;
  for (auto& [k, v] : file.load_all()) {
    if (k.rfind("model.", 0) == 0) model_state.emplace_back(k.substr(6), v);
    else rest.emplace_back(k, v);
  }
  model::load_state(module, model_state, true, path);
  opt.load_state(rest, path);
  for (auto& [k, v] : rest)
    if (k == "rng.cpu") {
      auto gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      try {
        gen.set_state(v);
      } catch (const c10::Error&) {
        throw Error(path + ": tensor 'rng.cpu' is not a random generator state");
      }
    }
  return pos;
}

// Every rank starts from rank 0's state: weights (and buffers), optimiser state, position. The
// random draws (drop path, random masks) of the other ranks then differ, as their images do.
void sync_ranks(parallel::Comm& comm, torch::nn::Module& module, AdamW& opt, Position& pos, uint64_t seed) {
  std::vector<torch::Tensor> sync;
  for (auto& p : module.parameters(true)) sync.push_back(p);
  for (auto& b : module.buffers(true)) sync.push_back(b);
  auto ostate = opt.state();
  for (auto& [k, v] : ostate) sync.push_back(v);
  sync.push_back(torch::tensor({pos.step, pos.epoch, pos.batch}, torch::kLong));
  comm.broadcast(sync, 0, "broadcasting rank 0's starting state");
  if (comm.is_main()) return;
  auto where = sync.back();
  pos.step = where[0].item<int64_t>();
  pos.epoch = where[1].item<int64_t>();
  pos.batch = where[2].item<int64_t>();
  opt.load_state(ostate, "rank 0's optimiser state");
  torch::manual_seed(data::splitmix64(seed ^ data::splitmix64(static_cast<uint64_t>(comm.rank()) +
                                                              (static_cast<uint64_t>(pos.step) << 20))));
}

// The numbers of a metrics.jsonl line as TensorBoard scalars "train/<key>" (step and time are
// the event's own fields), plus throughput where it is known (images_per_s >= 0).
io::Scalars event_scalars(const nlohmann::json& rec, double images_per_s) {
  io::Scalars out;
  for (auto& [k, v] : rec.items())
    if (v.is_number() && k != "step" && k != "time") out.emplace_back("train/" + k, v.get<double>());
  if (images_per_s >= 0) out.emplace_back("train/images_per_s", images_per_s);
  return out;
}

// metrics.jsonl: one JSON line per step, and the same scalars in a TensorBoard events file. On
// (re)start the lines and events of steps the checkpoint already covers are kept (metrics.jsonl
// rewritten atomically, older events files trimmed) and later ones, from a killed run, dropped.
class MetricsLog {
 public:
  MetricsLog(const std::string& path, int64_t keep_before_step, bool tensorboard) {
    const auto dir = fs::path(path).parent_path().string();
    io::trim_events_files(dir, keep_before_step);
    if (tensorboard) events_ = std::make_unique<io::EventsWriter>(dir);
    std::vector<std::string> keep;
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) {
      try {
        if (nlohmann::json::parse(line).at("step").get<int64_t>() < keep_before_step) keep.push_back(line);
      } catch (const std::exception&) {
      }
    }
    atomic_write_file(path, [&](std::FILE* f) {
      for (auto& l : keep) {
        if (std::fputs(l.c_str(), f) < 0 || std::fputc('\n', f) == EOF) throw Error("write failed");
      }
    });
    out_.open(path, std::ios::app);
  }
  // `images_per_s` < 0: not known at this step.
  void write(int64_t step, const nlohmann::json& rec, double images_per_s) {
    out_ << rec.dump() << "\n";
    if (events_) events_->add(step, event_scalars(rec, images_per_s));
  }
  void flush() {
    out_.flush();
    if (events_) events_->flush();
  }

 private:
  std::ofstream out_;
  std::unique_ptr<io::EventsWriter> events_;
};

// Writes the training state after `pos.step` steps atomically; the previous checkpoint stays
// intact when anything fails. Parameters that became non-finite are never written.
struct CheckpointWriter {
  RunFiles files;
  int64_t global_batch;
  std::string recipe_hash;

  void save(torch::nn::Module& module, const AdamW& opt, const Position& p) const {
    // A finite loss can still come with non-finite gradients (and clipping may be off): never
    // replace the last good checkpoint with broken parameters.
    for (auto& np : module.named_parameters(true))
      if (!torch::isfinite(np.value()).all().item<bool>())
        throw Error("parameter '" + np.key() + "' became non-finite (nan/inf) before step " + std::to_string(p.step) +
                    "; " + files.last_good());
    NamedTensors all;
    for (auto& [k, v] : model::state_dict(module)) all.emplace_back("model." + k, v.detach().cpu());
    for (auto& [k, v] : opt.state()) all.emplace_back(k, v.cpu());
    {
      auto gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      all.emplace_back("rng.cpu", gen.get_state());
    }
    try {
      io::save_safetensors(files.checkpoint, all,
                           {{"step", std::to_string(p.step)},
                            {"epoch", std::to_string(p.epoch)},
                            {"batch", std::to_string(p.batch)},
                            {"global_batch", std::to_string(global_batch)},
                            {"recipe_hash", recipe_hash}});
    } catch (const Error& e) {
      throw Error(std::string(e.what()) + " (checkpoint of step " + std::to_string(p.step) +
                  " not saved; the previous checkpoint file, if any, is unchanged)");
    }
  }
};

// The progress line (means over a logging window), the first / last window's loss, and the
// time spent per phase.
class Progress {
 public:
  Progress(int64_t total, int64_t start_step, bool quiet) : total_(total), start_(start_step), quiet_(quiet) {}

  void add(const StepStats& s, double t_data, int64_t images) {
    t_data_ += t_data;
    t_fwd_ += s.t_forward;
    t_bwd_ += s.t_backward;
    t_opt_ += s.t_optimizer;
    images_ += images;
    loss_ += s.loss;
    ++n_;
    for (auto& [k, v] : s.terms) terms_[k] += v;
  }

  // Closes the window after step `done` (steps completed) at learning rate `lr`.
  void log(int64_t epoch, int64_t done, double lr, TrainResult& result) {
    const double mean = loss_ / std::max<int64_t>(1, n_);
    if (first_) result.first_loss = mean;
    first_ = false;
    result.last_loss = mean;
    if (!quiet_) print(epoch, done, lr, mean);
    loss_ = 0;
    n_ = 0;
    terms_.clear();
  }

  // The closing line: where the time went.
  void finish(double seconds) const {
    if (quiet_) return;
    const double sum = t_data_ + t_fwd_ + t_bwd_ + t_opt_;
    if (tty_) std::printf("\n");
    if (sum > 0)  // no step ran (a resumed run that was already complete): no shares to show
      std::printf("time per phase: data %.1f%%  forward+loss %.1f%%  backward %.1f%%  optimiser %.1f%%  (%.1f s)\n",
                  100 * t_data_ / sum, 100 * t_fwd_ / sum, 100 * t_bwd_ / sum, 100 * t_opt_ / sum, seconds);
  }

  bool tty() const { return tty_; }
  // Images per second since the start of this run (all ranks).
  double images_per_second() const { return images_ / std::max(wall_.seconds(), 1e-9); }

 private:
  void print(int64_t epoch, int64_t done, double lr, double mean) const {
    const double el = wall_.seconds();
    const double ips = images_per_second();
    const double eta = (total_ - done) * el / std::max<int64_t>(1, done - start_);
    const int width = 20;
    const int filled = static_cast<int>(width * done / std::max<int64_t>(1, total_));
    const std::string bar = std::string(filled, '#') + std::string(width - filled, '.');
    char buf[256];
    std::snprintf(buf, sizeof buf, "ep %ld step %ld/%ld [%s] ETA %s %.0f img/s lr %.2e loss %.4f", (long)epoch + 1,
                  (long)done, (long)total_, bar.c_str(), fmt_duration(eta).c_str(), ips, lr, mean);
    std::string line = buf;
    for (auto& [k, v] : terms_) {
      std::snprintf(buf, sizeof buf, " %s %.4f", k.c_str(), v / n_);
      line += buf;
    }
    std::printf(tty_ ? "\r%s\033[K" : "%s\n", line.c_str());
    std::fflush(stdout);
  }

  int64_t total_, start_;
  bool quiet_;
  bool tty_ = isatty(STDOUT_FILENO);
  Timer wall_;
  double t_data_ = 0, t_fwd_ = 0, t_bwd_ = 0, t_opt_ = 0, loss_ = 0;
  int64_t n_ = 0, images_ = 0;
  bool first_ = true;
  std::map<std::string, double> terms_;
};

// SIGINT/SIGTERM ask the loop to stop (checkpoint saved); past a file-size limit (ulimit -f)
// writes fail with EFBIG, reported like a full disk, instead of the signal killing the run.
class SignalScope {
 public:
  SignalScope() {
    g_stop.store(false);
    int_ = std::signal(SIGINT, on_signal);
    term_ = std::signal(SIGTERM, on_signal);
    xfsz_ = std::signal(SIGXFSZ, SIG_IGN);
  }
  ~SignalScope() {
    std::signal(SIGINT, int_);
    std::signal(SIGTERM, term_);
    std::signal(SIGXFSZ, xfsz_);
  }
  SignalScope(const SignalScope&) = delete;
  SignalScope& operator=(const SignalScope&) = delete;

 private:
  using Handler = void (*)(int);
  Handler int_, term_, xfsz_;
};

}  // namespace

void request_stop() { g_stop.store(true); }

StepConfig step_config(const TrainConfig& cfg) {
  StepConfig sc;
  sc.device = cfg.device;
  sc.precision = cfg.precision;
  sc.adamw = cfg.adamw;
  sc.adamw.lr = cfg.lr;
  sc.clip_grad = cfg.clip_grad;
  return sc;
}

TrainResult train(Task& task, data::DataLoader& loader, const TrainConfig& cfg_in) {
  TrainConfig cfg = cfg_in;
  parallel::Comm* comm = cfg.comm.get();
  const bool main_rank = !comm || comm->is_main();
  const int64_t world = comm ? comm->size() : 1;
  if (loader.config().world_size != world || loader.config().rank != (comm ? comm->rank() : 0))
    throw Error("the data loader is sharded for rank " + std::to_string(loader.config().rank) + " of " +
                std::to_string(loader.config().world_size) + ", the process is rank " +
                std::to_string(comm ? comm->rank() : 0) + " of " + std::to_string(world));
  if (!main_rank) cfg.quiet = true;
  const RunFiles files(cfg.run_dir);
  if (main_rank) prepare_run_folder(files.dir);
  const CheckpointWriter writer{files, loader.config().batch_size * world, hash_text(cfg.recipe_text)};

  auto& module = task.module();
  TrainStep stepper(task, step_config(cfg));

  const int64_t per_epoch = loader.batches_per_epoch();
  if (per_epoch == 0) throw Error("data set '" + loader.dataset().name() + "' yields no batch of the requested size");
  const int64_t total = cfg.max_steps > 0 ? std::min(cfg.max_steps, cfg.epochs * per_epoch) : cfg.epochs * per_epoch;
  const int64_t warmup = static_cast<int64_t>(std::llround(cfg.warmup_epochs * per_epoch));

  torch::manual_seed(cfg.seed);
  Position pos;
  if (main_rank && cfg.resume && fs::exists(files.checkpoint)) {
    pos = resume_from(files.checkpoint, module, stepper.optimizer(),
                      {writer.recipe_hash, cfg.force, writer.global_batch, per_epoch});
    if (!cfg.quiet)
      std::printf("resumed from %s at step %ld (epoch %ld, batch %ld)\n", files.checkpoint.c_str(), (long)pos.step,
                  (long)pos.epoch, (long)pos.batch);
  } else if (cfg.resume && !cfg.quiet) {
    std::printf("no checkpoint in %s: starting from scratch\n", cfg.run_dir.c_str());
  }
  if (main_rank && pos.step == 0 && fs::exists(files.checkpoint) && !cfg.resume && !cfg.force)
    throw Error(cfg.run_dir + ": already holds a checkpoint; pass --resume to continue it or --force to start over");
  if (comm) {
    sync_ranks(*comm, module, stepper.optimizer(), pos, cfg.seed);
    stepper.join(cfg.comm);
  }

  // The effective recipe and the metrics, next to everything the run writes.
  std::unique_ptr<MetricsLog> metrics;
  if (main_rank) {
    if (!cfg.recipe_text.empty())
      atomic_write_file(files.recipe,
                        [&](std::FILE* f) { std::fwrite(cfg.recipe_text.data(), 1, cfg.recipe_text.size(), f); });
    metrics = std::make_unique<MetricsLog>(files.metrics, pos.step, cfg.tensorboard);
  }
  auto save_checkpoint = [&](const Position& p) {
    if (!main_rank) return;
    metrics->flush();  // metrics.jsonl and the events cover at least the steps the checkpoint does
    writer.save(module, stepper.optimizer(), p);
  };

  SignalScope signals;
  TrainResult result;
  Progress progress(total, pos.step, cfg.quiet);
  Timer wall;
  bool stop = false;
  while (pos.step < total && !stop) {
    loader.start_epoch(pos.epoch, pos.batch);
    data::Batch batch;
    while (pos.step < total) {
      Timer t;
      if (!loader.next(batch)) break;
      const double t_data = t.seconds();
      const double lr = cosine_lr(pos.step, total, warmup, cfg.lr, cfg.min_lr);
      StepStats s;
      try {
        // With several ranks the signal flags of all ranks are combined in the step's
        // collective, so that every rank stops after the same step.
        s = stepper.run(batch, lr, pos.step, comm && g_stop.load());
      } catch (const Error& e) {
        throw Error(std::string(e.what()) + "; " + files.last_good());
      }
      stop = s.stop;
      ++pos.step;
      ++pos.batch;
      progress.add(s, t_data, batch.images.size(0) * world);
      const bool log_now = pos.step % std::max<int64_t>(1, cfg.log_every) == 0 || pos.step == total;
      if (metrics) {
        nlohmann::json rec = {{"step", pos.step - 1}, {"epoch", pos.epoch}, {"lr", lr}, {"loss", s.loss},
                              {"time", wall.seconds()}};
        if (cfg.clip_grad > 0) rec["grad_norm"] = s.grad_norm;
        for (auto& [k, v] : s.terms) rec[k] = v;
        metrics->write(pos.step - 1, rec, log_now ? progress.images_per_second() : -1);
      }
      if (log_now) {
        if (metrics) metrics->flush();
        progress.log(pos.epoch, pos.step, lr, result);
      }
      if (cfg.checkpoint_every > 0 && pos.step % cfg.checkpoint_every == 0) save_checkpoint(pos);
      // --stop-after at or past the last step is simply the end of the run (the final model is saved).
      if (cfg.stop_at > 0 && pos.step >= cfg.stop_at && pos.step < total) stop = true;
      if (!comm && g_stop.load()) stop = true;  // one process: a signal during this step counts now
      if (stop) break;
    }
    if (stop) {
      save_checkpoint(pos);
      result.interrupted = true;
      if (!cfg.quiet)
        std::printf("%sinterrupted: checkpoint saved at step %ld; continue with --resume\n", progress.tty() ? "\n" : "",
                    (long)pos.step);
    } else if (pos.batch >= per_epoch || pos.step >= total) {
      if (pos.batch >= per_epoch) {
        ++pos.epoch;
        pos.batch = 0;
      }
      save_checkpoint(pos);
    }
  }
  result.steps = pos.step;
  result.seconds = wall.seconds();
  progress.finish(result.seconds);
  if (main_rank && !result.interrupted && pos.step >= total) task.save_final(cfg.run_dir);
  return result;
}

}  // namespace hd::train
