// Multi-process data parallel through the command line, on loopback with Gloo: two processes
// with half the batch each train the same weights as one process with the whole batch; a run
// stopped under one world size resumes under another to the same weights; a rank killed with
// SIGKILL makes its peer fail with a message instead of hanging; the launcher stops everything
// when a rank fails and reports which.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>

#include "app/cli_util.h"
#include "io/safetensors.h"

namespace fs = std::filesystem;
using namespace hd;
using namespace hd::testing;

namespace {

bool have_fashion() { return fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"); }

// Two tiny random teachers and a hybrid recipe (relations at two layers + final features,
// progressive masking, augmentation on, no drop path so that nothing random depends on the rank).
// The runs differ only by float rounding (GEMMs over 8 vs 16 images, the order of the gradient
// sum), which AdamW's normalised first steps amplify in proportion to the learning rate: at
// lr 5e-4 the weights agree to ~4e-6 after 6 steps, at 2e-3 to ~1.5e-5.
std::string setup(const std::string& name, int64_t max_steps) {
  auto dir = scratch("parallel", name);
  EXPECT_EQ(run("init --arch vit_mini_patch4_28 --num-classes 0 --seed 1 -o " + dir + "/mim.safetensors").code, 0);
  EXPECT_EQ(run("init --arch vit_mini_patch4_28 --num-classes 0 --seed 2 -o " + dir + "/sup.safetensors").code, 0);
  std::ofstream(dir + "/r.yaml")
      << "name: ddp\nstudent: {arch: vit_mini_patch4_28, drop_path: 0}\nteachers:\n"
         "  - name: mim\n    checkpoint: mim.safetensors\n    targets: [{kind: relation, layers: [3, 4]}]\n"
         "  - name: sup\n    checkpoint: sup.safetensors\n    targets: [{kind: features}]\n"
         "masking: {strategy: progressive, teacher: mim}\n"
         "data: {workers: 1}\noptim: {lr: 5.0e-4, base_batch: 16, warmup_epochs: 0, clip_grad: 1.0}\n"
         "train: {batch: 16, max_steps: "
      << max_steps << ", log_every: 2, checkpoint_every: 100}\n";
  return dir;
}

std::map<std::string, torch::Tensor> weights(const std::string& path) {
  std::map<std::string, torch::Tensor> m;
  for (auto& [k, v] : io::SafeTensorsFile::open(path).load_all()) m[k] = v;
  return m;
}

double max_abs_diff(const std::string& a, const std::string& b) {
  auto wa = weights(a), wb = weights(b);
  EXPECT_EQ(wa.size(), wb.size());
  double m = 0;
  for (auto& [k, v] : wa) {
    EXPECT_TRUE(wb.count(k)) << k;
    if (!wb.count(k)) continue;
    m = std::max(m, (v - wb[k]).abs().max().item<double>());
  }
  return m;
}

std::vector<double> losses(const std::string& metrics) {
  std::vector<double> l;
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) l.push_back(nlohmann::json::parse(line).at("loss").get<double>());
  return l;
}

}  // namespace

TEST(Parallel, TwoProcessesMatchOneWithTheWholeBatchAndResumeAcrossWorldSizes) {
  if (!have_fashion()) GTEST_SKIP() << "no Fashion-MNIST";
  auto dir = setup("Equivalence", 6);
  const std::string r = " -r " + dir + "/r.yaml -q --precision fp32 ";
  auto one = run("distill" + r + "-o " + dir + "/one -t 2");
  ASSERT_EQ(one.code, 0) << one.out;
  auto two = run("launch -n 2 -- distill" + r + "-o " + dir + "/two -t 1");
  ASSERT_EQ(two.code, 0) << two.out;
  const double d = max_abs_diff(dir + "/one/student.safetensors", dir + "/two/student.safetensors");
  EXPECT_LT(d, 1e-5) << "after 6 steps";
  EXPECT_GT(max_abs_diff(dir + "/one/student.safetensors", dir + "/mim.safetensors"), 1e-3);  // it did train
  auto l1 = losses(dir + "/one/metrics.jsonl"), l2 = losses(dir + "/two/metrics.jsonl");
  ASSERT_EQ(l1.size(), 6u);
  ASSERT_EQ(l2.size(), 6u);  // rank 0 alone writes, one line per step
  for (size_t i = 0; i < l1.size(); ++i) EXPECT_NEAR(l2[i], l1[i], 1e-5 * std::abs(l1[i])) << "step " << i;
  EXPECT_FALSE(fs::exists(dir + "/two/.write_test"));

  // Stopped after step 3 by two processes, finished by one: the same weights again.
  auto a = run("launch -n 2 -- distill" + r + "-o " + dir + "/switch -t 1 --stop-after 3");
  ASSERT_EQ(a.code, 0) << a.out;
  EXPECT_EQ(io::SafeTensorsFile::open(dir + "/switch/checkpoint.safetensors").metadata().at("step"), "3");
  auto b = run("distill" + r + "-o " + dir + "/switch -t 2 --resume");
  ASSERT_EQ(b.code, 0) << b.out;
  EXPECT_LT(max_abs_diff(dir + "/one/student.safetensors", dir + "/switch/student.safetensors"), 1e-5);

  // A global batch the processes cannot share evenly is refused, naming the cause. Every rank
  // refuses it, but the launcher stops the others as soon as the first one exits, so which
  // rank's message appears depends on timing.
  auto c = run("launch -n 2 -- distill" + r + "-o " + dir + "/odd --set train.batch=15");
  EXPECT_EQ(c.code, 1) << c.out;
  const std::string refusal = "]: error: batch 15 (the global batch) is not divisible by WORLD_SIZE=2";
  EXPECT_TRUE(contains(c.out, "hybrid-distill[rank 0" + refusal) || contains(c.out, "hybrid-distill[rank 1" + refusal))
      << c.out;
  EXPECT_TRUE(contains(c.out, "hybrid-distill launch: rank ")) << c.out;
}

TEST(Parallel, KilledRankMakesItsPeerFailWithinTheTimeout) {
  if (!have_fashion()) GTEST_SKIP() << "no Fashion-MNIST";
  auto dir = setup("Killed", 100000);
  const std::string env = "WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$((20000 + $$ % 20000)) ";
  const std::string cmd = std::string(HD_BINARY) + " distill -r " + dir + "/r.yaml -q -t 1 --dist-timeout 20 -o " + dir;
  // Both ranks in the background; once rank 0 has logged a step, rank 1 is killed.
  auto t0 = std::chrono::steady_clock::now();
  auto res = run("--version >/dev/null; " + env + "RANK=0 " + cmd + "/run 2>&1 & P0=$!; " + env + "RANK=1 " + cmd +
                 "/run1 2>&1 & P1=$!; for i in $(seq 1 600); do [ -s " + dir +
                 "/run/metrics.jsonl ] && break; sleep 0.1; done; kill -9 $P1; wait $P0; echo rank0=$?");
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_TRUE(contains(res.out, "rank0=1")) << res.out;
  EXPECT_TRUE(contains(res.out, "hybrid-distill[rank 0]: error: rank 0 of 2:")) << res.out;
  EXPECT_TRUE(contains(res.out, "failed (another rank exited")) << res.out;
  EXPECT_LT(s, 100.0);
}

TEST(Parallel, LauncherStopsTheOthersWhenARankFails) {
  auto dir = scratch("parallel", "Launcher");
  auto r = run("launch -n 2");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(contains(r.out, "no command given")) << r.out;
  // Rank 1's command fails at once; rank 0 waits for it at the rendezvous and is stopped.
  r = run("launch -n 2 --grace 2 -- distill -r " + dir + "/missing.yaml");
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "missing.yaml")) << r.out;
  EXPECT_TRUE(contains(r.out, "hybrid-distill launch: rank")) << r.out;
}
