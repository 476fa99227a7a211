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

#include "dist/comm.h"
#include "io/safetensors.h"
#include "io/tfevents.h"
#include "model/checkpoint.h"
#include "util/common.h"

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

// "nan", "inf", "-inf" (whatever the NaN's sign bit) or the number.
std::string value_text(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return std::to_string(v);
}

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

// The numbers of a metrics.jsonl line as TensorBoard scalars "train/<key>" (step and time are
// the event's own fields), plus throughput where it is known (images_per_s >= 0).
io::Scalars event_scalars(const nlohmann::json& rec, double images_per_s) {
  io::Scalars out;
  for (auto& [k, v] : rec.items())
    if (v.is_number() && k != "step" && k != "time") out.emplace_back("train/" + k, v.get<double>());
  if (images_per_s >= 0) out.emplace_back("train/images_per_s", images_per_s);
  return out;
}

}  // namespace

void request_stop() { g_stop.store(true); }

TrainResult train(Task& task, data::DataLoader& loader, const TrainConfig& cfg_in) {
  TrainConfig cfg = cfg_in;
  dist::Comm* comm = cfg.comm.get();
  const bool main_rank = !comm || comm->is_main();
  const int64_t world = comm ? comm->size() : 1;
  if (loader.config().world_size != world || loader.config().rank != (comm ? comm->rank() : 0))
    throw Error("the data loader is sharded for rank " + std::to_string(loader.config().rank) + " of " +
                std::to_string(loader.config().world_size) + ", the process is rank " +
                std::to_string(comm ? comm->rank() : 0) + " of " + std::to_string(world));
  if (!main_rank) cfg.quiet = true;
  const int64_t global_batch = loader.config().batch_size * world;
  if (main_rank) {
    std::error_code ec;
    fs::create_directories(cfg.run_dir, ec);
    if (ec) throw Error(cfg.run_dir + ": cannot create the run folder: " + ec.message());
    // Fail early (before hours of work) if the run folder is not writable.
    std::string probe = (fs::path(cfg.run_dir) / ".write_test").string();
    std::FILE* f = std::fopen(probe.c_str(), "w");
    if (!f) throw Error(cfg.run_dir + ": run folder is not writable: " + std::strerror(errno));
    std::fclose(f);
    std::remove(probe.c_str());
    remove_stale_temporaries(cfg.run_dir);
  }
  const std::string ckpt_path = (fs::path(cfg.run_dir) / "checkpoint.safetensors").string();
  const std::string metrics_path = (fs::path(cfg.run_dir) / "metrics.jsonl").string();
  const std::string recipe_hash = hash_text(cfg.recipe_text);

  auto& module = task.module();
  module.to(cfg.device);
  module.train();
  std::vector<AdamW::Param> params;
  std::vector<torch::Tensor> plist;
  for (auto& p : module.named_parameters(true)) {
    if (!p.value().requires_grad()) continue;
    params.push_back({p.key(), p.value(), task.decays(p.key(), p.value()), task.lr_scale(p.key())});
    plist.push_back(p.value());
  }
  AdamWConfig acfg = cfg.adamw;
  acfg.lr = cfg.lr;
  AdamW opt(params, acfg);

  const int64_t per_epoch = loader.batches_per_epoch();
  if (per_epoch == 0) throw Error("data set '" + loader.dataset().name() + "' yields no batch of the requested size");
  const int64_t total = cfg.max_steps > 0 ? std::min(cfg.max_steps, cfg.epochs * per_epoch) : cfg.epochs * per_epoch;
  const int64_t warmup = static_cast<int64_t>(std::llround(cfg.warmup_epochs * per_epoch));

  torch::manual_seed(cfg.seed);
  Position pos;
  if (main_rank && cfg.resume && fs::exists(ckpt_path)) {
    auto file = io::SafeTensorsFile::open(ckpt_path);
    const auto& meta = file.metadata();
    auto h = meta.find("recipe_hash");
    if (h != meta.end() && h->second != recipe_hash && !cfg.force)
      throw Error(ckpt_path + ": was written with a different recipe; refusing to resume (use --force to resume anyway)");
    pos.step = meta_count(meta, "step", ckpt_path);
    pos.epoch = meta_count(meta, "epoch", ckpt_path);
    pos.batch = meta_count(meta, "batch", ckpt_path);
    if (meta.count("global_batch") && meta_count(meta, "global_batch", ckpt_path) != global_batch)
      throw Error(ckpt_path + ": was written with a global batch of " + meta.at("global_batch") + " images, this run has " +
                  std::to_string(global_batch) + " (batch per process x processes); its data position would not carry over");
    if (pos.batch > per_epoch)
      throw Error(ckpt_path + ": resumes at batch " + std::to_string(pos.batch) + " of an epoch of " +
                  std::to_string(per_epoch) + " batches (written with another batch size or data set?)");
    auto tensors = file.load_all();
    NamedTensors model_state, rest;
    for (auto& [k, v] : tensors) {
      if (k.rfind("model.", 0) == 0) model_state.emplace_back(k.substr(6), v);
      else rest.emplace_back(k, v);
    }
    model::load_state(module, model_state, true, ckpt_path);
    opt.load_state(rest, ckpt_path);
    for (auto& [k, v] : rest)
      if (k == "rng.cpu") {
        auto gen = at::detail::getDefaultCPUGenerator();
        std::lock_guard<std::mutex> lock(gen.mutex());
        try {
          gen.set_state(v);
        } catch (const c10::Error&) {
          throw Error(ckpt_path + ": tensor 'rng.cpu' is not a random generator state");
        }
      }
    if (!cfg.quiet) std::printf("resumed from %s at step %ld (epoch %ld, batch %ld)\n", ckpt_path.c_str(), (long)pos.step, (long)pos.epoch, (long)pos.batch);
  } else if (cfg.resume && !cfg.quiet) {
    std::printf("no checkpoint in %s: starting from scratch\n", cfg.run_dir.c_str());
  }
  if (main_rank && pos.step == 0 && fs::exists(ckpt_path) && !cfg.resume && !cfg.force)
    throw Error(cfg.run_dir + ": already holds a checkpoint; pass --resume to continue it or --force to start over");

  std::unique_ptr<dist::GradReducer> reducer;
  if (comm) {
    // Every rank starts from rank 0's state: weights (and buffers), optimiser state, position.
    std::vector<torch::Tensor> sync;
    for (auto& p : module.parameters(true)) sync.push_back(p);
    for (auto& b : module.buffers(true)) sync.push_back(b);
    auto ostate = opt.state();
    for (auto& [k, v] : ostate) sync.push_back(v);
    sync.push_back(torch::tensor({pos.step, pos.epoch, pos.batch}, torch::kLong));
    comm->broadcast(sync, 0, "broadcasting rank 0's starting state");
    if (!main_rank) {
      auto where = sync.back();
      pos.step = where[0].item<int64_t>();
      pos.epoch = where[1].item<int64_t>();
      pos.batch = where[2].item<int64_t>();
      opt.load_state(ostate, "rank 0's optimiser state");
      // Random draws (drop path, random masks) differ between ranks, as their images do.
      torch::manual_seed(data::splitmix64(cfg.seed ^ data::splitmix64(static_cast<uint64_t>(comm->rank()) +
                                                                       (static_cast<uint64_t>(pos.step) << 20))));
    }
    reducer = std::make_unique<dist::GradReducer>(cfg.comm, plist);
  }

  // The effective recipe, next to everything the run writes.
  if (main_rank && !cfg.recipe_text.empty())
    atomic_write_file((fs::path(cfg.run_dir) / "recipe.yaml").string(),
                      [&](std::FILE* f) { std::fwrite(cfg.recipe_text.data(), 1, cfg.recipe_text.size(), f); });

  // metrics.jsonl: keep the lines of steps already covered by the checkpoint.
  if (main_rank) {
    std::vector<std::string> keep;
    std::ifstream in(metrics_path);
    for (std::string line; std::getline(in, line);) {
      try {
        if (nlohmann::json::parse(line).at("step").get<int64_t>() < pos.step) keep.push_back(line);
      } catch (const std::exception&) {
      }
    }
    atomic_write_file(metrics_path, [&](std::FILE* f) {
      for (auto& l : keep) {
        if (std::fputs(l.c_str(), f) < 0 || std::fputc('\n', f) == EOF) throw Error("write failed");
      }
    });
  }
  std::ofstream metrics;
  if (main_rank) metrics.open(metrics_path, std::ios::app);
  std::unique_ptr<io::EventsWriter> events;
  if (main_rank) {
    io::trim_events_files(cfg.run_dir, pos.step);
    if (cfg.tensorboard) events = std::make_unique<io::EventsWriter>(cfg.run_dir);
  }

  auto last_good = [&] {
    std::error_code ec;
    return fs::exists(ckpt_path, ec) ? "the last good checkpoint is " + ckpt_path : std::string("no checkpoint was saved yet");
  };
  auto save_checkpoint = [&](const Position& p) {
    if (!main_rank) return;
    // metrics.jsonl (and the events file) cover at least the steps the checkpoint does, whenever
    // the run is killed.
    metrics.flush();
    if (events) events->flush();
    // A finite loss can still come with non-finite gradients (and clipping may be off): never
    // replace the last good checkpoint with broken parameters.
    for (auto& np : module.named_parameters(true))
      if (!torch::isfinite(np.value()).all().item<bool>())
        throw Error("parameter '" + np.key() + "' became non-finite (nan/inf) before step " + std::to_string(p.step) +
                    "; " + last_good());
    NamedTensors all;
    for (auto& [k, v] : model::state_dict(module)) all.emplace_back("model." + k, v.detach().cpu());
    for (auto& [k, v] : opt.state()) all.emplace_back(k, v.cpu());
    {
      auto gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      all.emplace_back("rng.cpu", gen.get_state());
    }
    try {
      io::save_safetensors(ckpt_path, all,
                           {{"step", std::to_string(p.step)},
                            {"epoch", std::to_string(p.epoch)},
                            {"batch", std::to_string(p.batch)},
                            {"global_batch", std::to_string(global_batch)},
                            {"recipe_hash", recipe_hash}});
    } catch (const Error& e) {
      throw Error(std::string(e.what()) + " (checkpoint of step " + std::to_string(p.step) +
                  " not saved; the previous checkpoint file, if any, is unchanged)");
    }
  };

  g_stop.store(false);
  auto old_int = std::signal(SIGINT, on_signal);
  auto old_term = std::signal(SIGTERM, on_signal);
  // Past a file-size limit (ulimit -f) writes then fail with EFBIG, reported like a full disk,
  // instead of the signal killing the run.
  auto old_xfsz = std::signal(SIGXFSZ, SIG_IGN);
  struct Restore {
    decltype(old_int) a, b, c;
    ~Restore() {
      std::signal(SIGINT, a);
      std::signal(SIGTERM, b);
      std::signal(SIGXFSZ, c);
    }
  } restore{old_int, old_term, old_xfsz};

  TrainResult result;
  const int64_t start_step = pos.step;
  Timer wall;
  const bool tty = isatty(STDOUT_FILENO);
  double t_data = 0, t_fwd = 0, t_bwd = 0, t_opt = 0, window_loss = 0;
  int64_t window_n = 0, images_done = 0;
  bool first_window = true;
  std::map<std::string, double> window_terms;

  // Whether to stop after the current step: --stop-after, or a signal; with several ranks the
  // signal flags of all ranks are combined in the step's collective, so that every rank stops
  // after the same step.
  bool stop = false;
  while (pos.step < total) {
    loader.start_epoch(pos.epoch, pos.batch);
    data::Batch batch;
    while (pos.step < total) {
      Timer t;
      if (!loader.next(batch)) break;
      t_data += t.seconds();
      const double lr = cosine_lr(pos.step, total, warmup, cfg.lr, cfg.min_lr);
      t.reset();
      // From pinned memory (LoaderConfig::pin_memory) the copies to a GPU are asynchronous.
      batch.images = batch.images.to(cfg.device, /*non_blocking=*/cfg.device.is_cuda());
      batch.labels = batch.labels.to(cfg.device, /*non_blocking=*/cfg.device.is_cuda());
      NamedTensors terms;
      torch::Tensor loss;
      {
        AutocastScope autocast(cfg.device, cfg.precision == Precision::BF16);
        loss = task.loss(batch, terms);
      }
      t_fwd += t.seconds();
      // The loss and its terms as logged (means over the ranks), and whether any rank was asked
      // to stop: one small collective keeps every rank's decisions identical.
      std::vector<double> values{loss.item<double>()};
      for (auto& [k, v] : terms) values.push_back(v.item<double>());
      if (comm) {
        values.push_back(g_stop.load() ? 1.0 : 0.0);
        auto packed = torch::tensor(values, torch::kDouble);
        comm->allreduce_sum(packed, "loss all-reduce at step " + std::to_string(pos.step));
        auto acc = packed.accessor<double, 1>();
        for (size_t i = 0; i + 1 < values.size(); ++i) values[i] = acc[static_cast<int64_t>(i)] / world;
        stop = acc[static_cast<int64_t>(values.size()) - 1] > 0;
        values.pop_back();
      }
      const double loss_v = values[0];
      if (!std::isfinite(loss_v)) {
        std::string bad = "total";
        for (size_t i = 0; i < terms.size(); ++i)
          if (!std::isfinite(values[i + 1])) bad = terms[i].first;
        throw Error("loss became " + value_text(loss_v) + " at step " + std::to_string(pos.step) + " (term '" + bad +
                    "'); " + last_good());
      }
      t.reset();
      opt.zero_grad();
      if (reducer) reducer->begin();
      loss.backward();
      if (reducer) reducer->finish();
      t_bwd += t.seconds();
      t.reset();
      double gnorm = cfg.clip_grad > 0 ? clip_grad_norm(plist, cfg.clip_grad) : 0.0;
      if (!std::isfinite(gnorm))
        throw Error("gradient norm became " + value_text(gnorm) + " at step " + std::to_string(pos.step) +
                    " (loss " + value_text(loss_v) + "); parameters not updated; " + last_good());
      opt.step(lr);
      t_opt += t.seconds();

      ++pos.step;
      ++pos.batch;
      images_done += batch.images.size(0) * world;
      window_loss += loss_v;
      ++window_n;
      nlohmann::json rec = {{"step", pos.step - 1}, {"epoch", pos.epoch}, {"lr", lr}, {"loss", loss_v},
                            {"time", wall.seconds()}};
      if (cfg.clip_grad > 0) rec["grad_norm"] = gnorm;
      for (size_t i = 0; i < terms.size(); ++i) {
        rec[terms[i].first] = values[i + 1];
        window_terms[terms[i].first] += values[i + 1];
      }
      if (main_rank) metrics << rec.dump() << "\n";

      const bool log_now = pos.step % std::max<int64_t>(1, cfg.log_every) == 0 || pos.step == total;
      if (events) events->add(pos.step - 1, event_scalars(rec, log_now ? images_done / std::max(wall.seconds(), 1e-9) : -1));
      if (log_now) {
        double mean = window_loss / window_n;
        if (first_window) result.first_loss = mean;
        first_window = false;
        result.last_loss = mean;
        if (main_rank) metrics.flush();
        if (events) events->flush();
        if (!cfg.quiet) {
          double el = wall.seconds();
          double ips = images_done / std::max(el, 1e-9);
          double eta = (total - pos.step) * el / std::max<int64_t>(1, pos.step - start_step);
          const int width = 20;
          int filled = static_cast<int>(width * pos.step / std::max<int64_t>(1, total));
          std::string bar = std::string(filled, '#') + std::string(width - filled, '.');
          std::string line;
          char buf[256];
          std::snprintf(buf, sizeof buf, "ep %ld step %ld/%ld [%s] ETA %s %.0f img/s lr %.2e loss %.4f", (long)pos.epoch + 1,
                        (long)pos.step, (long)total, bar.c_str(), fmt_duration(eta).c_str(), ips, lr, mean);
          line = buf;
          for (auto& [k, v] : window_terms) {
            std::snprintf(buf, sizeof buf, " %s %.4f", k.c_str(), v / window_n);
            line += buf;
          }
          std::printf(tty ? "\r%s\033[K" : "%s\n", line.c_str());
          std::fflush(stdout);
        }
        window_loss = 0;
        window_n = 0;
        window_terms.clear();
      }
      if (cfg.checkpoint_every > 0 && pos.step % cfg.checkpoint_every == 0) save_checkpoint(pos);
      if (cfg.stop_at > 0 && pos.step >= cfg.stop_at) stop = true;
      if (!comm && g_stop.load()) stop = true;  // one process: a signal during this step counts now
      if (stop) break;
    }
    if (stop) {
      save_checkpoint(pos);
      result.interrupted = true;
      if (!cfg.quiet) std::printf("%sinterrupted: checkpoint saved at step %ld; continue with --resume\n", tty ? "\n" : "", (long)pos.step);
      break;
    }
    if (pos.batch >= per_epoch || pos.step >= total) {
      if (pos.batch >= per_epoch) {
        ++pos.epoch;
        pos.batch = 0;
      }
      save_checkpoint(pos);
    }
  }
  result.steps = pos.step;
  result.seconds = wall.seconds();
  if (!cfg.quiet) {
    double sum = t_data + t_fwd + t_bwd + t_opt;
    if (tty) std::printf("\n");
    if (sum > 0)  // no step ran (a resumed run that was already complete): no shares to show
      std::printf("time per phase: data %.1f%%  forward+loss %.1f%%  backward %.1f%%  optimiser %.1f%%  (%.1f s)\n",
                100 * t_data / sum, 100 * t_fwd / sum, 100 * t_bwd / sum, 100 * t_opt / sum, result.seconds);
  }
  if (main_rank && !result.interrupted && pos.step >= total) task.save_final(cfg.run_dir);
  return result;
}

}  // namespace hd::train
