// AdamW against LibTorch's own implementation; schedule and clipping by hand.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "train/optim.h"

using namespace hd::train;

TEST(AdamW, MatchesTorchAdamW) {
  torch::manual_seed(0);
  auto w1 = torch::randn({5, 4}).requires_grad_(true);
  auto b1 = torch::randn({4}).requires_grad_(true);
  auto w2 = w1.detach().clone().requires_grad_(true);
  auto b2 = b1.detach().clone().requires_grad_(true);
  AdamWConfig c;
  c.lr = 0.01;
  c.beta1 = 0.9;
  c.beta2 = 0.95;
  c.weight_decay = 0.05;
  AdamW ours({{"w", w1, true}, {"b", b1, false}}, c);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{w2},
                      std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(0.01).betas({0.9, 0.95}).weight_decay(0.05)));
  groups.emplace_back(std::vector<torch::Tensor>{b2},
                      std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(0.01).betas({0.9, 0.95}).weight_decay(0.0)));
  torch::optim::AdamW ref(std::move(groups));
  auto x = torch::randn({8, 5});
  for (int s = 0; s < 5; ++s) {
    ours.zero_grad();
    ref.zero_grad();
    (torch::matmul(x, w1) + b1).pow(2).sum().backward();
    (torch::matmul(x, w2) + b2).pow(2).sum().backward();
    ours.step(0.01);
    ref.step();
  }
  EXPECT_TRUE(torch::allclose(w1, w2, 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(b1, b2, 1e-5, 1e-6));

  // State round trip.
  auto st = ours.state();
  AdamW other({{"w", w1, true}, {"b", b1, false}}, c);
  other.load_state(st, "test");
  EXPECT_EQ(other.steps(), 5);
  EXPECT_THROW(other.load_state({}, "test"), std::exception);
}

TEST(Schedule, WarmupThenCosine) {
  EXPECT_DOUBLE_EQ(cosine_lr(0, 100, 10, 1.0, 0.0), 0.1);
  EXPECT_DOUBLE_EQ(cosine_lr(9, 100, 10, 1.0, 0.0), 1.0);
  EXPECT_DOUBLE_EQ(cosine_lr(10, 100, 10, 1.0, 0.0), 1.0);
  EXPECT_NEAR(cosine_lr(55, 100, 10, 1.0, 0.0), 0.5, 1e-12);
  EXPECT_NEAR(cosine_lr(100, 100, 10, 1.0, 0.1), 0.1, 1e-12);
}

TEST(Clip, GlobalNorm) {
  auto a = torch::zeros({2}).requires_grad_(true), b = torch::zeros({1}).requires_grad_(true);
  a.mutable_grad() = torch::tensor({3.f, 0.f});
  b.mutable_grad() = torch::tensor({4.f});
  EXPECT_NEAR(clip_grad_norm({a, b}, 1.0), 5.0, 1e-6);
  EXPECT_NEAR(a.grad()[0].item<double>(), 0.6, 1e-5);
  EXPECT_NEAR(b.grad()[0].item<double>(), 0.8, 1e-5);
}
