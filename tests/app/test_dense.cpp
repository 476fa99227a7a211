// `dense` end to end: a small random model on Fashion-MNIST mosaics writes result.json with
// accuracy, mIoU and per-class IoU in range, prints its summary, and reuses its token cache.
#include <gtest/gtest.h>

#include <filesystem>

#include "app/cli_util.h"

namespace fs = std::filesystem;
using namespace hd::testing;

TEST(Dense, WritesAccuracyMiouAndPerClassIou) {
  if (!fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")) GTEST_SKIP() << "no Fashion-MNIST";
  const auto dir = scratch("dense", "cli");
  ASSERT_EQ(run("init --arch vit_mini_patch4_28 --seed 5 -o " + dir + "/m.safetensors").code, 0);
  const std::string args = "dense -c " + dir + "/m.safetensors --train-n 60 --test-n 30 -b 32 -e 5 -t 2 "
                           "--precision fp32 --feature-cache " + dir + "/cache -o ";
  auto r = run(args + dir + "/a");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "dense: mIoU ")) << r.out;
  EXPECT_TRUE(contains(r.out, "60 train / 30 test mosaics of 7x7 tokens")) << r.out;
  auto j = read_json(dir + "/a/result.json");
  EXPECT_EQ(j.at("task"), "dense");
  EXPECT_EQ(j.at("n_train"), 60);
  EXPECT_EQ(j.at("n_test"), 30);
  EXPECT_EQ(j.at("train_tokens"), 60 * 49);
  EXPECT_EQ(j.at("test_tokens"), 30 * 49);
  EXPECT_EQ(j.at("precision"), "fp32");
  for (const char* k : {"token_acc", "train_token_acc", "miou"}) {
    const double v = j.at(k).get<double>();
    EXPECT_GE(v, 0.0) << k;
    EXPECT_LE(v, 1.0) << k;
  }
  // A random encoder's tokens still tell the classes apart better than chance (10 classes).
  EXPECT_GT(j.at("token_acc").get<double>(), 0.15);
  ASSERT_EQ(j.at("iou").size(), 10u);
  EXPECT_TRUE(j.at("iou").contains("Sneaker")) << j.at("iou");
  for (auto& [name, v] : j.at("iou").items())
    if (!v.is_null()) {
      EXPECT_GE(v.get<double>(), 0.0) << name;
      EXPECT_LE(v.get<double>(), 1.0) << name;
    }
  EXPECT_TRUE(j.contains("build"));
  EXPECT_TRUE(contains(j.at("command").get<std::string>(), "dense"));

  // Second run: the tokens come from the cache (no extraction line), the result is the same.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir + "/cache"), fs::directory_iterator{}), 2);
  r = run(args + dir + "/b");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_FALSE(contains(r.out, "tokens of")) << r.out;
  EXPECT_EQ(read_json(dir + "/b/result.json").at("miou"), j.at("miou"));

  // A coarser model: 7-px patches, a 4x4 grid, mosaics cut in the middle.
  ASSERT_EQ(run("init --arch vit_mini_patch7_28 --seed 5 -o " + dir + "/m7.safetensors").code, 0);
  r = run("dense -c " + dir + "/m7.safetensors --train-n 8 --test-n 4 -e 1 -t 2 -q --precision fp32 -o " + dir + "/c");
  EXPECT_EQ(r.code, 0) << r.out;
}
