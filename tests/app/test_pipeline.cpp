// The pipeline's commands at tiny scale, run as a user would: MAE pre-training and supervised
// training produce teachers that `distill` accepts, and knn / probe / finetune learn well above
// chance and write well-formed results that record their command.
#include <gtest/gtest.h>

#include <filesystem>

#include <torch/torch.h>

#include "app/cli_util.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"

namespace fs = std::filesystem;
using namespace hd::testing;

namespace {
const bool kHaveData = fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz");

void expect_result(const nlohmann::json& j, const std::string& task, const std::string& command_part) {
  EXPECT_EQ(j.at("task"), task);
  EXPECT_TRUE(contains(j.at("command").get<std::string>(), command_part)) << j.dump();
  EXPECT_TRUE(j.contains("version"));
}
}  // namespace

TEST(Pipeline, TeachersDistillAndEvaluate) {
  if (!kHaveData) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  const auto dir = scratch("pipeline", "all");
  const std::string t = " -t 2 -q --precision fp32";

  // MIM teacher: a few MAE steps.
  auto r = run("pretrain-mae -a vit_mini_patch7_28 --max-steps 6 -b 32 --decoder-dim 64 --decoder-depth 1 -o " + dir +
               "/mae" + t);
  ASSERT_EQ(r.code, 0) << r.out;
  auto mae = read_json(dir + "/mae/result.json");
  expect_result(mae, "pretrain-mae", "pretrain-mae -a vit_mini_patch7_28");
  EXPECT_EQ(mae.at("steps"), 6);
  auto enc = hd::io::SafeTensorsFile::open(dir + "/mae/model.safetensors");
  EXPECT_TRUE(enc.contains("blocks.5.attn.qkv.weight"));
  EXPECT_FALSE(enc.contains("decoder_pred.weight"));  // the encoder alone
  EXPECT_FALSE(enc.contains("mask_token"));

  // Supervised teacher: learns well above chance (10 classes, 10%) in 150 steps.
  r = run("train -a vit_mini_patch7_28 --max-steps 150 -b 64 --lr 2e-3 --drop-path 0 --scale-min 1 --warmup-epochs 0.02 "
          "--eval-limit 1000 -o " + dir +
          "/sup" + t);
  ASSERT_EQ(r.code, 0) << r.out;
  auto sup = read_json(dir + "/sup/result.json");
  expect_result(sup, "train", "--eval-limit 1000");
  EXPECT_EQ(sup.at("images"), 1000);
  EXPECT_GT(sup.at("top1").get<double>(), 0.35) << sup.dump();

  // Both load back as distillation teachers (names as in the shipped recipe; the recipe's
  // 12-block layer indices mapped onto these 6-block models).
  const std::string recipe = std::string(HD_SOURCE_DIR) + "/configs/fmnist_hybrid.yaml";
  r = run("distill -r " + recipe + " --set teachers.mim.checkpoint=" + dir + "/mae/model.safetensors" +
          " --set teachers.sup.checkpoint=" + dir + "/sup/model.safetensors --set student.arch=vit_mini_patch7_28" +
          " --set teachers.mim.targets.0.layers=[3,4] --set train.batch=32 --max-steps 4 -o " + dir + "/hybrid" + t);
  ASSERT_EQ(r.code, 0) << r.out;
  ASSERT_TRUE(fs::exists(dir + "/hybrid/student.safetensors"));

  // k-NN and linear probe on the supervised teacher's features, then from the feature cache.
  const std::string ev = " --train-limit 2000 --test-limit 500 --feature-cache " + dir + "/cache" + t;
  r = run("knn -c " + dir + "/sup/model.safetensors -o " + dir + "/knn" + ev);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "knn: top-1")) << r.out;
  auto knn = read_json(dir + "/knn/result.json");
  expect_result(knn, "knn", "--train-limit 2000");
  EXPECT_EQ(knn.at("k"), 20);
  EXPECT_EQ(knn.at("train_images"), 2000);
  EXPECT_EQ(knn.at("test_images"), 500);
  EXPECT_GT(knn.at("top1").get<double>(), 0.4) << knn.dump();
  EXPECT_EQ(std::distance(fs::directory_iterator(dir + "/cache"), fs::directory_iterator()), 2);

  r = run("probe -c " + dir + "/sup/model.safetensors -o " + dir + "/probe" + ev);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_FALSE(contains(r.out, "features of")) << "features come from the cache: " << r.out;
  auto probe = read_json(dir + "/probe/result.json");
  expect_result(probe, "probe", "probe -c");
  EXPECT_GT(probe.at("top1").get<double>(), 0.4) << probe.dump();
  EXPECT_GE(probe.at("train_top1").get<double>(), 0.0);

  // Fine-tuning the distilled student: its weights are the starting point (at a vanishing learning
  // rate they stay put), with a new head for the data set's classes.
  r = run("finetune -c " + dir + "/hybrid/student.safetensors --max-steps 5 -b 32 --lr 1e-12 --eval-limit 200 -o " + dir +
          "/ft" + t);
  ASSERT_EQ(r.code, 0) << r.out;
  auto ft = read_json(dir + "/ft/result.json");
  expect_result(ft, "finetune", "finetune -c");
  EXPECT_EQ(ft.at("images"), 200);
  auto tuned = hd::io::SafeTensorsFile::open(dir + "/ft/model.safetensors");
  auto student = hd::io::SafeTensorsFile::open(dir + "/hybrid/student.safetensors");
  EXPECT_TRUE(tuned.contains("head.weight"));
  EXPECT_EQ(tuned.load("head.weight").size(0), 10);
  EXPECT_FALSE(student.contains("head.weight"));
  for (const char* k : {"blocks.0.attn.qkv.weight", "blocks.5.mlp.fc2.bias", "pos_embed", "norm.weight"})
    EXPECT_LT((tuned.load(k) - student.load(k)).abs().max().item<double>(), 1e-6) << k;
  EXPECT_EQ(hd::model::checkpoint_config(dir + "/ft/model.safetensors").pool, hd::model::Pooling::Token);

  // --pool mean: the classifier reads the mean of the patch tokens (what knn / probe --pool mean
  // read), recorded in the fine-tuned model's config; other values are refused.
  r = run("finetune -c " + dir + "/hybrid/student.safetensors --pool mean --max-steps 2 -b 32 --eval-limit 100 -o " +
          dir + "/ft_mean" + t);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(hd::model::checkpoint_config(dir + "/ft_mean/model.safetensors").pool, hd::model::Pooling::Mean);
  // --head-init probe: the head starts as a linear probe on the frozen features, so at a vanishing
  // learning rate the model already classifies well above the zero head's chance level.
  r = run("finetune -c " + dir + "/hybrid/student.safetensors --pool mean --head-init probe --head-init-images 1000 "
          "--max-steps 1 -b 32 --lr 1e-12 --eval-limit 200 -o " + dir + "/ft_lp" + t);
  ASSERT_EQ(r.code, 0) << r.out;
  auto lp_res = read_json(dir + "/ft_lp/result.json");
  EXPECT_EQ(lp_res.at("head_init"), "probe");
  EXPECT_GT(lp_res.at("head_probe_train_top1").get<double>(), 0.4) << lp_res.dump();
  EXPECT_EQ(ft.at("head_init"), "zero");
  const double lp = lp_res.at("top1").get<double>();
  EXPECT_GT(lp, 0.4) << r.out;
  EXPECT_GT(lp, ft.at("top1").get<double>() + 0.2);
  r = run("finetune -c " + dir + "/hybrid/student.safetensors --pool max -o " + dir + "/ft_max" + t);
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(contains(r.out, "--pool")) << r.out;
}

TEST(Pipeline, BadEvaluationInputsAreRefused) {
  const auto dir = scratch("pipeline", "bad");
  auto r = run("knn -c " + dir + "/absent.safetensors -o " + dir + "/k");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(contains(r.out, "absent.safetensors")) << r.out;
  std::ofstream(dir + "/junk.safetensors") << "not a checkpoint";
  r = run("probe -c " + dir + "/junk.safetensors -o " + dir + "/p");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(contains(r.out, "junk.safetensors")) << r.out;
  r = run("knn -c " + dir + "/junk.safetensors --pool max -o " + dir + "/k");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(contains(r.out, "--pool")) << r.out;
  r = run("distill -r " + std::string(HD_SOURCE_DIR) + "/configs/fmnist_hybrid.yaml --set teachers.nobody.checkpoint=x -o " +
          dir + "/d");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(contains(r.out, "no list element named 'nobody'")) << r.out;
}
