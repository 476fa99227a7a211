// 2x2 mosaics: the label map of a chosen cut by hand, every quadrant equal to its item resized
// with torch's interpolate, determinism, cut points on patch boundaries only, bad geometry.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <set>

#include "data/mosaic.h"
#include "data_test_util.h"

using namespace hd::data;
using hd::data::testing::SyntheticDataset;
using hd::testing::contains;
using hd::testing::error_of;

namespace {

// 200 distinct 28x28 gray images, label i mod 10.
std::shared_ptr<SyntheticDataset> base() { return std::make_shared<SyntheticDataset>(200, 1, 28, 28, 10); }

MosaicConfig config(uint64_t seed = 0) {
  MosaicConfig c;
  c.img_size = 28;
  c.patch = 4;
  c.seed = seed;
  return c;
}

}  // namespace

TEST(Mosaic, LabelMapOfAChosenCutByHand) {
  MosaicDataset m(base(), config());
  // Items 11, 22, 33, 44 have classes 1, 2, 3, 4; cut at x = 8 (2 patch columns on the left),
  // y = 16 (4 patch rows on top).
  auto s = m.compose({11, 22, 33, 44}, 8, 16);
  auto expected = torch::tensor({1, 1, 2, 2, 2, 2, 2,  //
                                 1, 1, 2, 2, 2, 2, 2,  //
                                 1, 1, 2, 2, 2, 2, 2,  //
                                 1, 1, 2, 2, 2, 2, 2,  //
                                 3, 3, 4, 4, 4, 4, 4,  //
                                 3, 3, 4, 4, 4, 4, 4,  //
                                 3, 3, 4, 4, 4, 4, 4},
                                torch::kLong)
                      .view({7, 7});
  EXPECT_TRUE(torch::equal(s.labels, expected)) << s.labels;
  EXPECT_EQ(s.labels.scalar_type(), torch::kLong);
  EXPECT_EQ(s.image.sizes(), (std::vector<int64_t>{1, 28, 28}));
  EXPECT_EQ(s.cx, 8);
  EXPECT_EQ(s.cy, 16);
}

TEST(Mosaic, EveryQuadrantIsItsItemResizedWithTorchInterpolate) {
  auto ds = base();
  MosaicDataset m(ds, config(7));
  namespace F = torch::nn::functional;
  for (int64_t i = 0; i < 20; ++i) {
    auto s = m.get(i);
    const int64_t x0[4] = {0, s.cx, 0, s.cx}, y0[4] = {0, 0, s.cy, s.cy};
    const int64_t w[4] = {s.cx, 28 - s.cx, s.cx, 28 - s.cx}, h[4] = {s.cy, s.cy, 28 - s.cy, 28 - s.cy};
    for (int q = 0; q < 4; ++q) {
      SCOPED_TRACE("mosaic " + std::to_string(i) + " quadrant " + std::to_string(q));
      auto item = ds->expected_image(static_cast<size_t>(s.items[q])).to(torch::kFloat).div(255).unsqueeze(0);
      // Every side shrinks (28 -> at most 20 px): torchvision's antialiased bilinear.
      auto want = F::interpolate(item, F::InterpolateFuncOptions()
                                           .size(std::vector<int64_t>{h[q], w[q]})
                                           .mode(torch::kBilinear)
                                           .align_corners(false)
                                           .antialias(true))
                      .squeeze(0);
      auto got = s.image.slice(1, y0[q], y0[q] + h[q]).slice(2, x0[q], x0[q] + w[q]);
      EXPECT_TRUE(torch::allclose(got, want, 1e-6, 1e-6)) << (got - want).abs().max().item<double>();
      auto cells = s.labels.slice(0, y0[q] / 4, (y0[q] + h[q]) / 4).slice(1, x0[q] / 4, (x0[q] + w[q]) / 4);
      EXPECT_TRUE((cells == ds->label(static_cast<size_t>(s.items[q]))).all().item<bool>());
    }
  }
}

TEST(Mosaic, DeterministicFromSeedAndIndex) {
  MosaicDataset a(base(), config(3)), b(base(), config(3)), c(base(), config(4));
  for (int64_t i : {0, 1, 17, 123456}) {
    auto x = a.get(i), y = b.get(i), z = a.get(i);
    EXPECT_TRUE(torch::equal(x.image, y.image));
    EXPECT_TRUE(torch::equal(x.labels, y.labels));
    EXPECT_EQ(x.items, y.items);
    EXPECT_TRUE(torch::equal(x.image, z.image));
  }
  // Another seed gives other mosaics (another index too).
  int differ_seed = 0, differ_index = 0;
  for (int64_t i = 0; i < 10; ++i) {
    differ_seed += !torch::equal(a.get(i).image, c.get(i).image);
    differ_index += !torch::equal(a.get(i).image, a.get(i + 1).image);
  }
  EXPECT_EQ(differ_seed, 10);
  EXPECT_EQ(differ_index, 10);
  // A batch is the samples stacked, whatever the threads.
  auto batch = a.batch(5, 6);
  ASSERT_EQ(batch.images.sizes(), (std::vector<int64_t>{6, 1, 28, 28}));
  ASSERT_EQ(batch.labels.sizes(), (std::vector<int64_t>{6, 7, 7}));
  for (int64_t k = 0; k < 6; ++k) {
    EXPECT_TRUE(torch::equal(batch.images[k], a.get(5 + k).image));
    EXPECT_TRUE(torch::equal(batch.labels[k], a.get(5 + k).labels));
  }
}

TEST(Mosaic, CutsOnlyOnPatchBoundariesInside) {
  MosaicDataset m(base(), config(1));
  EXPECT_EQ(m.cut_points(), (std::vector<int64_t>{8, 12, 16, 20}));
  std::set<int64_t> xs, ys;
  for (int64_t i = 0; i < 400; ++i) {
    auto s = m.get(i);
    xs.insert(s.cx);
    ys.insert(s.cy);
    // The label map changes only at the cut: left of it the top-left / bottom-left classes.
    EXPECT_EQ(s.labels[0][s.cx / 4 - 1].item<int64_t>(), s.items[0] % 10);
    EXPECT_EQ(s.labels[0][s.cx / 4].item<int64_t>(), s.items[1] % 10);
    EXPECT_EQ(s.labels[s.cy / 4][0].item<int64_t>(), s.items[2] % 10);
  }
  EXPECT_EQ(xs, (std::set<int64_t>{8, 12, 16, 20}));  // all of them, and only them
  EXPECT_EQ(ys, (std::set<int64_t>{8, 12, 16, 20}));

  // General geometry: 32 px, patch 4, at least 3 patches per side.
  auto c = config();
  c.img_size = 32;
  c.min_cells = 3;
  EXPECT_EQ(MosaicDataset(base(), c).cut_points(), (std::vector<int64_t>{12, 16, 20}));
  // 28 px with 7-px patches: a 4x4 grid, one cut.
  c = config();
  c.patch = 7;
  MosaicDataset m7(base(), c);
  EXPECT_EQ(m7.cut_points(), (std::vector<int64_t>{14}));
  EXPECT_EQ(m7.get(3).labels.sizes(), (std::vector<int64_t>{4, 4}));
}

TEST(Mosaic, RgbOutputRepeatsTheGrayPlane) {
  auto c = config();
  c.channels = 3;
  auto s = MosaicDataset(base(), c).get(2);
  ASSERT_EQ(s.image.sizes(), (std::vector<int64_t>{3, 28, 28}));
  EXPECT_TRUE(torch::equal(s.image[0], s.image[1]));
  EXPECT_TRUE(torch::equal(s.image[0], s.image[2]));
}

TEST(Mosaic, ImpossibleGeometryIsAClearError) {
  auto c = config();
  c.patch = 14;  // a 2x2 grid: no room for two quadrants of 2 patches
  auto e = error_of([&] { MosaicDataset(base(), c); });
  EXPECT_TRUE(contains(e, "28-px image with 14-px patches has a 2x2 grid")) << e;
  EXPECT_TRUE(contains(e, "at least 4 per side")) << e;
  c = config();
  c.img_size = 30;
  e = error_of([&] { MosaicDataset(base(), c); });
  EXPECT_TRUE(contains(e, "multiple of patch")) << e;
  c = config();
  c.min_cells = 4;  // 7 patches < 2 * 4
  EXPECT_FALSE(error_of([&] { MosaicDataset(base(), c); }).empty());
  c = config();
  c.channels = 2;
  EXPECT_FALSE(error_of([&] { MosaicDataset(base(), c); }).empty());
  EXPECT_FALSE(error_of([&] { MosaicDataset(std::make_shared<SyntheticDataset>(0), config()); }).empty());
  // A cut off the patch boundaries, or leaving a quadrant too thin.
  MosaicDataset m(base(), config());
  e = error_of([&] { m.compose({0, 1, 2, 3}, 10, 8); });
  EXPECT_TRUE(contains(e, "not a patch boundary")) << e;
  EXPECT_FALSE(error_of([&] { m.compose({0, 1, 2, 3}, 8, 24); }).empty());
  EXPECT_FALSE(error_of([&] { m.compose({0, 1, 2, 500}, 8, 8); }).empty());
}
