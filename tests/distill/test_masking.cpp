// Token masking, gathering and the loss: hand-computed cases.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "distill/hybrid.h"
#include "distill/masking.h"

using namespace hd::distill;

namespace {
torch::Tensor tok(std::vector<std::vector<float>> rows) {
  std::vector<torch::Tensor> r;
  for (auto& v : rows) r.push_back(torch::tensor(v));
  return torch::stack(r).unsqueeze(0);  // [1,P,D]
}
std::vector<int64_t> vec(const torch::Tensor& t) {
  auto c = t.contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}
}  // namespace

TEST(Masking, KeptCountsFollowTheMethod) {
  // 196 -> 137 -> 95 -> 66 (33.7%) for K = 30%.
  EXPECT_EQ(kept_after_step(196, 0.3), 137);
  EXPECT_EQ(kept_after_step(137, 0.3), 95);
  EXPECT_EQ(kept_after_step(95, 0.3), 66);
  EXPECT_EQ(kept_after_step(49, 0.3), 34);
  EXPECT_EQ(kept_after_step(10, 0.0), 10);
  EXPECT_EQ(kept_after_step(3, 0.99), 1);  // never empty
}

TEST(Masking, DropsMostRedundantAndKeepsLowerIndexOnTies) {
  // Normalised tokens: t0 = t1 = (1,0), t2 = t3 = (0,1), t4 = (-1,0). Mean of the normalised
  // tokens = (0.2, 0.4) -> cosine: t0,t1 0.447; t2,t3 0.894 (tied, most redundant); t4 -0.447.
  auto x = tok({{1, 0}, {2, 0}, {0, 1}, {0, 3}, {-1, 0}});
  auto keep = keep_all(1, 5, torch::kCPU);
  // Drop floor(5 * 0.2) = 1: of the tied t2/t3 the lower index survives.
  EXPECT_EQ(vec(redundant_step(x, keep, 0.2)), (std::vector<int64_t>{0, 1, 2, 4}));
  // Drop 2: both tied tokens go.
  EXPECT_EQ(vec(redundant_step(x, keep, 0.4)), (std::vector<int64_t>{0, 1, 4}));
}

TEST(Masking, TwoStepProgressiveScoresOnlyKeptTokens) {
  auto layer0 = tok({{1, 0}, {2, 0}, {0, 1}, {0, 3}, {-1, 0}});
  auto keep = redundant_step(layer0, keep_all(1, 5, torch::kCPU), 0.2);  // {0,1,2,4}
  // Layer 2 input: t3 now points along x. Over the kept {t0,t1,t2,t4}: mean (0.25, 0.25),
  // cosine t0 = t1 = t2 = 0.707 (three-way tie), t4 = -0.707: keep floor(4*0.8) = 3, the
  // tie drops the highest index (t2). Had the dropped t3 been counted, the mean would be
  // (2,1)/5 and t1 would go instead.
  auto layer1 = tok({{1, 0}, {1, 0}, {0, 1}, {5, 0}, {-1, 0}});
  EXPECT_EQ(vec(redundant_step(layer1, keep, 0.2)), (std::vector<int64_t>{0, 1, 4}));
}

TEST(Masking, BatchRowsAreIndependentAndSorted) {
  torch::manual_seed(0);
  auto x = torch::randn({3, 16, 8});
  auto keep = keep_all(3, 16, torch::kCPU);
  auto k1 = redundant_step(x, keep, 0.3);
  ASSERT_EQ(k1.sizes(), (std::vector<int64_t>{3, 11}));
  for (int64_t b = 0; b < 3; ++b) {
    auto row = redundant_step(x.slice(0, b, b + 1), keep.slice(0, b, b + 1), 0.3);
    EXPECT_TRUE(torch::equal(row[0], k1[b]));
    EXPECT_TRUE(torch::equal(std::get<0>(k1[b].sort()), k1[b]));
  }
  auto r = random_keep(4, 49, 17, torch::kCPU);
  ASSERT_EQ(r.sizes(), (std::vector<int64_t>{4, 17}));
  for (int64_t b = 0; b < 4; ++b) EXPECT_EQ(std::get<0>(at::_unique(r[b])).numel(), 17);
}

TEST(Gather, TokensAndRelationsAtKeptPositions) {
  // r[b,h,i,j] = 100 i + j + 1000 h; prefix 1 (CLS), keep patches {2, 0} -> tokens {0, 3, 1}.
  auto i = torch::arange(6).view({1, 1, 6, 1}).to(torch::kFloat);
  auto j = torch::arange(6).view({1, 1, 1, 6}).to(torch::kFloat);
  auto h = torch::arange(2).view({1, 2, 1, 1}).to(torch::kFloat);
  auto r = (100 * i + j + 1000 * h).expand({1, 2, 6, 6}).contiguous();
  auto keep = torch::tensor({{2, 0}}, torch::kLong);
  auto g = gather_relation(r, keep, 1, true);
  std::vector<int64_t> idx{0, 3, 1};
  ASSERT_EQ(g.sizes(), (std::vector<int64_t>{1, 2, 3, 3}));
  for (int64_t hh = 0; hh < 2; ++hh)
    for (int64_t a = 0; a < 3; ++a)
      for (int64_t c = 0; c < 3; ++c)
        EXPECT_EQ(g[0][hh][a][c].item<float>(), 100 * idx[a] + idx[c] + 1000 * hh);
  auto g2 = gather_relation(r, keep, 1, false);
  EXPECT_EQ(g2[0][1][0][1].item<float>(), 100 * 3 + 1 + 1000);

  auto x = torch::arange(6).view({1, 6, 1}).to(torch::kFloat).expand({1, 6, 4}).contiguous();
  auto t = gather_tokens(x, keep, 1, true);
  EXPECT_EQ(t.select(2, 0)[0][0].item<float>(), 0);
  EXPECT_EQ(t.select(2, 0)[0][1].item<float>(), 3);
  EXPECT_EQ(t.select(2, 0)[0][2].item<float>(), 1);
  EXPECT_EQ(gather_tokens(x, keep, 1, false).size(1), 2);
}

TEST(Loss, SmoothL1ByHand) {
  // beta 2: |d| = 0 -> 0; 1 -> 0.5*1/2 = 0.25; 3 -> 3 - 1 = 2. Mean 0.75.
  auto p = torch::tensor({0.f, 1.f, -3.f});
  auto t = torch::zeros({3});
  EXPECT_NEAR(smooth_l1(p, t, 2.0).item<double>(), 0.75, 1e-7);
  // beta 0 is L1.
  EXPECT_NEAR(smooth_l1(p, t, 0.0).item<double>(), 4.0 / 3, 1e-6);
  // beta 1: 0, 0.5, 2.5 -> 1.0
  EXPECT_NEAR(smooth_l1(p, t, 1.0).item<double>(), 1.0, 1e-7);
}
