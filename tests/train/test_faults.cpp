// Faults during long runs: a process killed while writing a checkpoint, a full disk (a file-size
// limit stands in for it), non-finite losses and gradients, unusable run folders and
// checkpoints. The run must stop with a message naming what went wrong and keep the last good
// checkpoint, from which --resume continues.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <functional>
#include <fstream>
#include <limits>
#include <random>

#include <torch/torch.h>

#include "data/data_test_util.h"
#include "data/loader.h"
#include "io/safetensors.h"
#include "test_util.h"
#include "train/trainer.h"
#include "util/error.h"

namespace fs = std::filesystem;
using namespace hd;

namespace {

struct TinyNetImpl : torch::nn::Module {
  TinyNetImpl() { fc = register_module("fc", torch::nn::Linear(64, 3)); }
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(TinyNet);

// Linear classifier on 8x8 images plus a small weight penalty ('reg'); can be told to make the
// loss NaN, or the gradients NaN with a finite loss, at a given call.
class TinyTask : public train::Task {
 public:
  TinyNet net;
  int64_t calls = 0, nan_loss_at = -1, nan_grad_at = -1;

  torch::nn::Module& module() override { return *net; }
  bool decays(const std::string&, const torch::Tensor& p) const override { return p.dim() > 1; }
  torch::Tensor loss(const data::Batch& b, train::NamedTensors& terms) override {
    const int64_t call = calls++;
    auto ce = torch::nn::functional::cross_entropy(net->fc(b.images.flatten(1)), b.labels);
    auto reg = net->fc->weight.pow(2).mean();
    if (call == nan_loss_at) reg = reg * std::numeric_limits<double>::quiet_NaN();
    // sqrt(|w - w|) is 0, but its gradient is 0 * inf = NaN.
    if (call == nan_grad_at) reg = reg + (net->fc->weight - net->fc->weight.detach()).abs().sqrt().sum();
    terms.emplace_back("ce", ce.detach());
    terms.emplace_back("reg", reg.detach());
    return ce + reg;
  }
  void save_final(const std::string& run_dir) override {}
};

std::shared_ptr<data::Dataset> tiny_dataset() {
  return std::make_shared<data::testing::SyntheticDataset>(32, 1, 8, 8, 3);  // 8 batches of 4
}

data::LoaderConfig tiny_loader() {
  data::LoaderConfig lc;
  lc.batch_size = 4;
  lc.num_workers = 0;
  lc.transform.size = 8;
  lc.transform.channels = 1;
  lc.transform.mean = {0.5};
  lc.transform.std = {0.5};
  return lc;
}

train::TrainConfig tiny_config(const std::string& dir) {
  train::TrainConfig tc;
  tc.run_dir = dir;
  tc.max_steps = 12;
  tc.epochs = 2;
  tc.lr = 1e-2;
  tc.checkpoint_every = 2;
  tc.recipe_text = "tiny";
  tc.quiet = true;
  tc.force = true;
  return tc;
}

using hd::testing::error_of;

int64_t checkpoint_step(const std::string& path) {
  return std::stoll(io::SafeTensorsFile::open(path).metadata().at("step"));
}

std::vector<std::string> temporaries(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().find(".tmp") != std::string::npos) out.push_back(e.path().string());
  return out;
}

bool all_finite(const std::string& ckpt) {
  for (auto& [k, v] : io::SafeTensorsFile::open(ckpt).load_all())
    if (v.is_floating_point() && !torch::isfinite(v).all().item<bool>()) return false;
  return true;
}

}  // namespace

TEST(Faults, SigkillDuringCheckpointWritesKeepsLastCheckpoint) {
  data::testing::TempDir dir("hd_faults_kill");
  const std::string path = dir.file("checkpoint.safetensors");
  // 4 MiB per write, so that kills land inside writes as well as between them.
  auto t = torch::zeros({1 << 20}, torch::kInt32);
  io::save_safetensors(path, {{"v", t}}, {{"step", "0"}});
  std::mt19937 rng(7);
  int64_t last = 0;
  for (int trial = 0; trial < 20; ++trial) {
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {  // writes checkpoints in a loop, each one all of its own step number
      try {
        for (int32_t step = static_cast<int32_t>(last) + 1;; ++step) {
          std::fill_n(t.data_ptr<int32_t>(), t.numel(), step);
          io::save_safetensors(path, {{"v", t}}, {{"step", std::to_string(step)}});
        }
      } catch (...) {
      }
      ::_exit(3);
    }
    // The first run lasts long enough to complete writes; the others stop at random moments.
    ::usleep(trial == 0 ? 300000 : std::uniform_int_distribution<int>(1000, 60000)(rng));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "the writer stopped by itself (status " << status << ")";
    // Whatever the moment of the kill, the file is a complete checkpoint of one step.
    auto f = io::SafeTensorsFile::open(path);
    const int64_t step = std::stoll(f.metadata().at("step"));
    auto v = f.load("v");
    EXPECT_EQ(v.min().item<int64_t>(), step);
    EXPECT_EQ(v.max().item<int64_t>(), step);
    EXPECT_GE(step, last);
    last = step;
  }
  EXPECT_GT(last, 0) << "no checkpoint completed in 20 runs";
  // Stray temporaries never stand in the way of the next write.
  io::save_safetensors(path, {{"v", torch::ones({2})}}, {{"step", "x"}});
  EXPECT_EQ(io::SafeTensorsFile::open(path).metadata().at("step"), "x");
}

TEST(Faults, ResumeAfterKillRemovesTemporariesAndContinues) {
  data::testing::TempDir dir("hd_faults_resume");
  const std::string run = dir.file("run");
  {
    TinyTask task;
    data::DataLoader loader(tiny_dataset(), tiny_loader());
    auto tc = tiny_config(run);
    tc.stop_at = 4;
    EXPECT_TRUE(train::train(task, loader, tc).interrupted);
  }
  // What a run killed in the middle of a save leaves behind.
  { std::ofstream(run + "/.checkpoint.safetensors.tmp12345") << "partial"; }
  { std::ofstream(run + "/.metrics.jsonl.tmp777") << "partial"; }
  { std::ofstream(run + "/notes.tmp1") << "kept"; }  // not a temporary of ours
  TinyTask task;
  data::DataLoader loader(tiny_dataset(), tiny_loader());
  auto tc = tiny_config(run);
  tc.resume = true;
  tc.force = false;
  auto res = train::train(task, loader, tc);
  EXPECT_EQ(res.steps, 12);
  EXPECT_FALSE(res.interrupted);
  EXPECT_EQ(temporaries(run), std::vector<std::string>{run + "/notes.tmp1"});
  EXPECT_EQ(checkpoint_step(run + "/checkpoint.safetensors"), 12);
}

TEST(Faults, FullDiskGivesClearErrorAndKeepsCheckpoint) {
  data::testing::TempDir dir("hd_faults_disk");
  const std::string run = dir.file("run"), ckpt = run + "/checkpoint.safetensors";
  {
    TinyTask task;
    data::DataLoader loader(tiny_dataset(), tiny_loader());
    auto tc = tiny_config(run);
    tc.stop_at = 2;
    train::train(task, loader, tc);
  }
  ASSERT_EQ(checkpoint_step(ckpt), 2);
  const auto size = fs::file_size(ckpt);
  // A file-size limit below the checkpoint's size: writes fail with EFBIG, as on a full disk.
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  rlimit small = old;
  small.rlim_cur = size / 2;
  auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  std::string msg = error_of([&] {
    TinyTask task;
    data::DataLoader loader(tiny_dataset(), tiny_loader());
    auto tc = tiny_config(run);
    tc.resume = true;
    train::train(task, loader, tc);
  });
  ::setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_NE(msg.find(ckpt), std::string::npos) << msg;
  EXPECT_NE(msg.find("File too large"), std::string::npos) << msg;
  EXPECT_NE(msg.find("checkpoint of step 4 not saved"), std::string::npos) << msg;
  // The last good checkpoint is intact, nothing is left behind, and the run continues from it.
  EXPECT_EQ(checkpoint_step(ckpt), 2);
  EXPECT_TRUE(temporaries(run).empty());
  TinyTask task;
  data::DataLoader loader(tiny_dataset(), tiny_loader());
  auto tc = tiny_config(run);
  tc.resume = true;
  EXPECT_EQ(train::train(task, loader, tc).steps, 12);
}

TEST(Faults, NonFiniteLossStopsNamingStepAndTerm) {
  data::testing::TempDir dir("hd_faults_nan");
  const std::string run = dir.file("run"), ckpt = run + "/checkpoint.safetensors";
  TinyTask task;
  task.nan_loss_at = 5;
  data::DataLoader loader(tiny_dataset(), tiny_loader());
  std::string msg = error_of([&] { train::train(task, loader, tiny_config(run)); });
  EXPECT_NE(msg.find("loss became nan at step 5"), std::string::npos) << msg;
  EXPECT_NE(msg.find("term 'reg'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("the last good checkpoint is " + ckpt), std::string::npos) << msg;
  EXPECT_EQ(checkpoint_step(ckpt), 4);
  EXPECT_TRUE(all_finite(ckpt));
  // Resuming (here without the fault) continues from that checkpoint.
  TinyTask again;
  data::DataLoader loader2(tiny_dataset(), tiny_loader());
  auto tc = tiny_config(run);
  tc.resume = true;
  EXPECT_EQ(train::train(again, loader2, tc).steps, 12);
}

TEST(Faults, NonFiniteGradientsNeverReachTheCheckpoint) {
  data::testing::TempDir dir("hd_faults_grad");
  {
    // With clipping, the gradient norm gives it away before the update.
    const std::string run = dir.file("clip");
    TinyTask task;
    task.nan_grad_at = 3;
    data::DataLoader loader(tiny_dataset(), tiny_loader());
    auto tc = tiny_config(run);
    tc.clip_grad = 1.0;
    std::string msg = error_of([&] { train::train(task, loader, tc); });
    EXPECT_NE(msg.find("gradient norm became nan at step 3"), std::string::npos) << msg;
    EXPECT_EQ(checkpoint_step(run + "/checkpoint.safetensors"), 2);
  }
  {
    // Without clipping the update goes through; the next save refuses the broken parameters.
    const std::string run = dir.file("noclip");
    TinyTask task;
    task.nan_grad_at = 3;
    data::DataLoader loader(tiny_dataset(), tiny_loader());
    auto tc = tiny_config(run);
    tc.checkpoint_every = 1;
    std::string msg = error_of([&] { train::train(task, loader, tc); });
    EXPECT_NE(msg.find("became non-finite"), std::string::npos) << msg;
    EXPECT_NE(msg.find("before step 4"), std::string::npos) << msg;
    EXPECT_EQ(checkpoint_step(run + "/checkpoint.safetensors"), 3);
    EXPECT_TRUE(all_finite(run + "/checkpoint.safetensors"));
  }
}

TEST(Faults, UnusableRunFoldersAndCheckpointsNameTheFile) {
  data::testing::TempDir dir("hd_faults_folders");
  TinyTask task;
  data::DataLoader loader(tiny_dataset(), tiny_loader());
  // Root ignores permissions: a path below a regular file can never be created.
  std::string msg = error_of([&] { train::train(task, loader, tiny_config("/dev/null/run")); });
  EXPECT_NE(msg.find("/dev/null/run: cannot create the run folder"), std::string::npos) << msg;

  const std::string run = dir.file("run"), ckpt = run + "/checkpoint.safetensors";
  fs::create_directories(run);
  io::save_safetensors(ckpt, {{"model.fc.weight", torch::zeros({3, 64})}});  // no step metadata
  auto tc = tiny_config(run);
  tc.resume = true;
  msg = error_of([&] { train::train(task, loader, tc); });
  EXPECT_NE(msg.find(ckpt + ": not a training checkpoint (no 'step'"), std::string::npos) << msg;

  // A checkpoint cut short (copied while being written by another tool, a broken download).
  {
    TinyTask t2;
    data::DataLoader l2(tiny_dataset(), tiny_loader());
    auto good = tiny_config(dir.file("good"));
    good.stop_at = 2;
    train::train(t2, l2, good);
  }
  fs::copy_file(dir.file("good") + "/checkpoint.safetensors", ckpt, fs::copy_options::overwrite_existing);
  fs::resize_file(ckpt, fs::file_size(ckpt) - 100);
  msg = error_of([&] { train::train(task, loader, tc); });
  EXPECT_NE(msg.find(ckpt), std::string::npos) << msg;
  EXPECT_NE(msg.find("beyond the end of the data buffer"), std::string::npos) << msg;
}
