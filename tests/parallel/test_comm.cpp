// Data-parallel primitives against hand-computed results: environment parsing, broadcast,
// bucketed gradient averaging (including parameters only some ranks reach), and failures that
// must end in a clear error within a bounded time (a rank that dies, a rank that never comes).
// The multi-process cases run this test binary again as the ranks (DistWorker.Main, selected by
// HD_DIST_WORKER), each checking its own results with gtest.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <cstdlib>
#include <string>
#include <thread>

#include <torch/torch.h>

#include "parallel/comm.h"
#include "test_util.h"
#include "util/error.h"

using namespace hd;
using namespace hd::parallel;

namespace {

std::string self_exe() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

struct Outcome {
  int code;
  std::string out;
};

// Runs `mode` as ranks 0..world-1 of one job (all at once) and returns each rank's exit code and
// output, in rank order.
std::vector<Outcome> run_ranks(const std::string& mode, int world) {
  const int port = free_loopback_port();
  std::vector<FILE*> pipes;
  for (int r = 0; r < world; ++r) {
    std::string cmd = "HD_DIST_WORKER=" + mode + " RANK=" + std::to_string(r) + " WORLD_SIZE=" + std::to_string(world) +
                      " MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " OMP_WAIT_POLICY=PASSIVE " +
                      self_exe() + " --gtest_filter=DistWorker.Main 2>&1";
    pipes.push_back(popen(cmd.c_str(), "r"));
  }
  std::vector<Outcome> out;
  for (auto* p : pipes) {
    std::string text;
    char buf[4096];
    while (size_t n = std::fread(buf, 1, sizeof buf, p)) text.append(buf, n);
    int status = pclose(p);
    out.push_back({WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), text});
  }
  return out;
}

void set_env(const char* k, const char* v) {
  if (v) ::setenv(k, v, 1);
  else ::unsetenv(k);
}

// Restores the rendezvous variables after a test that sets them.
struct EnvGuard {
  ~EnvGuard() {
    for (const char* k : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}) ::unsetenv(k);
  }
};

using hd::testing::error_of;

}  // namespace

TEST(DistEnv, ReadsTheStandardVariables) {
  EnvGuard g;
  for (const char* k : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}) ::unsetenv(k);
  EXPECT_FALSE(env_from_environment().distributed());
  set_env("WORLD_SIZE", "1");
  EXPECT_FALSE(env_from_environment().distributed());

  set_env("WORLD_SIZE", "4");
  EXPECT_NE(error_of([] { env_from_environment(); }).find("RANK is not set"), std::string::npos);
  set_env("RANK", "2");
  EXPECT_NE(error_of([] { env_from_environment(); }).find("MASTER_ADDR is not set"), std::string::npos);
  set_env("MASTER_ADDR", "10.1.2.3");
  EXPECT_NE(error_of([] { env_from_environment(); }).find("MASTER_PORT is not set"), std::string::npos);
  set_env("MASTER_PORT", "29511");
  auto e = env_from_environment();
  EXPECT_TRUE(e.distributed());
  EXPECT_EQ(e.rank, 2);
  EXPECT_EQ(e.world_size, 4);
  EXPECT_EQ(e.local_rank, 2);  // defaults to RANK
  EXPECT_EQ(e.master_addr, "10.1.2.3");
  EXPECT_EQ(e.port, 29511);
  set_env("LOCAL_RANK", "0");
  EXPECT_EQ(env_from_environment().local_rank, 0);

  set_env("RANK", "4");
  EXPECT_NE(error_of([] { env_from_environment(); }).find("RANK=4 is out of range [0, 3]"), std::string::npos);
  set_env("RANK", "1");
  set_env("MASTER_PORT", "80x");
  EXPECT_NE(error_of([] { env_from_environment(); }).find("MASTER_PORT='80x' is not an integer"), std::string::npos);
  set_env("MASTER_PORT", "70000");
  EXPECT_NE(error_of([] { env_from_environment(); }).find("MASTER_PORT=70000 is out of range"), std::string::npos);
}

TEST(DistComm, RankThatNeverComesIsAnErrorNotAHang) {
  Env e;
  e.rank = 0;
  e.world_size = 2;
  e.port = free_loopback_port();
  auto t0 = std::chrono::steady_clock::now();
  auto msg = error_of([&] { Comm::join(e, torch::kCPU, std::chrono::milliseconds(1500)); });
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(msg.find("rank 0 of 2: rendezvous at 127.0.0.1:" + std::to_string(e.port)), std::string::npos) << msg;
  EXPECT_LT(s, 30.0);
}

TEST(DistComm, BroadcastAndBucketedGradientAveraging) {
  auto out = run_ranks("reduce", 2);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(out[static_cast<size_t>(r)].code, 0) << "rank " << r << ":\n" << out[static_cast<size_t>(r)].out;
    EXPECT_NE(out[static_cast<size_t>(r)].out.find("[  PASSED  ] 1 test"), std::string::npos) << out[static_cast<size_t>(r)].out;
  }
}

TEST(DistComm, RankThatDiesMakesTheOthersFailWithAMessage) {
  auto t0 = std::chrono::steady_clock::now();
  auto out = run_ranks("die", 2);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(out[1].code, 3) << out[1].out;  // the rank that died, as it died
  EXPECT_EQ(out[0].code, 0) << out[0].out;  // its peer saw the expected error (checked inside)
  EXPECT_NE(out[0].out.find("[  PASSED  ] 1 test"), std::string::npos) << out[0].out;
  EXPECT_LT(s, 60.0);  // bounded by the collective timeout (20 s), not forever
}

// One rank of the jobs above; skipped when run directly.
TEST(DistWorker, Main) {
  const char* mode_c = std::getenv("HD_DIST_WORKER");
  if (!mode_c) GTEST_SKIP() << "runs as a rank of DistComm.* tests only";
  const std::string mode = mode_c;
  torch::set_num_threads(1);
  auto env = env_from_environment();
  ASSERT_TRUE(env.distributed());
  auto comm = Comm::join(env, torch::kCPU, std::chrono::milliseconds(20000));
  const int64_t r = comm->rank();
  const double W = static_cast<double>(comm->size());

  if (mode == "die") {
    if (r == 1) std::_Exit(3);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    auto t = torch::ones({4});
    auto t0 = std::chrono::steady_clock::now();
    std::string msg = error_of([&] {
      comm->allreduce_sum(t, "test all-reduce");
      comm->allreduce_sum(t, "test all-reduce");
    });
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_NE(msg.find("rank 0 of 2: test all-reduce failed"), std::string::npos) << msg;
    EXPECT_LT(s, 25.0);
    return;
  }

  // Broadcast: every rank ends with rank 0's values, for tensors of several dtypes.
  std::vector<torch::Tensor> b{torch::full({3}, static_cast<float>(r + 1)), torch::full({2, 2}, r * 10, torch::kLong),
                               torch::full({5}, static_cast<float>(-r))};
  comm->broadcast(b, 0, "test broadcast");
  EXPECT_TRUE(torch::equal(b[0], torch::full({3}, 1.0f)));
  EXPECT_TRUE(torch::equal(b[1], torch::zeros({2, 2}, torch::kLong)));
  EXPECT_TRUE(torch::equal(b[2], torch::zeros({5})));

  // Gradient averaging. a: every rank, scaled by rank+1; w: a larger tensor; d: rank 1 only;
  // u: no rank. A 16-byte bucket cap gives three buckets: [u], [d, w], [a].
  auto a = torch::arange(3, torch::kFloat).requires_grad_(true);
  auto w = torch::linspace(-1, 1, 40).requires_grad_(true);
  auto d = torch::ones({2}).requires_grad_(true);
  auto u = torch::ones({7}).requires_grad_(true);
  GradReducer reducer(comm, {a, w, d, u}, 16);
  EXPECT_EQ(reducer.num_buckets(), 3u);
  const double mean_scale = (W + 1) / 2;  // mean of 1..W
  for (int step = 0; step < 3; ++step) {  // the reducer re-arms every step
    for (auto* p : {&a, &w, &d, &u}) p->mutable_grad() = torch::Tensor();
    auto loss = (a * static_cast<double>(r + 1)).sum() + (w * w).sum() * static_cast<double>(r + 1) * (step + 1);
    if (r == 1) loss = loss + (d * 3.0).sum();
    reducer.begin();
    loss.backward();
    reducer.finish();
    EXPECT_TRUE(torch::allclose(a.grad(), torch::full({3}, mean_scale)));
    EXPECT_TRUE(torch::allclose(w.grad(), 2 * w.detach() * mean_scale * (step + 1)));
    ASSERT_TRUE(d.grad().defined());  // rank 0 did not reach d, rank 1 did: mean of 0 and 3
    EXPECT_TRUE(torch::allclose(d.grad(), torch::full({2}, 3.0 / W)));
    EXPECT_FALSE(u.grad().defined());
  }
}
