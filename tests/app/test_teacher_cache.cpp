// distill --teacher-cache end to end: cold and warm runs give the uncached losses, and data.seed
// keeps the views (hence the cache) of runs with another train.seed.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "app/cli_util.h"

namespace fs = std::filesystem;
using namespace hd::testing;

namespace {

// Loss and every term of each step in metrics.jsonl (times and speeds left out).
std::vector<std::string> losses(const std::string& run) {
  std::vector<std::string> out;
  std::ifstream in(run + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    nlohmann::json keep;
    for (auto& [k, v] : j.items())
      if (k == "loss" || k.find('.') != std::string::npos) keep[k] = v;
    out.push_back(keep.dump());
  }
  return out;
}

}  // namespace

TEST(TeacherCache, CliColdAndWarmRunsAgreeAndDataSeedKeepsTheViews) {
  if (!fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")) GTEST_SKIP() << "no Fashion-MNIST";
  const auto dir = scratch("cli", "TeacherCache");
  ASSERT_EQ(run("init --arch vit_mini_patch4_28 --num-classes 0 --seed 1 -o " + dir + "/mim.safetensors").code, 0);
  ASSERT_EQ(run("init --arch vit_mini_patch4_28 --num-classes 0 --seed 2 -o " + dir + "/sup.safetensors").code, 0);
  {
    // Augmented views, masking from the teacher: nothing in the teachers' inputs depends on train.seed.
    std::ofstream r(dir + "/r.yaml");
    r << "name: cache\nstudent: {arch: vit_mini_patch4_28}\nteachers:\n"
         "  - name: mim\n    checkpoint: mim.safetensors\n    targets: [{kind: relation, layers: [3, 4]}]\n"
         "  - name: sup\n    checkpoint: sup.safetensors\n    targets: [{kind: features, norm: layernorm}]\n"
         "masking: {strategy: progressive, teacher: mim}\n"
         "data: {augment: true, workers: 1, seed: 5}\ntrain: {batch: 8, seed: 1, log_every: 1}\n";
  }
  const std::string base = "distill --precision fp32 -t 1 -q --no-tensorboard -r " + dir + "/r.yaml";
  const std::string steps = " --max-steps 3";
  const std::string cache = " --teacher-cache " + dir + "/cache";
  auto r = run(base + steps + " -o " + dir + "/plain");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_FALSE(fs::exists(dir + "/plain/teacher_cache.json"));

  r = run(base + steps + cache + " -o " + dir + "/cold");
  ASSERT_EQ(r.code, 0) << r.out;
  auto cold = read_json(dir + "/cold/teacher_cache.json");
  EXPECT_EQ(cold["hits"].get<int64_t>(), 0);
  EXPECT_EQ(cold["misses"].get<int64_t>(), 6);  // 3 steps x 2 teachers
  EXPECT_GT(cold["bytes_written"].get<uint64_t>(), 0u);

  r = run(base + steps + cache + " -o " + dir + "/warm --teacher-cache-gb 1");
  ASSERT_EQ(r.code, 0) << r.out;
  auto warm = read_json(dir + "/warm/teacher_cache.json");
  EXPECT_EQ(warm["hits"].get<int64_t>(), 6);
  EXPECT_EQ(warm["misses"].get<int64_t>(), 0);
  EXPECT_EQ(warm["bytes_written"].get<int64_t>(), 0);
  EXPECT_EQ(warm["bytes_read"].get<uint64_t>(), cold["bytes_written"].get<uint64_t>());

  const auto plain = losses(dir + "/plain");
  ASSERT_EQ(plain.size(), 3u);
  EXPECT_EQ(losses(dir + "/cold"), plain);
  EXPECT_EQ(losses(dir + "/warm"), plain);

  // Another initialisation, the same views: every teacher forward still comes from the cache,
  // and the summary line says so (without -q).
  r = run("distill --precision fp32 -t 1 --no-tensorboard --max-steps 3 -r " + dir + "/r.yaml --set train.seed=2" +
          cache + " -o " + dir + "/seed2");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "teacher cache " + dir + "/cache: 6 hits, 0 misses")) << r.out;
  EXPECT_NE(losses(dir + "/seed2"), plain);
  // Other views (data.seed) miss.
  r = run(base + steps + " --set data.seed=6" + cache + " -o " + dir + "/views6");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(read_json(dir + "/views6/teacher_cache.json")["misses"].get<int64_t>(), 6);

  // A bound the run cannot keep: refused after its first step, naming the folder and the option.
  r = run(base + " --max-steps 100000 --set data.seed=7" + cache + " --teacher-cache-gb 0.001 -o " + dir + "/big");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(contains(r.out, dir + "/cache: the teacher cache would outgrow its bound")) << r.out;
  EXPECT_TRUE(contains(r.out, "--teacher-cache-gb")) << r.out;
}
