// The command line facing faults and wrong inputs: a run killed with SIGKILL resumes from its
// last checkpoint, a changed recipe is not resumed unless forced, and unusable outputs, empty
// data folders, truncated checkpoints and teachers of another architecture give one clear
// message naming the file.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "app/cli_util.h"
#include "io/safetensors.h"

namespace fs = std::filesystem;
using namespace hd;
using namespace hd::testing;

namespace {

std::string scratch(const std::string& name) { return hd::testing::scratch("robustness", name); }

bool have_fashion() { return fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"); }

void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

// Steps recorded in metrics.jsonl, in file order.
std::vector<int64_t> metric_steps(const std::string& path) {
  std::vector<int64_t> steps;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) steps.push_back(nlohmann::json::parse(line).at("step").get<int64_t>());
  return steps;
}

}  // namespace

TEST(Robustness, KilledDistillResumesFromLastCheckpoint) {
  if (!have_fashion()) GTEST_SKIP() << "no Fashion-MNIST";
  auto dir = scratch("KilledDistill");
  ASSERT_EQ(run("init --arch vit_mini_patch4_28 --num-classes 0 --seed 1 -o " + dir + "/mim.safetensors").code, 0);
  write_text(dir + "/r.yaml",
             "name: kill\nstudent: {arch: vit_mini_patch4_28}\nteachers:\n"
             "  - name: mim\n    checkpoint: mim.safetensors\n    targets: [{kind: relation, layers: [4]}]\n"
             "masking: {strategy: progressive, teacher: mim}\n"
             "data: {augment: false, workers: 1}\ntrain: {batch: 16, max_steps: 120, log_every: 40, checkpoint_every: 2}\n");
  const std::string run_dir = dir + "/run", ckpt = run_dir + "/checkpoint.safetensors";
  // SIGKILL (no handler runs) shortly after the first checkpoint, in the middle of the run.
  auto r = run("distill --precision fp32 -r " + dir + "/r.yaml -o " + run_dir + " -q -t 1 & P=$!; " +
               "for i in $(seq 1 1200); do [ -f " + ckpt + " ] && break; sleep 0.1; done; sleep 0.3; kill -9 $P; wait $P");
  ASSERT_EQ(r.code, 137) << "the run was not killed mid-way: " << r.out;
  int64_t killed_at = std::stoll(io::SafeTensorsFile::open(ckpt).metadata().at("step"));
  EXPECT_GE(killed_at, 2);
  EXPECT_LT(killed_at, 120);

  // A copy cut short cannot be resumed, and says which file is at fault.
  fs::copy(run_dir, dir + "/cut", fs::copy_options::recursive);
  fs::resize_file(dir + "/cut/checkpoint.safetensors", fs::file_size(ckpt) / 2);
  r = run("distill --precision fp32 -r " + dir + "/r.yaml -o " + dir + "/cut --resume -q");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(contains(r.out, dir + "/cut/checkpoint.safetensors")) << r.out;

  r = run("distill --precision fp32 -r " + dir + "/r.yaml -o " + run_dir + " --resume -t 2");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "resumed from " + ckpt + " at step " + std::to_string(killed_at))) << r.out;
  EXPECT_TRUE(fs::exists(run_dir + "/student.safetensors"));
  EXPECT_EQ(std::stoll(io::SafeTensorsFile::open(ckpt).metadata().at("step")), 120);
  // Every step logged exactly once: the lines past the checkpoint were replaced, not repeated.
  auto steps = metric_steps(run_dir + "/metrics.jsonl");
  ASSERT_EQ(steps.size(), 120u);
  for (int64_t i = 0; i < 120; ++i) EXPECT_EQ(steps[static_cast<size_t>(i)], i);

  // Resuming with a different recipe is refused, unless forced.
  r = run("distill --precision fp32 -r " + dir + "/r.yaml -o " + run_dir + " --resume --set train.seed=9 -q");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(contains(r.out, ckpt + ": was written with a different recipe") && contains(r.out, "--force")) << r.out;
  r = run("distill --precision fp32 -r " + dir + "/r.yaml -o " + run_dir + " --resume --force --set train.seed=9");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "resumed from " + ckpt)) << r.out;
}

TEST(Robustness, UnwritableOutputsNameThePath) {
  // Tests run as root, which ignores permissions: a path below a regular file is never writable.
  auto r = run("init --arch vit_mini_patch4_28 -o /dev/null/m.safetensors");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(contains(r.out, "/dev/null/m.safetensors")) << r.out;
  if (!have_fashion()) GTEST_SKIP() << "no Fashion-MNIST";
  auto dir = scratch("Unwritable");
  ASSERT_EQ(run("init --arch vit_mini_patch4_28 --num-classes 0 -o " + dir + "/t.safetensors").code, 0);
  write_text(dir + "/r.yaml", "student: {arch: vit_mini_patch4_28}\nteachers:\n"
                              "  - {name: t, checkpoint: t.safetensors, targets: [{kind: features}]}\n"
                              "data: {workers: 1}\ntrain: {batch: 8, max_steps: 2}\n");
  r = run("distill --precision fp32 -r " + dir + "/r.yaml -o /dev/null/run -q");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(contains(r.out, "/dev/null/run: cannot create the run folder")) << r.out;
}

TEST(Robustness, EmptyDataFolderNamesTheFolder) {
  auto dir = scratch("EmptyData");
  fs::create_directories(dir + "/images");
  auto r = run("data --data " + dir + "/images --arch vit_mini_patch4_28 --no-model -n 1");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(contains(r.out, dir + "/images")) << r.out;
  EXPECT_TRUE(contains(r.out, "no class subfolders")) << r.out;
}

TEST(Robustness, TeacherOfAnotherArchitectureNamesTensorAndShapes) {
  auto dir = scratch("OtherArch");
  ASSERT_EQ(run("init --arch vit_mini_patch4_28 --num-classes 0 -o " + dir + "/t.safetensors").code, 0);
  // The recipe says the teacher is a ViT-Tiny; the file holds a ViT-Mini (128 wide, not 192).
  write_text(dir + "/r.yaml", "student: {arch: vit_mini_patch4_28}\nteachers:\n"
                              "  - {name: t, checkpoint: t.safetensors, arch: vit_tiny_patch4_28, targets: [{kind: features}]}\n");
  io::save_safetensors(dir + "/x.safetensors", {{"images", torch::zeros({1, 1, 28, 28})}});
  auto r = run("dump-step --precision fp32 -r " + dir + "/r.yaml -i " + dir + "/x.safetensors -o " + dir + "/o.safetensors");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(contains(r.out, dir + "/t.safetensors")) << r.out;
  EXPECT_TRUE(contains(r.out, "has shape [")) << r.out;
  EXPECT_FALSE(fs::exists(dir + "/o.safetensors"));
}

TEST(Robustness, TruncatedCheckpointNamesTheFile) {
  auto dir = scratch("Truncated");
  const std::string m = dir + "/m.safetensors";
  ASSERT_EQ(run("init --arch vit_mini_patch4_28 -o " + m).code, 0);
  fs::resize_file(m, fs::file_size(m) - 1000);
  auto r = run("inspect " + m);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(contains(r.out, m) && contains(r.out, "truncated")) << r.out;
}
