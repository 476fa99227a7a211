// MAE pre-training: patch order, sine-cosine positions, the masked-only normalised-pixel loss,
// gradients, and learning.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "train/mae.h"
#include "util/threads.h"

using namespace hd;

namespace {
model::ViTConfig tiny_cfg() {
  auto c = model::preset("vit_mini_patch7_28");
  c.embed_dim = 32;
  c.num_heads = 2;
  c.depth = 2;
  c.num_classes = 0;
  return c;
}
train::MaeConfig tiny_mae() {
  train::MaeConfig m;
  m.decoder_dim = 16;
  m.decoder_heads = 2;
  m.decoder_depth = 1;
  return m;
}
}  // namespace

TEST(Mae, PatchifyOrderIsRowMajorGridThenPixelsThenChannels) {
  // 2 channels, 4x4 image, patch 2 -> 2x2 grid; value encodes (c, y, x).
  auto img = torch::zeros({1, 2, 4, 4});
  for (int c = 0; c < 2; ++c)
    for (int y = 0; y < 4; ++y)
      for (int x = 0; x < 4; ++x) img[0][c][y][x] = 100 * c + 10 * y + x;
  auto p = train::patchify(img, 2);
  ASSERT_EQ(p.sizes(), (std::vector<int64_t>{1, 4, 8}));
  // Patch 1 = grid row 0, col 1 (pixels x 2..3); element (row 1, col 0, channel 1) = index (1*2+0)*2+1.
  EXPECT_EQ(p[0][1][(1 * 2 + 0) * 2 + 1].item<float>(), 100 + 10 * 1 + 2);
  // Patch 2 = grid row 1, col 0; element (0, 1, 0).
  EXPECT_EQ(p[0][2][(0 * 2 + 1) * 2 + 0].item<float>(), 10 * 2 + 1);
}

TEST(Mae, SinCosPositionsByHand) {
  auto e = train::sincos_pos_embed(8, 3, 1);  // q = 2 frequencies: 1 and 1/100
  ASSERT_EQ(e.sizes(), (std::vector<int64_t>{1, 10, 8}));
  EXPECT_EQ(e[0][0].abs().sum().item<float>(), 0.0f);  // CLS row
  // Cell 5 = row 1, col 2: [sin(1), sin(.01), cos(1), cos(.01), sin(2), sin(.02), cos(2), cos(.02)]
  std::vector<double> want = {std::sin(1.0), std::sin(0.01), std::cos(1.0), std::cos(0.01),
                              std::sin(2.0), std::sin(0.02), std::cos(2.0), std::cos(0.02)};
  for (int i = 0; i < 8; ++i) EXPECT_NEAR(e[0][1 + 5][i].item<double>(), want[i], 1e-6) << i;
}

TEST(Mae, LossIsMeanOverMaskedPatchesOfNormalisedPixels) {
  torch::manual_seed(0);
  train::MaskedAutoencoder mae(model::VisionTransformer(tiny_cfg()), tiny_mae());
  EXPECT_EQ(mae->num_visible(), 4);  // 16 patches, 75% hidden
  auto x = torch::randn({2, 1, 28, 28});
  auto keep = torch::tensor({{0, 5, 10, 15}, {1, 2, 3, 4}}, torch::kLong);
  auto out = mae->forward(x, keep);
  ASSERT_EQ(out.pred.sizes(), (std::vector<int64_t>{2, 16, 49}));
  EXPECT_EQ(out.mask.sum().item<float>(), 24.0f);
  EXPECT_EQ(out.mask[0][5].item<float>(), 0.0f);
  EXPECT_EQ(out.mask[1][0].item<float>(), 1.0f);
  auto t = train::patchify(x, 7);
  t = (t - t.mean(-1, true)) / (t.var(-1, true, true) + 1e-6).sqrt();
  double manual = 0;
  for (int b = 0; b < 2; ++b)
    for (int p = 0; p < 16; ++p)
      if (out.mask[b][p].item<float>() > 0) manual += (out.pred[b][p] - t[b][p]).pow(2).mean().item<double>();
  EXPECT_NEAR(out.loss.item<double>(), manual / 24, 1e-5);

  // Gradients reach the encoder, the decoder and the mask token; none reach the fixed positions.
  out.loss.backward();
  EXPECT_GT(mae->encoder->blocks[0]->as<model::BlockImpl>()->attn->qkv->weight.grad().abs().sum().item<double>(), 0);
  EXPECT_GT(mae->decoder_pred->weight.grad().abs().sum().item<double>(), 0);
  EXPECT_GT(mae->mask_token.grad().abs().sum().item<double>(), 0);
  EXPECT_FALSE(mae->decoder_pos_embed.requires_grad());
  // A task's decay groups: matrices decay; the mask token, biases and norms do not.
  train::MaeTask task(mae);
  EXPECT_TRUE(task.decays("decoder_pred.weight", mae->decoder_pred->weight));
  EXPECT_FALSE(task.decays("mask_token", mae->mask_token));
  EXPECT_FALSE(task.decays("encoder.pos_embed", mae->encoder->pos_embed));
}

TEST(Mae, RandomMaskingVariesAndReconstructionImproves) {
  set_threads(2);
  torch::manual_seed(0);
  train::MaskedAutoencoder mae(model::VisionTransformer(tiny_cfg()), tiny_mae());
  auto a = mae->forward(torch::zeros({4, 1, 28, 28})).mask, b = mae->forward(torch::zeros({4, 1, 28, 28})).mask;
  EXPECT_FALSE(torch::equal(a, b));
  EXPECT_TRUE(torch::all(a.sum(1) == 12).item<bool>());
  // Fit a fixed batch of structured images: the loss must fall well below its start.
  auto yy = torch::arange(28).view({1, 1, 28, 1}).expand({8, 1, 28, 28}).to(torch::kFloat);
  auto x = torch::sin(yy * torch::linspace(0.2, 0.9, 8).view({8, 1, 1, 1}));
  torch::optim::Adam opt(mae->parameters(), torch::optim::AdamOptions(3e-3));
  double first = 0, last = 0;
  for (int i = 0; i < 60; ++i) {
    auto l = mae->forward(x).loss;
    if (i == 0) first = l.item<double>();
    last = l.item<double>();
    opt.zero_grad();
    l.backward();
    opt.step();
  }
  EXPECT_LT(last, 0.5 * first) << first << " -> " << last;
}
