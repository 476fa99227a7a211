// Supervised training task: the loss by hand, and learning on an easy subset.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>

#include "data/dataset.h"
#include "train/classify.h"
#include "train/model_transform.h"
#include "train/optim.h"
#include "util/error.h"

using namespace hd;
namespace fs = std::filesystem;

TEST(Classify, SmoothedCrossEntropyByHand) {
  // logits (0, ln 3): p = (1/4, 3/4). Label 1, smoothing 0.1:
  // 0.9 * -ln(3/4) + 0.1 * mean(-ln(1/4), -ln(3/4)).
  auto logits = torch::tensor({{0.0f, static_cast<float>(std::log(3.0))}});
  auto labels = torch::tensor({1}, torch::kLong);
  double expect = 0.9 * -std::log(0.75) + 0.1 * 0.5 * (-std::log(0.25) - std::log(0.75));
  EXPECT_NEAR(train::smoothed_cross_entropy(logits, labels, 0.1).item<double>(), expect, 1e-6);
  EXPECT_NEAR(train::smoothed_cross_entropy(logits, labels, 0.0).item<double>(), -std::log(0.75), 1e-6);
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
