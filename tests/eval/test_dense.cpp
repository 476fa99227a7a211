// Dense evaluation: accuracy and (m)IoU from hand-computed confusion matrices, the per-token
// probe on separable and on random tokens, and the tokens of a model on mosaics.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "data/data_test_util.h"
#include "eval/dense.h"
#include "model/config.h"
#include "train/model_transform.h"
#include "util/error.h"

using namespace hd;

TEST(Dense, ConfusionAccuracyAndMiouByHand) {
  // Truth 0 0 0 1 1 2 2 2, prediction 0 0 1 1 1 2 0 2; class 3 never occurs.
  auto truth = torch::tensor({0, 0, 0, 1, 1, 2, 2, 2}, torch::kLong);
  auto pred = torch::tensor({0, 0, 1, 1, 1, 2, 0, 2}, torch::kLong);
  auto c = eval::confusion_matrix(pred, truth, 4);
  auto expected = torch::tensor({2, 1, 0, 0,  //
                                 0, 2, 0, 0,  //
                                 1, 0, 2, 0,  //
                                 0, 0, 0, 0},
                                torch::kLong)
                      .view({4, 4});
  EXPECT_TRUE(torch::equal(c, expected)) << c;
  auto m = eval::dense_metrics(c);
  EXPECT_DOUBLE_EQ(m.accuracy, 6.0 / 8);
  // IoU = TP / (TP + FP + FN): class 0 2/(2+1+1), class 1 2/(2+1+0), class 2 2/(2+0+1).
  ASSERT_EQ(m.iou.size(), 4u);
  EXPECT_DOUBLE_EQ(m.iou[0], 0.5);
  EXPECT_DOUBLE_EQ(m.iou[1], 2.0 / 3);
  EXPECT_DOUBLE_EQ(m.iou[2], 2.0 / 3);
  EXPECT_TRUE(std::isnan(m.iou[3]));  // absent from truth and prediction: not in the mean
  EXPECT_EQ(m.classes, 3);
  EXPECT_NEAR(m.miou, (0.5 + 2.0 / 3 + 2.0 / 3) / 3, 1e-12);

  // A class only predicted (3) counts, with IoU 0; one never seen (2) does not.
  auto m2 = eval::dense_metrics(eval::confusion_matrix(torch::tensor({0, 3}, torch::kLong),
                                                       torch::tensor({0, 1}, torch::kLong), 4));
  EXPECT_DOUBLE_EQ(m2.iou[0], 1.0);
  EXPECT_DOUBLE_EQ(m2.iou[1], 0.0);
  EXPECT_TRUE(std::isnan(m2.iou[2]));
  EXPECT_DOUBLE_EQ(m2.iou[3], 0.0);
  EXPECT_NEAR(m2.miou, 1.0 / 3, 1e-12);
  EXPECT_DOUBLE_EQ(m2.accuracy, 0.5);

  EXPECT_THROW(eval::confusion_matrix(torch::tensor({0, 4}, torch::kLong), torch::tensor({0, 1}, torch::kLong), 4),
               Error);
  EXPECT_THROW(eval::dense_metrics(torch::zeros({2, 3}, torch::kLong)), Error);
}

TEST(Dense, ProbeOnSeparableTokensIsExactAndOnRandomTokensAtChance) {
  torch::manual_seed(0);
  const int64_t C = 5, D = 16;
  auto directions = torch::randn({C, D});
  auto separable = [&](int64_t n) {
    auto y = torch::randint(0, C, {n}, torch::kLong);
    return eval::FeatureSet{directions.index_select(0, y) * 2.0 + torch::randn({n, D}) * 0.1, y};
  };
  eval::ProbeConfig pc;
  pc.epochs = 10;
  pc.batch = 256;
  auto r = eval::dense_probe(separable(3000), separable(1000), C, pc);
  EXPECT_GT(r.test.accuracy, 0.99);
  EXPECT_GT(r.test.miou, 0.98);
  EXPECT_GT(r.train_accuracy, 0.99);
  EXPECT_NEAR(r.test.accuracy, r.probe.test_top1, 1e-9);
  EXPECT_EQ(r.confusion.sum().item<int64_t>(), 1000);

  // Features independent of the labels: about 1 / C right.
  auto random = [&](int64_t n) {
    return eval::FeatureSet{torch::randn({n, D}), torch::randint(0, C, {n}, torch::kLong)};
  };
  auto chance = eval::dense_probe(random(3000), random(3000), C, pc);
  EXPECT_NEAR(chance.test.accuracy, 1.0 / C, 0.05);
  EXPECT_LT(chance.test.miou, 0.2);
}

TEST(Dense, TokensOfAModelOnMosaics) {
  auto cfg = model::preset("vit_mini_patch4_28");
  cfg.depth = 2;  // small and quick
  torch::manual_seed(0);
  model::VisionTransformer m(cfg);
  auto ds = std::make_shared<data::testing::SyntheticDataset>(50, 1, 28, 28, 10);
  data::MosaicConfig mc;
  mc.img_size = 28;
  mc.patch = 4;
  mc.channels = cfg.in_chans;
  data::MosaicDataset mosaics(ds, mc);
  const c10::Device cpu(c10::kCPU);
  auto t = eval::extract_tokens(m, mosaics, 5, cpu, 2);  // batches of 2, 2, 1
  ASSERT_EQ(t.features.sizes(), (std::vector<int64_t>{5 * 49, cfg.embed_dim}));
  ASSERT_EQ(t.labels.sizes(), (std::vector<int64_t>{5 * 49}));
  EXPECT_TRUE(m->is_training());  // the mode is restored
  // Mosaic 3's tokens: its label map, and the patch tokens of the normalised image.
  auto s = mosaics.get(3);
  EXPECT_TRUE(torch::equal(t.labels.slice(0, 3 * 49, 4 * 49), s.labels.reshape({-1})));
  const auto tc = train::model_transform(cfg, false);
  auto x = ((s.image - tc.mean[0]) / tc.std[0]).unsqueeze(0);
  m->eval();
  torch::NoGradGuard ng;
  auto want = m->forward_features(x).slice(1, cfg.num_prefix_tokens()).squeeze(0);
  EXPECT_TRUE(torch::allclose(t.features.slice(0, 3 * 49, 4 * 49), want, 1e-4, 1e-5));

  // Mosaics that do not fit the model.
  mc.patch = 7;
  data::MosaicDataset coarse(ds, mc);
  EXPECT_THROW(eval::extract_tokens(m, coarse, 2, cpu), Error);
}
