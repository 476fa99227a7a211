// VisionTransformer: parity with torchvision (golden files), taps, token subsets, init, config.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/vit.h"
#include "util/error.h"

using namespace hd;
using namespace hd::model;

namespace {

const std::string kGolden = std::string(HD_TEST_DATA_DIR) + "/golden/";

std::map<std::string, torch::Tensor> load_map(const std::string& path) {
  std::map<std::string, torch::Tensor> m;
  for (auto& [k, v] : io::SafeTensorsFile::open(path).load_all()) m[k] = v;
  return m;
}

void expect_close(const torch::Tensor& a, const torch::Tensor& b, double tol, const std::string& what) {
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  double err = (a - b).abs().max().item<double>();
  EXPECT_LE(err, tol) << what << ": max abs error " << err;
}

ViTConfig tiny_config() {
  ViTConfig c;
  c.name = "tiny_test";
  c.img_size = 16;
  c.patch_size = 4;
  c.in_chans = 1;
  c.embed_dim = 32;
  c.depth = 3;
  c.num_heads = 4;
  c.num_classes = 5;
  c.mean = {0.5};
  c.std = {0.5};
  return c;
}

}  // namespace

TEST(ViTGolden, MatchesTorchvisionEverywhere) {
  // Weights and expected tensors come from tests/golden/make_vit_golden.py (torchvision).
  auto model = load_model(kGolden + "vit_golden_weights.safetensors");
  model->eval();
  auto io = load_map(kGolden + "vit_golden_io.safetensors");
  torch::NoGradGuard ng;
  const int64_t depth = model->config().depth;
  TapSpec spec;
  for (int64_t i = 0; i < depth; ++i) {
    spec.block.insert(i);
    spec.msa.insert(i);
    spec.relation.insert(i);
    spec.attn.insert(i);
  }
  auto taps = model->forward_taps(io["images"], spec);
  expect_close(taps.features, io["features"], 1e-4, "features");
  for (int64_t i = 0; i < depth; ++i) {
    auto s = std::to_string(i);
    expect_close(taps.block[i], io["block." + s], 1e-4, "block." + s);
    expect_close(taps.msa[i], io["msa." + s], 1e-4, "msa." + s);
    expect_close(taps.relation[i], io["relation." + s], 1e-4, "relation." + s);
    expect_close(taps.attn[i], io["attn." + s], 1e-5, "attn." + s);
  }
  expect_close(model->forward(io["images"]), io["logits"], 1e-4, "logits");
  expect_close(model->forward_features(io["images"]), io["features"], 1e-4, "forward_features");
}

TEST(ViTGolden, TokenSubsetMatchesTorchvision) {
  auto model = load_model(kGolden + "vit_golden_weights.safetensors");
  model->eval();
  auto io = load_map(kGolden + "vit_golden_io.safetensors");
  torch::NoGradGuard ng;
  auto out = model->forward_features(io["images"], io["subset.keep"]);
  expect_close(out, io["subset.features"], 1e-4, "subset features");
}

TEST(ViT, PosEmbedGatherIsExact) {
  torch::manual_seed(0);
  VisionTransformer m(tiny_config());
  torch::NoGradGuard ng;
  auto x = torch::randn({3, 1, 16, 16});
  auto keep = torch::stack({torch::randperm(16, torch::kLong).slice(0, 0, 5),
                            torch::randperm(16, torch::kLong).slice(0, 0, 5),
                            torch::randperm(16, torch::kLong).slice(0, 0, 5)});
  auto full = m->embed(x);      // [3,17,D]
  auto sub = m->embed(x, keep);  // [3,6,D]
  ASSERT_EQ(sub.size(1), 6);
  EXPECT_TRUE(torch::equal(sub.select(1, 0), full.select(1, 0)));  // CLS always kept, first
  for (int64_t b = 0; b < 3; ++b)
    EXPECT_TRUE(torch::equal(sub[b].slice(0, 1), full[b].index_select(0, keep[b] + 1)));
}

TEST(ViT, PermutedFullSubsetIsEquivariant) {
  // Keeping every token in a shuffled order permutes the patch outputs and leaves CLS unchanged:
  // attention has no notion of order beyond the gathered positional embeddings.
  torch::manual_seed(1);
  VisionTransformer m(tiny_config());
  m->eval();
  torch::NoGradGuard ng;
  auto x = torch::randn({2, 1, 16, 16});
  auto perm = torch::stack({torch::randperm(16, torch::kLong), torch::randperm(16, torch::kLong)});
  auto full = m->forward_features(x);
  auto sub = m->forward_features(x, perm);
  expect_close(sub.select(1, 0), full.select(1, 0), 1e-5, "cls");
  for (int64_t b = 0; b < 2; ++b)
    expect_close(sub[b].slice(0, 1), full[b].index_select(0, perm[b] + 1), 1e-5, "patches");
}

TEST(ViT, DroppedTokensMatchMaskedAttention) {
  // Independent formulation of running on a subset: the full sequence where every attention
  // logit towards a dropped token is -inf. Kept tokens' outputs must equal the subset forward.
  torch::manual_seed(2);
  auto cfg = tiny_config();
  VisionTransformer m(cfg);
  m->eval();
  torch::NoGradGuard ng;
  auto x = torch::randn({1, 1, 16, 16});
  auto keep = torch::tensor({{3, 0, 9, 15, 7}}, torch::kLong);
  auto sub = m->forward_features(x, keep);

  auto t = m->embed(x);  // [1,17,D]
  auto allowed = torch::zeros({17}, torch::kBool);
  allowed[0] = true;
  for (int64_t i = 0; i < keep.size(1); ++i) allowed[keep[0][i].item<int64_t>() + 1] = true;
  auto bias = torch::where(allowed, torch::zeros({17}), torch::full({17}, -INFINITY));
  const int64_t H = cfg.num_heads, hd = cfg.head_dim(), N = 17;
  for (const auto& mod : *m->blocks) {
    auto* b = mod->as<BlockImpl>();
    auto y = b->norm1(t);
    auto qkv = b->attn->qkv(y).reshape({1, N, 3, H, hd}).permute({2, 0, 3, 1, 4});
    auto logits = torch::matmul(qkv[0], qkv[1].transpose(-2, -1)) / std::sqrt(double(hd)) + bias;
    auto o = torch::matmul(torch::softmax(logits, -1), qkv[2]).transpose(1, 2).reshape({1, N, -1});
    t = t + b->attn->proj(o);
    t = t + b->mlp(b->norm2(t));
  }
  auto ref = m->norm(t);
  expect_close(sub.select(1, 0), ref.select(1, 0), 1e-5, "cls");
  expect_close(sub[0].slice(0, 1), ref[0].index_select(0, keep[0] + 1), 1e-5, "kept tokens");
}

TEST(ViT, TapsStopEarlyAndAgreeWithFullForward) {
  torch::manual_seed(3);
  VisionTransformer m(tiny_config());
  m->eval();
  torch::NoGradGuard ng;
  auto x = torch::randn({2, 1, 16, 16});
  TapSpec all;
  all.block = {0, 1, 2};
  all.block_input = {0, 1, 2};
  all.relation = {1};
  all.attn = {1};
  auto full = m->forward_taps(x, all);
  // block_input of i+1 is block output of i; block_input of 0 is the embedding.
  EXPECT_TRUE(torch::equal(full.block_input[1], full.block[0]));
  EXPECT_TRUE(torch::equal(full.block_input[0], m->embed(x)));
  expect_close(torch::softmax(full.relation[1], -1), full.attn[1], 1e-6, "softmax(relation) = attn");
  expect_close(full.attn[1].sum(-1), torch::ones({2, 4, 17}), 1e-5, "rows sum to one");

  TapSpec partial;
  partial.features = false;
  partial.relation = {1};
  auto p = m->forward_taps(x, partial);
  EXPECT_FALSE(p.features.defined());
  EXPECT_TRUE(p.block.empty());
  expect_close(p.relation[1], full.relation[1], 0, "relation from the early-stopping forward");

  TapSpec bad;
  bad.attn = {3};
  EXPECT_THROW(m->forward_taps(x, bad), hd::Error);
  TapSpec stop;
  stop.stop_after = 1;  // features need all blocks
  EXPECT_THROW(m->forward_taps(x, stop), hd::Error);

  // Block i's input needs blocks 0 .. i-1 only. Blocks 1 and 2 in float64 throw when run on
  // float32 tokens; the input of block 1 (and the embedding) still come out exact.
  {
    for (int64_t i : {1, 2}) m->blocks[i]->to(torch::kFloat64);
    EXPECT_THROW(m->forward_taps(x, all), std::exception);  // running them throws
    TapSpec inputs;
    inputs.features = false;
    inputs.block_input = {0, 1};
    auto q = m->forward_taps(x, inputs);
    expect_close(q.block_input[0], full.block_input[0], 0, "embedding");
    expect_close(q.block_input[1], full.block_input[1], 0, "input of block 1, block 1 not run");
    TapSpec first;
    first.features = false;
    first.block_input = {0};
    expect_close(m->forward_taps(x, first).block_input[0], full.block_input[0], 0, "no block run");
  }
}

TEST(ViT, QuickGeluNormPreMeanPoolVariant) {
  auto cfg = tiny_config();
  cfg.act = Activation::QuickGELU;
  cfg.norm_pre = true;
  cfg.patch_bias = false;
  cfg.pool = Pooling::Mean;
  cfg.fc_norm = true;
  cfg.ln_eps = 1e-5;
  torch::manual_seed(4);
  VisionTransformer m(cfg);
  auto names = state_dict(*m);
  std::set<std::string> keys;
  for (auto& [k, v] : names) keys.insert(k);
  EXPECT_TRUE(keys.count("norm_pre.weight"));
  EXPECT_TRUE(keys.count("fc_norm.weight"));
  EXPECT_FALSE(keys.count("norm.weight"));
  EXPECT_FALSE(keys.count("patch_embed.proj.bias"));
  m->eval();
  torch::NoGradGuard ng;
  // QuickGELU by hand on the first MLP.
  auto* b0 = m->blocks[0]->as<BlockImpl>();
  auto h = torch::randn({2, 5, 32});
  auto ref = b0->mlp->fc2(b0->mlp->fc1(h) * torch::sigmoid(1.702 * b0->mlp->fc1(h)));
  expect_close(b0->mlp(h), ref, 1e-6, "quick_gelu mlp");
  // Mean pooling over patch tokens, then fc_norm, then head.
  auto x = torch::randn({2, 1, 16, 16});
  auto f = m->forward_features(x);
  auto pooled = m->fc_norm(f.slice(1, 1).mean(1));
  expect_close(m->forward_head(f, true), pooled, 1e-6, "mean pool + fc_norm");
}

TEST(ViT, TimmParameterNamesAndInit) {
  torch::manual_seed(5);
  auto cfg = preset("vit_tiny_patch16_224");
  VisionTransformer m(cfg);
  std::map<std::string, torch::Tensor> p;
  for (auto& [k, v] : state_dict(*m)) p[k] = v;
  for (const char* k : {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
                        "blocks.0.norm1.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias",
                        "blocks.0.attn.proj.weight", "blocks.11.norm2.bias", "blocks.11.mlp.fc1.weight",
                        "blocks.11.mlp.fc2.bias", "norm.weight", "norm.bias", "head.weight", "head.bias"})
    EXPECT_TRUE(p.count(k)) << k;
  EXPECT_EQ(p.size(), 4u + 12u * 12 + 2 + 2);  // embeddings, 12 blocks of 6 layers, norm, head
  EXPECT_EQ(p["pos_embed"].sizes(), (std::vector<int64_t>{1, 197, 192}));
  EXPECT_EQ(p["blocks.0.attn.qkv.weight"].sizes(), (std::vector<int64_t>{576, 192}));
  // timm's vit_tiny_patch16_224 has 5,717,416 parameters.
  EXPECT_EQ(m->num_params(), 5717416);
  EXPECT_NEAR(p["blocks.3.mlp.fc1.weight"].std().item<double>(), 0.02, 0.001);
  EXPECT_LE(p["blocks.3.mlp.fc1.weight"].abs().max().item<double>(), 2.0);
  EXPECT_NEAR(p["pos_embed"].std().item<double>(), 0.02, 0.001);
  EXPECT_LT(p["cls_token"].abs().max().item<double>(), 1e-4);
  EXPECT_EQ(p["blocks.3.attn.qkv.bias"].abs().max().item<double>(), 0.0);
  EXPECT_EQ(p["head.weight"].abs().max().item<double>(), 0.0);
  EXPECT_TRUE(torch::equal(p["norm.weight"], torch::ones({192})));
  // Weight decay: matrices yes; norms, biases, pos_embed, cls_token no.
  EXPECT_TRUE(m->decays("blocks.0.attn.qkv.weight", p["blocks.0.attn.qkv.weight"]));
  EXPECT_TRUE(m->decays("patch_embed.proj.weight", p["patch_embed.proj.weight"]));
  EXPECT_FALSE(m->decays("pos_embed", p["pos_embed"]));
  EXPECT_FALSE(m->decays("cls_token", p["cls_token"]));
  EXPECT_FALSE(m->decays("blocks.0.norm1.weight", p["blocks.0.norm1.weight"]));
  EXPECT_FALSE(m->decays("blocks.0.attn.qkv.bias", p["blocks.0.attn.qkv.bias"]));
}

TEST(ViT, PresetParameterCountsMatchTimm) {
  // Reference counts from timm (num_classes=1000).
  EXPECT_EQ(VisionTransformer(preset("vit_small_patch16_224"))->num_params(), 22050664);
  EXPECT_EQ(VisionTransformer(preset("vit_base_patch16_224"))->num_params(), 86567656);
}

TEST(ViT, DropPathOnlyInTraining) {
  auto cfg = tiny_config();
  cfg.drop_path = 0.5;
  torch::manual_seed(6);
  VisionTransformer m(cfg);
  {
    torch::NoGradGuard g;  // give the zero-initialised head something to show
    m->head->weight.normal_();
  }
  auto x = torch::randn({8, 1, 16, 16});
  m->eval();
  auto e1 = m->forward(x), e2 = m->forward(x);
  EXPECT_TRUE(torch::equal(e1, e2));
  m->train();
  auto t1 = m->forward(x), t2 = m->forward(x);
  EXPECT_FALSE(torch::equal(t1, t2));
  EXPECT_DOUBLE_EQ(m->blocks[0]->as<BlockImpl>()->drop_path_rate(), 0.0);
  EXPECT_DOUBLE_EQ(m->blocks[2]->as<BlockImpl>()->drop_path_rate(), 0.5);
}

TEST(ViT, GradientsMatchFiniteDifferences) {
  auto cfg = tiny_config();
  cfg.depth = 1;
  cfg.act = Activation::QuickGELU;
  torch::manual_seed(7);
  VisionTransformer m(cfg);
  m->to(torch::kDouble);
  {
    torch::NoGradGuard g;
    m->head->weight.normal_();
  }
  auto x = torch::randn({2, 1, 16, 16}, torch::kDouble);
  auto loss_fn = [&] { return m->forward(x).pow(2).sum(); };
  auto& w = m->blocks[0]->as<BlockImpl>()->attn->qkv->weight;
  m->zero_grad();
  loss_fn().backward();
  auto grad = w.grad().clone();
  torch::NoGradGuard g;
  for (int64_t idx : {0, 100, 1500, 3000}) {
    auto flat = w.view(-1);
    double orig = flat[idx].item<double>();
    const double h = 1e-6;
    flat[idx] = orig + h;
    double lp = loss_fn().item<double>();
    flat[idx] = orig - h;
    double lm = loss_fn().item<double>();
    flat[idx] = orig;
    double fd = (lp - lm) / (2 * h);
    EXPECT_NEAR(grad.view(-1)[idx].item<double>(), fd, 1e-6 * std::max(1.0, std::abs(fd))) << idx;
  }
}

TEST(ViT, ResetClassifier) {
  VisionTransformer m(tiny_config());
  m->reset_classifier(0);
  EXPECT_FALSE(m->head);
  EXPECT_EQ(m->forward(torch::randn({2, 1, 16, 16})).sizes(), (std::vector<int64_t>{2, 32}));
  m->reset_classifier(7);
  EXPECT_EQ(m->forward(torch::randn({2, 1, 16, 16})).sizes(), (std::vector<int64_t>{2, 7}));
  EXPECT_EQ(m->config().num_classes, 7);
  int heads = 0;
  for (auto& [k, v] : state_dict(*m)) heads += k.rfind("head.", 0) == 0;
  EXPECT_EQ(heads, 2);
}

TEST(ViTConfig, JsonRoundTripAndErrors) {
  auto c = preset("vit_base_patch16_clip_224.openai");
  auto r = ViTConfig::from_json(c.to_json(), "test");
  EXPECT_EQ(r.to_json(), c.to_json());
  EXPECT_EQ(r.act, Activation::QuickGELU);
  EXPECT_TRUE(r.norm_pre);
  EXPECT_FALSE(r.patch_bias);
  EXPECT_DOUBLE_EQ(r.ln_eps, 1e-5);
  try {
    ViTConfig::from_json(R"({"depth": 2, "widht": 3})", "cfg.json");
    FAIL() << "unknown key accepted";
  } catch (const hd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("widht"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("cfg.json"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ViTConfig::from_json(R"({"img_size": 30, "patch_size": 16})", "x"), hd::Error);
  EXPECT_THROW(ViTConfig::from_json(R"({"depth": "deep"})", "x"), hd::Error);
  EXPECT_THROW(ViTConfig::from_json("[1,2]", "x"), hd::Error);
  EXPECT_THROW(ViTConfig::from_json("{", "x"), hd::Error);
  EXPECT_THROW(preset("vit_huge_nonexistent"), hd::Error);
}
