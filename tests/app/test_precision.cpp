// Every command that runs a model works in bf16 on any x86-64 CPU (with native bf16 or without,
// where LibTorch emulates it): each training command runs 2 steps with --precision bf16 and its
// losses are finite and close to the same run in fp32; the inference commands give results close
// to fp32. The precision is always given explicitly, so the test is the same on every CPU.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>

#include <torch/torch.h>

#include "app/cli_util.h"
#include "io/safetensors.h"

namespace fs = std::filesystem;
using namespace hd::testing;

namespace {

const bool kHaveData = fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz");

std::vector<double> losses(const std::string& metrics) {
  std::vector<double> l;
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) l.push_back(nlohmann::json::parse(line).at("loss").get<double>());
  return l;
}

// bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per value); through a 6-block model and
// one optimiser step the losses of these tiny runs differ from fp32 by well under 2% (measured:
// at most 0.6%). 3% + 1e-3 absolute leaves room without letting a wrong result through: a loss
// computed on unconverted bf16 targets, or a skipped autocast region, changes them by far more.
constexpr double kLossRtol = 0.03, kLossAtol = 1e-3;

void expect_close_losses(const std::string& what, const std::string& fp32_dir, const std::string& bf16_dir,
                         size_t steps) {
  SCOPED_TRACE(what);
  auto a = losses(fp32_dir + "/metrics.jsonl"), b = losses(bf16_dir + "/metrics.jsonl");
  ASSERT_EQ(a.size(), steps);
  ASSERT_EQ(b.size(), steps);
  for (size_t i = 0; i < steps; ++i) {
    EXPECT_TRUE(std::isfinite(b[i])) << "step " << i;
    EXPECT_NEAR(b[i], a[i], kLossRtol * std::abs(a[i]) + kLossAtol) << "step " << i;
  }
}

// One run per precision of `args` (which must end in "-o "), into DIR/NAME_fp32 and DIR/NAME_bf16.
void run_both(const std::string& args, const std::string& dir, const std::string& name) {
  for (const char* p : {"fp32", "bf16"}) {
    auto r = run(args + dir + "/" + name + "_" + p + " --precision " + p + " -t 2 -q");
    ASSERT_EQ(r.code, 0) << p << ": " << r.out;
  }
}

}  // namespace

TEST(Precision, EveryTrainingCommandRunsInBf16CloseToFp32) {
  if (!kHaveData) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  const auto dir = scratch("precision", "train");
  const std::string mini = " -a vit_mini_patch7_28 --max-steps 2 -b 16 -j 1 --warmup-epochs 0 ";

  run_both("pretrain-mae" + mini + "--decoder-dim 32 --decoder-depth 1 -o ", dir, "mae");
  expect_close_losses("pretrain-mae", dir + "/mae_fp32", dir + "/mae_bf16", 2);
  EXPECT_EQ(read_json(dir + "/mae_bf16/result.json").at("steps"), 2);

  run_both("train" + mini + "--drop-path 0 --eval-limit 64 -o ", dir, "sup");
  expect_close_losses("train", dir + "/sup_fp32", dir + "/sup_bf16", 2);
  auto sup = read_json(dir + "/sup_bf16/result.json");
  EXPECT_EQ(sup.at("precision"), "bf16");
  EXPECT_EQ(read_json(dir + "/sup_fp32/result.json").at("precision"), "fp32");
  EXPECT_GE(sup.at("top1").get<double>(), 0.0);

  // Both precisions distil from the same (fp32-trained) teachers; in bf16 the teachers run in bf16.
  const std::string recipe = std::string(HD_SOURCE_DIR) + "/configs/fmnist_hybrid.yaml";
  run_both("distill -r " + recipe + " --set teachers.mim.checkpoint=" + dir + "/mae_fp32/model.safetensors" +
               " --set teachers.sup.checkpoint=" + dir + "/sup_fp32/model.safetensors" +
               " --set student.arch=vit_mini_patch7_28 --set teachers.mim.targets.0.layers=[3,4]" +
               " --set train.batch=16 --set data.workers=1 --set optim.warmup_epochs=0 --max-steps 2 -o ",
           dir, "hybrid");
  expect_close_losses("distill", dir + "/hybrid_fp32", dir + "/hybrid_bf16", 2);

  run_both("finetune -c " + dir + "/hybrid_fp32/student.safetensors --max-steps 2 -b 16 -j 1 --warmup-epochs 0 "
           "--drop-path 0 --eval-limit 64 -o ",
           dir, "ft");
  expect_close_losses("finetune", dir + "/ft_fp32", dir + "/ft_bf16", 2);
}

TEST(Precision, EveryInferenceCommandRunsInBf16CloseToFp32) {
  if (!kHaveData) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  const auto dir = scratch("precision", "infer");
  const auto ckpt = dir + "/m.safetensors";
  ASSERT_EQ(run("init --arch vit_mini_patch4_28 --seed 3 -o " + ckpt).code, 0);
  torch::manual_seed(0);
  hd::io::save_safetensors(dir + "/x.safetensors", {{"images", torch::randn({3, 1, 28, 28})}});

  // features: the same taps, to bf16 accuracy; written as float32 either way.
  for (const char* p : {"fp32", "bf16"}) {
    auto r = run("features -c " + ckpt + " -i " + dir + "/x.safetensors -o " + dir + "/f_" + p +
                 ".safetensors --layers 0,-1 -t 2 --precision " + p);
    ASSERT_EQ(r.code, 0) << r.out;
  }
  auto f32 = hd::io::SafeTensorsFile::open(dir + "/f_fp32.safetensors");
  auto f16 = hd::io::SafeTensorsFile::open(dir + "/f_bf16.safetensors");
  EXPECT_EQ(f16.metadata().at("precision"), "bf16");
  for (const char* k : {"features", "block.5", "attn.5"}) {
    SCOPED_TRACE(k);
    auto a = f32.load(k), b = f16.load(k);
    EXPECT_EQ(b.scalar_type(), torch::kFloat);
    EXPECT_FALSE(torch::equal(a, b)) << "bf16 run computed in fp32";
    EXPECT_TRUE(torch::allclose(b, a, 5e-2, 5e-2)) << (b - a).abs().max().item<double>();
  }

  // dump-step: a hybrid step on the same images, the total loss close to fp32's.
  std::ofstream(dir + "/r.yaml") << "name: p\nstudent: {arch: vit_mini_patch4_28}\nteachers:\n"
                                    "  - {name: mim, checkpoint: " + ckpt + ", targets: [{kind: relation, layers: [4, 5]}]}\n"
                                    "  - {name: sup, checkpoint: " + ckpt + ", targets: [{kind: features, norm: layernorm}]}\n"
                                    "masking: {strategy: progressive, teacher: mim, drop_ratio: 0.3}\n";
  std::map<std::string, double> total;
  for (const char* p : {"fp32", "bf16"}) {
    auto r = run("dump-step -r " + dir + "/r.yaml -i " + dir + "/x.safetensors -o " + dir + "/s_" + p +
                 ".safetensors -t 2 --precision " + p);
    ASSERT_EQ(r.code, 0) << r.out;
    total[p] = hd::io::SafeTensorsFile::open(dir + "/s_" + p + ".safetensors").load("loss.total").item<double>();
  }
  EXPECT_TRUE(std::isfinite(total["bf16"]));
  EXPECT_NEAR(total["bf16"], total["fp32"], kLossRtol * std::abs(total["fp32"]) + kLossAtol);

  // knn / probe: the same accuracy up to a few images that flip.
  const std::string ev = " --train-limit 400 --test-limit 200 -j 1 -t 2 -q";
  for (const char* task : {"knn", "probe"}) {
    std::map<std::string, double> top1;
    for (const char* p : {"fp32", "bf16"}) {
      auto r = run(std::string(task) + " -c " + ckpt + " -o " + dir + "/" + task + "_" + p + ev + " --precision " + p);
      ASSERT_EQ(r.code, 0) << task << " " << p << ": " << r.out;
      top1[p] = read_json(dir + "/" + task + "_" + p + "/result.json").at("top1").get<double>();
    }
    EXPECT_NEAR(top1["bf16"], top1["fp32"], 0.05) << task;
  }

  // dense: token accuracy and mIoU up to a few tokens that flip.
  std::map<std::string, nlohmann::json> dense;
  for (const char* p : {"fp32", "bf16"}) {
    auto r = run("dense -c " + ckpt + " --train-n 100 --test-n 40 -e 5 -t 2 -q -o " + dir + "/dense_" + p +
                 " --precision " + p);
    ASSERT_EQ(r.code, 0) << p << ": " << r.out;
    dense[p] = read_json(dir + "/dense_" + p + "/result.json");
  }
  EXPECT_EQ(dense["bf16"].at("precision"), "bf16");
  for (const char* k : {"token_acc", "miou"})
    EXPECT_NEAR(dense["bf16"].at(k).get<double>(), dense["fp32"].at(k).get<double>(), 0.05) << k;

  // analyze: head distances and NMI to bf16 accuracy.
  std::map<std::string, nlohmann::json> diag;
  for (const char* p : {"fp32", "bf16"}) {
    auto r = run("analyze -c " + ckpt + " --data fashion-mnist -n 8 -b 4 -j 1 -t 2 --no-plots -o " + dir + "/a_" + p +
                 " --precision " + p);
    ASSERT_EQ(r.code, 0) << r.out;
    diag[p] = read_json(dir + "/a_" + p + "/diagnostics.json");
  }
  for (size_t l = 0; l < 6; ++l) {
    EXPECT_NEAR(diag["bf16"]["head_distance_mean"][l].get<double>(), diag["fp32"]["head_distance_mean"][l].get<double>(),
                0.02 * diag["fp32"]["head_distance_mean"][l].get<double>());
    EXPECT_NEAR(diag["bf16"]["nmi_mean"][l].get<double>(), diag["fp32"]["nmi_mean"][l].get<double>(), 0.01);
  }

  // bench: runs and says which precision it measured.
  auto r = run("bench -a vit_mini_patch7_28 -b 8 -w 0 -n 1 --no-python -t 2 --precision bf16");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "bf16 (autocast")) << r.out;
}

// Every command that runs a model takes --precision, and a short option means one thing across
// all subcommands (`-n` is each command's count: images, iterations, batches or processes).
TEST(Precision, EveryModelCommandTakesPrecisionAndShortOptionsAgree) {
  const std::vector<std::string> model_cmds{"pretrain-mae", "train",   "finetune", "distill", "dump-step",
                                            "knn",          "probe",   "dense",    "analyze",  "features",
                                            "bench"};
  for (const auto& c : model_cmds) {
    auto r = run(c + " --help");
    ASSERT_EQ(r.code, 0) << c;
    EXPECT_TRUE(contains(r.out, "--precision")) << c << ": " << r.out;
  }
  auto top = run("--help");
  ASSERT_EQ(top.code, 0);
  std::set<std::string> subcommands;
  std::regex sub_re(R"(^\s{2}([a-z][a-z0-9-]+)\s)");
  std::istringstream lines(top.out);
  bool in_subs = false;
  for (std::string line; std::getline(lines, line);) {
    if (contains(line, "SUBCOMMANDS") || contains(line, "Subcommands")) in_subs = true;
    std::smatch m;
    if (in_subs && std::regex_search(line, m, sub_re)) subcommands.insert(m[1]);
  }
  ASSERT_GE(subcommands.size(), model_cmds.size()) << top.out;
  std::map<std::string, std::set<std::string>> longs_of;  // "-q" -> {"--quiet"}
  std::regex opt_re(R"((^|\s)(-[a-zA-Z]),(--[a-z0-9-]+))");
  for (const auto& c : subcommands) {
    auto r = run(c + " --help");
    std::istringstream in(r.out);
    for (std::string line; std::getline(in, line);) {
      std::smatch m;
      if (std::regex_search(line, m, opt_re)) longs_of[m[2]].insert(m[3].str() + " (" + c + ")");
    }
  }
  ASSERT_TRUE(longs_of.count("-q")) << "no short options found";
  for (auto& [s, longs] : longs_of) {
    std::set<std::string> names;
    for (auto& l : longs) names.insert(l.substr(0, l.find(' ')));
    if (s == "-n") {
      for (auto& n : names)
        EXPECT_TRUE(n == "--images" || n == "--iters" || n == "--batches" || n == "--nproc") << n;
      continue;
    }
    std::string all;
    for (auto& l : longs) all += l + " ";
    EXPECT_EQ(names.size(), 1u) << s << " means: " << all;
  }
}
