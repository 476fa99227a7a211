// The teacher cache: hits give exactly the uncached loss; new inputs, other teacher files and
// damaged entries miss; the size bound is kept. And data.seed, which lets runs share views.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "distill/hybrid.h"
#include "distill/recipe.h"
#include "distill/task.h"
#include "distill/teacher_cache.h"
#include "model/checkpoint.h"
#include "test_util.h"

using namespace hd;
using namespace hd::distill;
using hd::testing::contains;
using hd::testing::error_of;
using hd::testing::TempDir;
namespace fs = std::filesystem;

namespace {

model::ViTConfig small(const std::string& name, int64_t dim, int64_t depth) {
  auto c = model::preset("vit_mini_patch4_28");
  c.name = name;
  c.embed_dim = dim;
  c.depth = depth;
  c.num_heads = 4;
  c.num_classes = 0;
  return c;
}

// Two tiny random teachers in `dir`; a recipe over them (progressive masking by `mim`, or `mask`).
std::string make_recipe(const std::string& dir, const std::string& mask = "{strategy: progressive, teacher: mim}") {
  torch::manual_seed(3);
  model::VisionTransformer mim(small("mim", 48, 3));
  model::VisionTransformer sup(small("sup", 64, 2));
  if (!fs::exists(dir + "/mim.safetensors")) model::save_model(dir + "/mim.safetensors", mim);
  if (!fs::exists(dir + "/sup.safetensors")) model::save_model(dir + "/sup.safetensors", sup);
  return "name: tiny\nstudent: {arch: vit_mini_patch4_28}\nteachers:\n"
         "  - name: mim\n    checkpoint: " + dir + "/mim.safetensors\n"
         "    targets: [{kind: relation, layers: [1, 2], student_layers: [4, 5]}]\n"
         "  - name: sup\n    checkpoint: " + dir + "/sup.safetensors\n"
         "    targets: [{kind: features, norm: layernorm}, {kind: block, layers: [0]}]\n"
         "masking: " + mask + "\ndata: {augment: false, workers: 1}\ntrain: {batch: 4, seed: 7}\n";
}

HybridDistiller make_distiller(const Recipe& r) {
  torch::manual_seed(0);
  model::VisionTransformer student(r.student);
  HybridDistiller d(r, student, load_teachers(r, torch::kCPU));
  d->eval();
  return d;
}

// Loss, every term and every target bitwise equal.
void expect_same(const DistillOutput& a, const DistillOutput& b) {
  EXPECT_TRUE(torch::equal(a.loss, b.loss)) << a.loss.item<double>() << " vs " << b.loss.item<double>();
  EXPECT_TRUE(torch::equal(a.keep, b.keep));
  ASSERT_EQ(a.terms.size(), b.terms.size());
  for (size_t i = 0; i < a.terms.size(); ++i) {
    EXPECT_EQ(a.terms[i].first, b.terms[i].first);
    EXPECT_TRUE(torch::equal(a.terms[i].second, b.terms[i].second)) << a.terms[i].first;
  }
  ASSERT_EQ(a.targets.size(), b.targets.size());
  for (size_t i = 0; i < a.targets.size(); ++i) EXPECT_TRUE(torch::equal(a.targets[i].second, b.targets[i].second));
}

// Runs the default row (progressive masking by `mim`) once on x, filling DIR/cache: mim's relations
// and block inputs 0, 1, 2; sup's features and block 0.
void fill_cache(const TempDir& dir, const torch::Tensor& x) {
  auto d = make_distiller(parse_recipe(make_recipe(dir.path()), "r.yaml"));
  d->set_teacher_cache(std::make_shared<TeacherCache>(dir.file("cache"), 1ull << 30));
  d->forward(x);
}

std::vector<fs::path> entries(const std::string& dir) {
  std::vector<fs::path> out;
  for (auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) out.push_back(e.path());
  return out;
}

}  // namespace

TEST(TeacherCache, HitsEqualTheUncachedForwardExactly) {
  TempDir dir("hd_tcache");
  auto r = parse_recipe(make_recipe(dir.path()), "r.yaml");
  auto d = make_distiller(r);
  torch::manual_seed(1);
  auto x = torch::randn({4, 1, 28, 28});
  auto plain = d->forward(x, true);

  auto cache = std::make_shared<TeacherCache>(dir.file("cache"), 1ull << 30);
  d->set_teacher_cache(cache);
  auto cold = d->forward(x, true);
  EXPECT_EQ(cache->stats().misses, 2);
  EXPECT_EQ(cache->stats().hits, 0);
  // mim: relation 1, 2 and the mask's block inputs 0, 1, 2; sup: features and block 0.
  EXPECT_EQ(cache->stats().entries_written, 7);
  EXPECT_EQ(entries(dir.file("cache")).size(), 7u);
  expect_same(plain, cold);

  auto warm = d->forward(x, true);
  EXPECT_EQ(cache->stats().hits, 2);
  EXPECT_EQ(cache->stats().misses, 2);
  EXPECT_EQ(cache->stats().entries_written, 7);
  EXPECT_GT(cache->stats().bytes_read, 0u);
  expect_same(plain, warm);
  EXPECT_TRUE(contains(cache->summary(), "2 hits, 2 misses")) << cache->summary();

  // Another batch misses.
  auto y = x.clone();
  y[0][0][0][0] += 1e-3f;
  d->forward(y);
  EXPECT_EQ(cache->stats().misses, 4);
  EXPECT_EQ(cache->stats().hits, 2);

  // A fresh cache object on the same folder (another run) hits from the start.
  auto d2 = make_distiller(r);
  auto again = std::make_shared<TeacherCache>(dir.file("cache"), 1ull << 30);
  EXPECT_GT(again->size_bytes(), 0u);
  d2->set_teacher_cache(again);
  expect_same(plain, d2->forward(x, true));
  EXPECT_EQ(again->stats().hits, 2);
  EXPECT_EQ(again->stats().misses, 0);
}

TEST(TeacherCache, RowsShareTheTapsTheyHaveInCommon) {
  TempDir dir("hd_tcache");
  auto x = torch::randn({4, 1, 28, 28});
  // The progressive row stores the mask's block inputs and the relations, so the row without
  // masking (relations only) hits for both teachers.
  fill_cache(dir, x);
  auto none = parse_recipe(make_recipe(dir.path(), "{strategy: none}"), "r.yaml");
  auto dn = make_distiller(none);
  auto plain = dn->forward(x, true);
  auto cache = std::make_shared<TeacherCache>(dir.file("cache"), 1ull << 30);
  dn->set_teacher_cache(cache);
  expect_same(plain, dn->forward(x, true));
  EXPECT_EQ(cache->stats().hits, 2);
  EXPECT_EQ(cache->stats().misses, 0);
}

TEST(TeacherCache, StoredTapsAreLoadedAndOnlyTheMissingOnesComputed) {
  TempDir dir("hd_tcache");
  auto x = torch::randn({4, 1, 28, 28});
  // The row masked by `mim` stores sup's features and block 0 ...
  fill_cache(dir, x);
  const auto stored = entries(dir.file("cache")).size();
  // ... so the row masked by `sup` (which adds its block inputs 0 and 1) loads those and runs sup
  // for the block inputs alone: block 0 only. sup's block 1, turned float64 after the uncached
  // reference, throws when run; the cached result is still exact, so it did not run.
  auto ds = make_distiller(parse_recipe(make_recipe(dir.path(), "{strategy: progressive, teacher: sup, layers: [0, 1]}"),
                                        "r.yaml"));
  auto plain = ds->forward(x, true);
  ds->teachers().at(1).model->blocks[1]->to(torch::kFloat64);
  EXPECT_THROW(ds->forward(x, true), std::exception);  // it throws uncached
  auto cache = std::make_shared<TeacherCache>(dir.file("cache"), 1ull << 30);
  ds->set_teacher_cache(cache);
  ::testing::internal::CaptureStderr();
  expect_same(plain, ds->forward(x, true));
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  EXPECT_EQ(cache->stats().hits, 1);     // mim: relations only
  EXPECT_EQ(cache->stats().misses, 1);   // sup ...
  EXPECT_EQ(cache->stats().partial, 1);  // ... for its block inputs only
  EXPECT_EQ(cache->stats().entries_written, 2);
  EXPECT_EQ(entries(dir.file("cache")).size(), stored + 2);
  EXPECT_TRUE(contains(cache->summary(), "1 hits, 1 misses (teacher forwards skipped / run, 1 of them for the "
                                         "missing taps only)")) << cache->summary();
  // Now every tap is stored: a plain hit.
  expect_same(plain, ds->forward(x, true));
  EXPECT_EQ(cache->stats().hits, 3);
  EXPECT_EQ(cache->stats().partial, 1);
}

TEST(TeacherCache, AnotherTeacherFileMisses) {
  TempDir dir("hd_tcache");
  auto text = make_recipe(dir.path());
  auto x = torch::randn({4, 1, 28, 28});
  auto d = make_distiller(parse_recipe(text, "r.yaml"));
  d->set_teacher_cache(std::make_shared<TeacherCache>(dir.file("cache"), 1ull << 30));
  d->forward(x);
  // The same weights in another file (trailing bytes are allowed): the file is the key.
  fs::copy_file(dir.file("sup.safetensors"), dir.file("sup2.safetensors"));
  std::ofstream(dir.file("sup2.safetensors"), std::ios::app) << "        ";
  auto other = text;
  other.replace(other.find("/sup.safetensors"), 16, "/sup2.safetensors");
  auto d2 = make_distiller(parse_recipe(other, "r.yaml"));
  auto cache = std::make_shared<TeacherCache>(dir.file("cache"), 1ull << 30);
  d2->set_teacher_cache(cache);
  d2->forward(x);
  EXPECT_EQ(cache->stats().hits, 1);    // mim
  EXPECT_EQ(cache->stats().misses, 1);  // sup, from its other file
}

TEST(TeacherCache, DamagedEntryIsReportedAndRecomputed) {
  TempDir dir("hd_tcache");
  auto d = make_distiller(parse_recipe(make_recipe(dir.path()), "r.yaml"));
  auto x = torch::randn({4, 1, 28, 28});
  auto plain = d->forward(x, true);
  auto cache = std::make_shared<TeacherCache>(dir.file("cache"), 1ull << 30);
  d->set_teacher_cache(cache);
  d->forward(x);
  for (const auto& f : entries(dir.file("cache"))) {
    const auto size = fs::file_size(f);
    fs::resize_file(f, size - 10);
    ::testing::internal::CaptureStderr();
    auto out = d->forward(x, true);
    const auto err = ::testing::internal::GetCapturedStderr();
    expect_same(plain, out);
    EXPECT_TRUE(contains(err, f.string())) << err;
    EXPECT_EQ(fs::file_size(f), size) << f;  // rewritten whole
  }
  EXPECT_EQ(cache->stats().damaged, 7);
  // A file that is not safetensors at all, and one holding another entry: both reported, only
  // they recomputed.
  auto files = entries(dir.file("cache"));
  std::ofstream(files[0], std::ios::trunc) << "garbage";
  fs::copy_file(files[2], files[1], fs::copy_options::overwrite_existing);
  ::testing::internal::CaptureStderr();
  expect_same(plain, d->forward(x, true));
  const auto err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(cache->stats().damaged, 9);
  EXPECT_TRUE(contains(err, files[0].string()) && contains(err, files[1].string())) << err;
  EXPECT_TRUE(contains(err, "not the entry its name says")) << err;
  const auto hits = cache->stats().hits;
  expect_same(plain, d->forward(x, true));
  EXPECT_EQ(cache->stats().hits, hits + 2);
}

TEST(TeacherCache, SizeBoundIsKept) {
  TempDir dir("hd_tcache");
  auto d = make_distiller(parse_recipe(make_recipe(dir.path()), "r.yaml"));
  auto x = torch::randn({4, 1, 28, 28});
  auto plain = d->forward(x, true);
  // A run whose growth cannot fit: a clear error after its first batch.
  auto cache = std::make_shared<TeacherCache>(dir.file("cache"), 1ull << 20);
  cache->plan(1000);
  d->set_teacher_cache(cache);
  const auto err = error_of([&] { d->forward(x); });
  for (const char* what : {"would outgrow its bound", "per batch x 999 more batches", "1.00 MiB", "--teacher-cache-gb",
                           "clear the folder"})
    EXPECT_TRUE(contains(err, what)) << what << " in: " << err;
  EXPECT_EQ(err.rfind(dir.file("cache"), 0), 0u) << err;
  EXPECT_LE(cache->size_bytes(), 1ull << 20);

  // Every write is guarded: under a bound smaller than an entry nothing is written, and the
  // results are those of the teachers.
  auto tiny = std::make_shared<TeacherCache>(dir.file("tiny"), 1000);
  d->set_teacher_cache(tiny);
  ::testing::internal::CaptureStderr();
  expect_same(plain, d->forward(x, true));
  const auto warn = ::testing::internal::GetCapturedStderr();
  EXPECT_TRUE(contains(warn, dir.file("tiny") + ": full")) << warn;
  EXPECT_TRUE(entries(dir.file("tiny")).empty());
  EXPECT_EQ(tiny->stats().entries_written, 0);
}

TEST(Recipe, DataSeedDrivesTheViewsOnly) {
  TempDir dir("hd_tcache");
  const auto text = make_recipe(dir.path());
  auto r = parse_recipe(text, "r.yaml");
  EXPECT_FALSE(r.data.seed.has_value());
  EXPECT_EQ(loader_config(r).seed, 7u);  // train.seed by default
  EXPECT_FALSE(parse_recipe(r.to_yaml(), "e.yaml").data.seed.has_value());

  auto s = parse_recipe(text, "r.yaml", ".", {"data.seed=11", "train.seed=8"});
  ASSERT_TRUE(s.data.seed.has_value());
  EXPECT_EQ(loader_config(s).seed, 11u);
  EXPECT_EQ(train_config(s, "run").seed, 8u);
  auto back = parse_recipe(s.to_yaml(), "e.yaml");
  ASSERT_TRUE(back.data.seed.has_value());
  EXPECT_EQ(*back.data.seed, 11u);
  EXPECT_EQ(back.to_yaml(), s.to_yaml());
  EXPECT_TRUE(contains(error_of([&] { parse_recipe(text, "r.yaml", ".", {"data.seed=[1]"}); }), "data.seed"));
}
