// Downstream evaluation: k-NN by hand, the linear probe on separable data, feature files, and
// layer-wise learning-rate decay.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>

#include "train/classify.h"
#include "train/evaluate.h"
#include "train/optim.h"
#include "util/common.h"

using namespace hd;
namespace fs = std::filesystem;

TEST(Knn, WeightedVotesByHand) {
  // Bank on the unit circle: class 0 at 0 deg and 90 deg, class 1 at 30 deg. Query at 20 deg,
  // k = 2: neighbours 30 deg (class 1, cos 10 deg) and 0 deg (class 0, cos 20 deg).
  auto deg = [](double d) { return torch::tensor({std::cos(d * M_PI / 180), std::sin(d * M_PI / 180)}); };
  train::FeatureSet bank{torch::stack({deg(0), deg(90), deg(30)}).to(torch::kFloat) * 3.0,  // norms are ignored
                         torch::tensor({0, 0, 1}, torch::kLong)};
  auto q = torch::stack({deg(20)}).to(torch::kFloat);
  const double T = 0.5;
  auto s = train::knn_scores(bank, q, 2, T, 2);
  EXPECT_NEAR(s[0][0].item<double>(), std::exp(std::cos(20 * M_PI / 180) / T), 1e-4);
  EXPECT_NEAR(s[0][1].item<double>(), std::exp(std::cos(10 * M_PI / 180) / T), 1e-4);
  // k = 3 adds 90 deg (cos 70 deg) to class 0: exp(.94/.5)+exp(.34/.5) = 8.52 > exp(.985/.5) = 7.17.
  auto s3 = train::knn_scores(bank, q, 3, T, 2);
  EXPECT_EQ(s3.argmax(1).item<int64_t>(), 0);
  EXPECT_EQ(s.argmax(1).item<int64_t>(), 1);
  EXPECT_DOUBLE_EQ(train::top1(s, torch::tensor({1}, torch::kLong)), 1.0);
  // k larger than the bank is clipped.
  EXPECT_EQ(train::knn_scores(bank, q, 50, T, 2).sizes(), (std::vector<int64_t>{1, 2}));
  EXPECT_THROW(train::knn_scores(bank, q, 0, T, 2), Error);
}

TEST(Probe, SeparatesLinearlySeparableCorrelatedFeatures) {
  // Three Gaussian classes in 16-D whose informative direction is tiny next to a strongly
  // correlated nuisance: whitening makes this easy for a short optimisation.
  torch::manual_seed(0);
  auto make = [](int64_t n) {
    auto y = torch::randint(0, 3, {n}, torch::kLong);
    auto x = torch::randn({n, 16}) * 0.1;
    x.select(1, 0).add_(y.to(torch::kFloat) * 1.0);
    auto nuisance = torch::randn({n, 1}) * 3.0;
    x += nuisance * torch::linspace(1, 2, 16).unsqueeze(0);
    return train::FeatureSet{x, y};
  };
  auto tr = make(600), te = make(300);
  train::ProbeConfig pc;
  pc.epochs = 100;
  auto r = train::linear_probe(tr, te, 3, pc);
  EXPECT_GT(r.test_top1, 0.95);
  EXPECT_GT(r.train_top1, 0.95);
  // Deterministic for a seed.
  auto r2 = train::linear_probe(tr, te, 3, pc);
  EXPECT_TRUE(torch::equal(r.weight, r2.weight));
}

TEST(Features, FileRoundTripAndStaleKey) {
  auto path = (fs::temp_directory_path() / "hd_test_features.safetensors").string();
  train::FeatureSet f{torch::randn({5, 3}), torch::tensor({0, 1, 2, 1, 0}, torch::kLong)};
  train::save_features(path, f, "key-a");
  train::FeatureSet g;
  ASSERT_TRUE(train::load_features(path, "key-a", g));
  EXPECT_TRUE(torch::equal(f.features, g.features));
  EXPECT_TRUE(torch::equal(f.labels, g.labels));
  EXPECT_FALSE(train::load_features(path, "key-b", g));  // options changed: extract again
  EXPECT_FALSE(train::load_features(path + ".absent", "key-a", g));
  fs::remove(path);
}

TEST(LayerDecay, ScalesByDepthFromTheHead) {
  // depth 4, decay 0.5: embeddings 0.5^5, block i 0.5^(4-i), head/norm 1.
  EXPECT_DOUBLE_EQ(train::lr_decay_scale("pos_embed", 4, 0.5), std::pow(0.5, 5));
  EXPECT_DOUBLE_EQ(train::lr_decay_scale("patch_embed.proj.weight", 4, 0.5), std::pow(0.5, 5));
  EXPECT_DOUBLE_EQ(train::lr_decay_scale("blocks.0.attn.qkv.weight", 4, 0.5), std::pow(0.5, 4));
  EXPECT_DOUBLE_EQ(train::lr_decay_scale("blocks.3.mlp.fc2.bias", 4, 0.5), 0.5);
  EXPECT_DOUBLE_EQ(train::lr_decay_scale("norm.weight", 4, 0.5), 1.0);
  EXPECT_DOUBLE_EQ(train::lr_decay_scale("head.weight", 4, 0.5), 1.0);
}

TEST(LayerDecay, AdamWAppliesThePerParameterScale) {
  // One step of AdamW moves a parameter by lr * lr_scale (sign of the gradient, first step).
  auto a = torch::zeros({1}).requires_grad_(true), b = torch::zeros({1}).requires_grad_(true);
  train::AdamWConfig c;
  c.weight_decay = 0;
  train::AdamW opt({{"a", a, false, 1.0}, {"b", b, false, 0.25}}, c);
  (a + b).sum().backward();
  opt.step(0.1);
  EXPECT_NEAR(a.item<double>(), -0.1, 1e-6);
  EXPECT_NEAR(b.item<double>(), -0.025, 1e-6);
}
