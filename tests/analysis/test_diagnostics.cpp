// Attention diagnostics: known answers on synthetic attention (uniform, identity, fixed offsets),
// CLS stripping, streaming averages, the JSON layout, and the model-level driver.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "analysis/analyze.h"
#include "analysis/diagnostics.h"
#include "analysis/plots.h"
#include "model/config.h"
#include "util/error.h"

using namespace hd;
using namespace hd::analysis;

namespace {

// Distance in pixels between cells p and q of a grid w wide, written out independently.
double cell_distance(int64_t p, int64_t q, int64_t w, double ps) {
  double dr = static_cast<double>(p / w - q / w), dc = static_cast<double>(p % w - q % w);
  return std::sqrt(dr * dr + dc * dc) * ps;
}

// [1,1,P,P] attention with one key per query: row q is one-hot at target[q].
torch::Tensor one_hot_attention(const std::vector<int64_t>& target) {
  const int64_t P = static_cast<int64_t>(target.size());
  auto a = torch::zeros({1, 1, P, P}, torch::kDouble);
  for (int64_t q = 0; q < P; ++q) a[0][0][q][target[static_cast<size_t>(q)]] = 1.0;
  return a;
}

double scalar(const torch::Tensor& t) { return t.item<double>(); }

}  // namespace

TEST(Diagnostics, GridDistancesArePixels) {
  auto d = grid_distances(3, 4, 2.0);
  ASSERT_EQ(d.sizes(), (std::vector<int64_t>{12, 12}));
  for (int64_t p = 0; p < 12; ++p)
    for (int64_t q = 0; q < 12; ++q) EXPECT_DOUBLE_EQ(d[p][q].item<double>(), cell_distance(p, q, 4, 2.0));
}

TEST(Diagnostics, UniformAttention) {
  const int64_t gh = 3, gw = 4, P = gh * gw;
  const double ps = 5.0;
  auto a = torch::full({2, 3, P, P}, 1.0 / P, torch::kDouble);
  // Brute force: mean over all (query, key) pairs of the cell distance.
  double expect = 0;
  for (int64_t q = 0; q < P; ++q)
    for (int64_t k = 0; k < P; ++k) expect += cell_distance(q, k, gw, ps);
  expect /= static_cast<double>(P * P);
  auto d = head_distance(a, gh, gw, ps);
  ASSERT_EQ(d.sizes(), (std::vector<int64_t>{2, 3}));
  EXPECT_TRUE(torch::allclose(d, torch::full({2, 3}, expect, torch::kDouble), 1e-12, 1e-12)) << d;
  auto n = nmi(a);
  EXPECT_TRUE(torch::allclose(n, torch::zeros({2, 3}, torch::kDouble), 0, 1e-12)) << n;
}

TEST(Diagnostics, IdentityAttention) {
  auto a = torch::eye(16, torch::kDouble).expand({2, 4, 16, 16});
  auto d = head_distance(a, 4, 4, 16.0);
  EXPECT_TRUE(torch::allclose(d, torch::zeros({2, 4}, torch::kDouble), 0, 1e-12)) << d;
  auto n = nmi(a);
  EXPECT_TRUE(torch::allclose(n, torch::ones({2, 4}, torch::kDouble), 1e-12, 1e-12)) << n;
}

TEST(Diagnostics, FixedOffsets) {
  const int64_t gh = 3, gw = 4, P = gh * gw;
  const double ps = 4.0;
  // Every query attends to its right neighbour; the last column (which has none) to its left one:
  // each query looks exactly one cell away.
  std::vector<int64_t> right;
  for (int64_t q = 0; q < P; ++q) right.push_back(q % gw == gw - 1 ? q - 1 : q + 1);
  EXPECT_NEAR(scalar(head_distance(one_hot_attention(right), gh, gw, ps)[0][0]), ps, 1e-12);

  // Half to the left and half to the right neighbour; at an edge both halves go to the one
  // neighbour there is. Still exactly one cell.
  auto split = torch::zeros({1, 1, P, P}, torch::kDouble);
  for (int64_t q = 0; q < P; ++q) {
    int64_t c = q % gw;
    int64_t l = c == 0 ? q + 1 : q - 1, r = c == gw - 1 ? q - 1 : q + 1;
    split[0][0][q][l] += 0.5;
    split[0][0][q][r] += 0.5;
  }
  EXPECT_NEAR(scalar(head_distance(split, gh, gw, ps)[0][0]), ps, 1e-12);

  // Diagonal neighbour (down-right where it exists, else up-left, etc.): sqrt(2) cells.
  std::vector<int64_t> diag;
  for (int64_t q = 0; q < P; ++q) {
    int64_t r = q / gw, c = q % gw;
    int64_t r2 = r + 1 < gh ? r + 1 : r - 1, c2 = c + 1 < gw ? c + 1 : c - 1;
    diag.push_back(r2 * gw + c2);
  }
  EXPECT_NEAR(scalar(head_distance(one_hot_attention(diag), gh, gw, ps)[0][0]), std::sqrt(2.0) * ps, 1e-12);

  // A one-hot permutation (shift by one along the row-major order, wrapping) carries all of
  // log N bits: NMI 1, whatever the distances.
  std::vector<int64_t> shift;
  for (int64_t q = 0; q < P; ++q) shift.push_back((q + 1) % P);
  EXPECT_NEAR(scalar(nmi(one_hot_attention(shift))[0][0]), 1.0, 1e-12);
}

TEST(Diagnostics, NmiHandComputedCases) {
  // 2x2 grid, every query attends to key 0: no information (H(k) = 0), NMI 0; distance is the
  // mean distance to cell 0: (0 + 1 + 1 + sqrt 2) / 4 cells.
  auto all0 = one_hot_attention({0, 0, 0, 0});
  EXPECT_NEAR(scalar(nmi(all0)[0][0]), 0.0, 1e-12);
  EXPECT_NEAR(scalar(head_distance(all0, 2, 2, 10.0)[0][0]), (2 + std::sqrt(2.0)) / 4 * 10, 1e-12);
  // Half of the queries to key 0, half to key 1: p(k) = (1/2, 1/2, 0, 0), I = H(k) = log 2,
  // NMI = log 2 / sqrt(log 4 * log 2) = 1 / sqrt 2.
  EXPECT_NEAR(scalar(nmi(one_hot_attention({0, 0, 1, 1}))[0][0]), 1 / std::sqrt(2.0), 1e-12);
  // Mixed rows: q0 = (1/2, 1/2, 0, 0), others uniform; computed from the definitions by hand.
  auto a = torch::full({1, 1, 4, 4}, 0.25, torch::kDouble);
  a[0][0][0] = torch::tensor({0.5, 0.5, 0.0, 0.0}, torch::kDouble);
  double pk[4] = {(0.5 + 0.75) / 4, (0.5 + 0.75) / 4, 0.75 / 4, 0.75 / 4};
  double hk = 0;
  for (double p : pk) hk -= p * std::log(p);
  double hkq = (std::log(2.0) + 3 * std::log(4.0)) / 4;
  EXPECT_NEAR(scalar(nmi(a)[0][0]), (hk - hkq) / std::sqrt(std::log(4.0) * hk), 1e-12);
}

TEST(Diagnostics, StripClsRenormalises) {
  // 1 CLS + 2 patches. Rows of the patch block renormalise over the patches only.
  auto a = torch::tensor({0.2, 0.3, 0.5,  //
                          0.5, 0.1, 0.4,  //
                          0.0, 0.6, 0.4},
                         torch::kDouble)
               .view({1, 1, 3, 3});
  auto s = strip_cls_renormalise(a, 1);
  ASSERT_EQ(s.sizes(), (std::vector<int64_t>{1, 1, 2, 2}));
  auto expect = torch::tensor({0.2, 0.8, 0.6, 0.4}, torch::kDouble).view({1, 1, 2, 2});
  EXPECT_TRUE(torch::allclose(s, expect, 1e-12, 1e-12)) << s;
  // Softmax attention with CLS: every stripped row sums to 1.
  torch::manual_seed(0);
  auto r = torch::softmax(torch::randn({2, 3, 17, 17}), -1);
  auto rs = strip_cls_renormalise(r, 1);
  EXPECT_EQ(rs.sizes(), (std::vector<int64_t>{2, 3, 16, 16}));
  EXPECT_TRUE(torch::allclose(rs.sum(-1), torch::ones({2, 3, 16}, torch::kDouble), 1e-12, 1e-12));
  // prefix 0 only renormalises; a whole-CLS prefix leaves nothing and is an error.
  EXPECT_TRUE(torch::allclose(strip_cls_renormalise(r, 0), r.to(torch::kDouble), 1e-6, 1e-6));
  EXPECT_THROW(strip_cls_renormalise(r, 17), Error);
  EXPECT_THROW(strip_cls_renormalise(torch::zeros({2, 3, 4, 5}), 1), Error);
  // A row with all of its mass on CLS stays zero instead of NaN.
  auto c = torch::tensor({1.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.5, 0.0, 0.5}, torch::kDouble).view({1, 1, 3, 3});
  auto cs = strip_cls_renormalise(c, 1);
  EXPECT_FALSE(cs.isnan().any().item<bool>());
}

TEST(Diagnostics, AccumulatorStreamsPerImageMeans) {
  torch::manual_seed(1);
  const int64_t gh = 3, gw = 3, H = 2;
  auto a = torch::softmax(torch::randn({7, H, 10, 10}) * 3, -1);  // 1 CLS + 9 patches
  // Reference: all images at once.
  auto s = strip_cls_renormalise(a, 1);
  auto dist = head_distance(s, gh, gw, 8.0).mean(0), n = nmi(s).mean(0);

  Accumulator acc({0, 3}, H, gh, gw, 8.0, 1);
  for (auto [b, e] : {std::pair<int64_t, int64_t>{0, 3}, {3, 4}, {4, 7}}) {
    acc.add(0, a.slice(0, b, e));
    acc.add(3, a.slice(0, b, e).flip(-1));
  }
  auto d = acc.result();
  EXPECT_EQ(d.images, 7);
  ASSERT_EQ(d.layers, (std::vector<int64_t>{0, 3}));
  ASSERT_EQ(d.head_distance.size(), 2u);
  ASSERT_EQ(d.head_distance[0].size(), static_cast<size_t>(H));
  for (int64_t h = 0; h < H; ++h) {
    EXPECT_NEAR(d.head_distance[0][h], dist[h].item<double>(), 1e-12);
    EXPECT_NEAR(d.nmi[0][h], n[h].item<double>(), 1e-12);
  }
  // NMI is averaged per image, not taken from the averaged attention.
  auto pooled = nmi(s.mean(0, true))[0];
  EXPECT_GT(std::fabs(pooled[0].item<double>() - d.nmi[0][0]), 1e-6);
  EXPECT_NEAR(d.head_distance_mean()[0], (d.head_distance[0][0] + d.head_distance[0][1]) / 2, 1e-12);
  EXPECT_NEAR(d.nmi_mean()[1], (d.nmi[1][0] + d.nmi[1][1]) / 2, 1e-12);

  // Layers fed unequal image counts, undeclared layers and wrong head counts are errors.
  Accumulator bad({0, 1}, H, gh, gw, 8.0, 1);
  bad.add(0, a);
  EXPECT_THROW(bad.result(), Error);
  EXPECT_THROW(bad.add(2, a), Error);
  EXPECT_THROW(bad.add(1, a.slice(1, 0, 1)), Error);
  EXPECT_THROW(Accumulator({0}, H, gh, gw, 8.0, 1).result(), Error);  // no images
}

TEST(Diagnostics, JsonLayoutPerHeadAndMeans) {
  Diagnostics d;
  d.layers = {0, 1};
  d.head_distance = {{1, 2, 3}, {4, 5, 6}};
  d.nmi = {{0.1, 0.2, 0.3}, {0.4, 0.5, 0.9}};
  d.images = 11;
  ModelInfo m{"m.safetensors", "vit_mini_patch4_28", 128, 2, 3, 4, 28, 1};
  auto j = to_json(d, m);
  EXPECT_EQ(j["images"], 11);
  EXPECT_EQ(j["cls"], kClsHandling);
  EXPECT_EQ(j["layers"], (std::vector<int64_t>{0, 1}));
  ASSERT_EQ(j["head_distance"].size(), 2u);      // [layer][head]
  ASSERT_EQ(j["head_distance"][1].size(), 3u);
  EXPECT_DOUBLE_EQ(j["head_distance"][1][2].get<double>(), 6.0);
  ASSERT_EQ(j["head_distance_mean"].size(), 2u);  // [layer]
  EXPECT_DOUBLE_EQ(j["head_distance_mean"][0].get<double>(), 2.0);
  EXPECT_NEAR(j["nmi_mean"][1].get<double>(), 0.6, 1e-12);
  EXPECT_EQ(j["nmi"][0].size(), 3u);
  for (const char* k : {"checkpoint", "config", "embed_dim", "depth", "heads", "patch_size", "img_size"})
    EXPECT_TRUE(j["model"].contains(k)) << k;
  EXPECT_EQ(j["model"]["config"], "vit_mini_patch4_28");

  auto [back, bm] = from_json(j, "x.json");
  EXPECT_EQ(back.layers, d.layers);
  EXPECT_EQ(back.head_distance, d.head_distance);
  EXPECT_EQ(back.nmi, d.nmi);
  EXPECT_EQ(back.images, 11);
  EXPECT_EQ(bm.num_heads, 3);
  EXPECT_EQ(bm.checkpoint, "m.safetensors");

  auto broken = j;
  broken["nmi"] = nlohmann::json::array({nlohmann::json::array({0.1})});
  try {
    from_json(broken, "broken.json");
    FAIL() << "ragged tables accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("broken.json"), std::string::npos) << e.what();
  }
  broken = j;
  broken.erase("layers");
  EXPECT_THROW(from_json(broken, "b.json"), Error);
}

TEST(Diagnostics, UniformReferenceIsMeanPairwiseDistanceAndZeroNmi) {
  // 2x2 grid of 1-px cells: from any cell, distances 0, 1, 1 and sqrt(2).
  auto u = uniform_reference(2, 2, 1.0);
  EXPECT_NEAR(u.head_distance, (2.0 + std::sqrt(2.0)) / 4.0, 1e-12);
  EXPECT_NEAR(u.nmi, 0.0, 1e-12);
  // The old 4x4 grid of 7-px patches (14.06 px) and the 7x7 grid of 4-px patches (mean pairwise
  // distance computed independently: 14.4379 px).
  EXPECT_NEAR(uniform_reference(4, 4, 7.0).head_distance, 14.0561, 1e-4);
  EXPECT_NEAR(uniform_reference(7, 7, 4.0).head_distance, 14.4379, 1e-4);
  // From a model's identity; none when the image is not a whole number of patches.
  ModelInfo m{"m.safetensors", "vit_mini12_patch4_28", 128, 12, 4, 4, 28, 1};
  auto mu = uniform_reference(m);
  ASSERT_TRUE(mu.has_value());
  EXPECT_EQ(mu->grid_h, 7);
  EXPECT_NEAR(mu->head_distance, 14.4379, 1e-4);
  m.img_size = 30;
  EXPECT_FALSE(uniform_reference(m).has_value());
  m.img_size = 0;
  EXPECT_FALSE(uniform_reference(m).has_value());
  // Written to diagnostics.json.
  Diagnostics d;
  d.layers = {0};
  d.head_distance = {{1.0}};
  d.nmi = {{0.5}};
  d.images = 1;
  auto j = to_json(d, ModelInfo{"m", "x", 8, 1, 1, 7, 28, 1});
  ASSERT_TRUE(j.contains("uniform"));
  EXPECT_NEAR(j["uniform"]["head_distance"].get<double>(), 14.0561, 1e-4);
  EXPECT_EQ(j["uniform"]["grid"], (std::vector<int64_t>{4, 4}));
}

TEST(Diagnostics, QueryMapsAndQueryParsing) {
  // A head that attends from every query to the cell to its right (edge: left), plus CLS.
  const int64_t gh = 2, gw = 3, P = 6;
  auto a = torch::zeros({1, 2, P + 1, P + 1}, torch::kDouble);
  for (int64_t q = 0; q < P; ++q) {
    int64_t k = q % gw == gw - 1 ? q - 1 : q + 1;
    a[0][0][q + 1][k + 1] = 0.5;  // head 0: half on the neighbour, half on CLS
    a[0][0][q + 1][0] = 0.5;
    a[0][1][q + 1][q + 1] = 1.0;  // head 1: itself
  }
  auto m = query_map(a, 1, 4, gh, gw);  // query (1,1): head 0 -> (1,2), head 1 -> (1,1)
  ASSERT_EQ(m.sizes(), (std::vector<int64_t>{1, gh, gw}));
  EXPECT_DOUBLE_EQ(m[0][1][2].item<double>(), 0.5);
  EXPECT_DOUBLE_EQ(m[0][1][1].item<double>(), 0.5);
  EXPECT_NEAR(m.sum().item<double>(), 1.0, 1e-12);
  EXPECT_THROW(query_map(a, 1, 6, gh, gw), Error);

  EXPECT_EQ(parse_queries("auto", 7, 7, "--queries"), (std::vector<int64_t>{24, 8}));
  EXPECT_EQ(parse_queries("0:0,3:4,10", 7, 7, "--queries"), (std::vector<int64_t>{0, 25, 10}));
  EXPECT_THROW(parse_queries("7:0", 7, 7, "--queries"), Error);
  EXPECT_THROW(parse_queries("49", 7, 7, "--queries"), Error);
  EXPECT_THROW(parse_queries("x", 7, 7, "--queries"), Error);
}

TEST(Diagnostics, ModelDriverIsBatchInvariant) {
  auto cfg = model::preset("vit_mini_patch4_28");
  cfg.depth = 2;
  torch::manual_seed(0);
  model::VisionTransformer m(cfg);
  torch::manual_seed(5);
  auto images = torch::randn({5, 1, 28, 28});
  auto run = [&](int64_t batch, int64_t max_images) {
    int64_t pos = 0;
    BatchSource src = [&](torch::Tensor& x) {
      if (pos >= images.size(0)) return false;
      x = images.slice(0, pos, std::min(images.size(0), pos + batch));
      pos += x.size(0);
      return true;
    };
    MapRequest req{{0, 1}, {24, 0}, 2};
    return analyze(m, src, max_images, req, c10::Device(c10::kCPU));
  };
  auto a = run(2, 0), b = run(5, 0), c = run(2, 3);
  const auto& d = a.diagnostics;
  EXPECT_EQ(d.images, 5);
  EXPECT_EQ(c.diagnostics.images, 3);
  ASSERT_EQ(d.layers, (std::vector<int64_t>{0, 1}));
  ASSERT_EQ(d.head_distance[0].size(), static_cast<size_t>(cfg.num_heads));
  const double max_dist = std::sqrt(2.0) * (cfg.grid_size() - 1) * cfg.patch_size;
  for (size_t l = 0; l < 2; ++l)
    for (size_t h = 0; h < d.head_distance[l].size(); ++h) {
      // The float32 forward differs in the last bits between batch sizes.
      EXPECT_NEAR(d.head_distance[l][h], b.diagnostics.head_distance[l][h], 1e-5);
      EXPECT_NEAR(d.nmi[l][h], b.diagnostics.nmi[l][h], 1e-6);
      EXPECT_GT(d.head_distance[l][h], 0.0);
      EXPECT_LT(d.head_distance[l][h], max_dist);
      EXPECT_GE(d.nmi[l][h], 0.0);
      EXPECT_LE(d.nmi[l][h], 1.0);
    }
  ASSERT_TRUE(a.maps.images.defined());
  EXPECT_EQ(a.maps.images.sizes(), (std::vector<int64_t>{2, 1, 28, 28}));
  EXPECT_EQ(a.maps.maps.sizes(), (std::vector<int64_t>{2, 2, 2, 7, 7}));
  EXPECT_TRUE(torch::allclose(a.maps.maps.sum({-2, -1}), torch::ones({2, 2, 2}, torch::kDouble), 1e-9, 1e-9));
  EXPECT_TRUE(torch::allclose(a.maps.maps, b.maps.maps, 1e-5, 1e-7));
  // Displayed images undo the model's normalisation.
  auto shown = images.slice(0, 0, 2) * cfg.std[0] + cfg.mean[0];
  EXPECT_TRUE(torch::allclose(a.maps.images, shown.clamp(0, 1), 1e-5, 1e-5));

  int64_t calls = 0;
  BatchSource empty = [&](torch::Tensor&) { return ++calls < 0; };
  EXPECT_THROW(analyze(m, empty, 0, {}, c10::Device(c10::kCPU)), Error);
  BatchSource wrong = [&](torch::Tensor& x) {
    x = torch::randn({2, 3, 28, 28});
    return true;
  };
  EXPECT_THROW(analyze(m, wrong, 4, {}, c10::Device(c10::kCPU)), Error);
  EXPECT_THROW(analyze(m, wrong, 4, MapRequest{{2}, {0}, 1}, c10::Device(c10::kCPU)), Error);
}

TEST(Report, Base64AndEscaping) {
  EXPECT_EQ(base64(""), "");
  EXPECT_EQ(base64("f"), "Zg==");
  EXPECT_EQ(base64("fo"), "Zm8=");
  EXPECT_EQ(base64("foo"), "Zm9v");
  EXPECT_EQ(base64("foob"), "Zm9vYg==");
  EXPECT_EQ(base64("fooba"), "Zm9vYmE=");
  EXPECT_EQ(base64("foobar"), "Zm9vYmFy");
  EXPECT_EQ(base64(std::string("\xff\x00\x80", 3)), "/wCA");
  EXPECT_EQ(html_escape("<a href=\"x\">&'</a>"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
}
