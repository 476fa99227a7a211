// Hybrid distiller, recipes and the training loop on tiny models.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "data/dataset.h"
#include "distill/hybrid.h"
#include "distill/masking.h"
#include "distill/recipe.h"
#include "distill/task.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "train/trainer.h"
#include "util/error.h"
#include "util/threads.h"

using namespace hd;
using namespace hd::distill;
namespace fs = std::filesystem;

namespace {

model::ViTConfig small(const std::string& name, int64_t dim, int64_t depth, int64_t heads) {
  auto c = model::preset("vit_mini_patch4_28");
  c.name = name;
  c.embed_dim = dim;
  c.depth = depth;
  c.num_heads = heads;
  c.num_classes = 0;
  return c;
}

// Two random tiny teachers on disk, shared by the tests.
const std::string& teacher_dir() {
  static std::string dir = [] {
    auto d = fs::temp_directory_path() / "hd_test_distill";
    fs::create_directories(d);
    torch::manual_seed(42);
    model::VisionTransformer mim(small("mim", 48, 3, 4));
    model::save_model((d / "mim.safetensors").string(), mim);
    model::VisionTransformer sup(small("sup", 64, 2, 4));
    model::save_model((d / "sup.safetensors").string(), sup);
    return d.string();
  }();
  return dir;
}

std::string recipe_text(const std::string& extra_mask = "strategy: progressive\n  teacher: mim\n  layers: [0, 1, 2]",
                        const std::string& student = "arch: vit_mini_patch4_28") {
  return "name: tiny\n"
         "student:\n  " + student + "\n"
         "teachers:\n"
         "  - name: mim\n    checkpoint: " + teacher_dir() + "/mim.safetensors\n"
         "    targets:\n      - {kind: relation, layers: [1, 2], student_layers: [4, 5]}\n"
         "  - name: sup\n    checkpoint: " + teacher_dir() + "/sup.safetensors\n"
         "    targets:\n      - {kind: features, norm: layernorm, weight: 1.0}\n"
         "masking:\n  " + extra_mask + "\n"
         "optim: {lr: 0.002, base_batch: 32, warmup_epochs: 0.0, weight_decay: 0.05, clip_grad: 3.0}\n"
         "data: {dataset: fashion-mnist, augment: false, workers: 1}\n"
         "train: {epochs: 1, batch: 32, seed: 7, log_every: 5}\n";
}

void expect_error(const std::string& yaml, const std::string& phrase) {
  try {
    parse_recipe(yaml, "r.yaml");
    FAIL() << "accepted a recipe that should fail with '" << phrase << "'";
  } catch (const hd::Error& e) {
    EXPECT_NE(std::string(e.what()).find(phrase), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("r.yaml"), std::string::npos) << e.what();
  }
}

bool have_fashion() { return fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"); }

}  // namespace

TEST(Recipe, ParsesDefaultsAndProgressiveLayers) {
  auto r = parse_recipe(recipe_text("strategy: progressive\n  teacher: mim"), "r.yaml");
  EXPECT_EQ(r.student.name, "vit_mini_patch4_28");
  ASSERT_EQ(r.teachers.size(), 2u);
  EXPECT_EQ(r.teachers[0].targets[0].kind, TargetKind::Relation);
  EXPECT_EQ(r.teachers[0].targets[0].student_layers, (std::vector<int64_t>{4, 5}));
  EXPECT_EQ(r.teachers[1].targets[0].norm, TargetNorm::LayerNorm);
  EXPECT_EQ(r.mask.layers, (std::vector<int64_t>{0, 1, 2}));  // {0, L/3, 2L/3} of the 3-block teacher
  EXPECT_DOUBLE_EQ(r.mask.drop_ratio, 0.3);
  EXPECT_DOUBLE_EQ(r.smooth_l1_beta, 2.0);
}

TEST(Recipe, EffectiveRecipeRoundTrips) {
  auto r = parse_recipe(recipe_text(), "r.yaml");
  auto text = r.to_yaml();
  auto back = parse_recipe(text, "effective.yaml");
  EXPECT_EQ(back.to_yaml(), text);
  EXPECT_EQ(back.student.to_json(), r.student.to_json());
  EXPECT_EQ(back.mask.layers, r.mask.layers);
  EXPECT_EQ(back.teachers[0].targets[0].student_layers, (std::vector<int64_t>{4, 5}));
  EXPECT_DOUBLE_EQ(back.optim.lr, 0.002);
  EXPECT_NE(text.find("smooth_l1"), std::string::npos);
}

TEST(Recipe, RefusesWhatCannotWork) {
  auto base = recipe_text();
  expect_error(base + "bogus: 1\n", "bogus");
  expect_error(recipe_text("strategy: progressive\n  dropratio: 0.3"), "masking.dropratio");
  expect_error(recipe_text("strategy: sometimes"), "masking.strategy");
  auto bad_layer = base;
  bad_layer.replace(bad_layer.find("layers: [1, 2]"), 14, "layers: [1, 3]");
  expect_error(bad_layer, "out of range");
  auto missing = base;
  missing.replace(missing.find("mim.safetensors"), 15, "nope.safetensors");
  expect_error(missing, "not found");
  // 48-dim teacher with 4 heads vs a 6-head student: relations need a head mapping.
  expect_error(recipe_text("strategy: none", "config: {img_size: 28, patch_size: 4, in_chans: 1, embed_dim: 48, depth: 6, num_heads: 6, num_classes: 0, mean: [0.5], std: [0.5]}"),
               "head_mapping");
  // An explicit teacher input size whose grid differs from the student's is refused, naming
  // every model's size, patch and grid (the derived default would match: see Hybrid.TeacherInputSize).
  auto grid = base;
  grid.replace(grid.find("    targets:\n      - {kind: features"), 4, "    img_size: 32\n    ");
  expect_error(grid, "teachers.sup.img_size");
  expect_error(grid, "student 28px in 4px patches (7x7 grid); teacher 'mim' 28px in 4px patches (7x7 grid); "
                     "teacher 'sup' 32px in 4px patches (8x8 grid)");
  expect_error(grid, "img_size 28 for 'sup'");
  auto odd = base;
  odd.replace(odd.find("    targets:\n      - {kind: features"), 4, "    img_size: 30\n    ");
  expect_error(odd, "multiple of the teacher's 4px patch");
  auto red = base;
  red.replace(red.find("student_layers: [4, 5]"), 22, "student_layers: [4, 5], reduce: max");
  expect_error(red, "teachers.mim.targets[0].reduce");
  expect_error(recipe_text("strategy: none", "config: {img_size: 30, patch_size: 4}"), "not divisible");
}

TEST(Hybrid, ProgressiveMaskTargetsAndGradients) {
  auto r = parse_recipe(recipe_text(), "r.yaml");
  torch::manual_seed(0);
  model::VisionTransformer student(r.student);
  auto teachers = load_teachers(r, torch::kCPU);
  auto mim = teachers[0].model;
  HybridDistiller d(r, student, teachers);
  auto x = torch::randn({2, 1, 28, 28});
  auto out = d->forward(x, true);
  // 49 -> 34 -> 23 -> 16 patches.
  ASSERT_EQ(out.keep.sizes(), (std::vector<int64_t>{2, 16}));
  ASSERT_EQ(out.terms.size(), 3u);
  EXPECT_EQ(out.terms[0].first, "mim.relation.1");
  EXPECT_EQ(out.terms[2].first, "sup.features.last");

  // The mask, recomputed by hand from the MIM teacher's block inputs.
  model::TapSpec ts;
  ts.features = false;
  ts.block_input = {0, 1, 2};
  ts.relation = {2};
  auto taps = mim->forward_taps(x, ts);
  auto keep = keep_all(2, 49, torch::kCPU);
  for (int64_t l : {0, 1, 2}) keep = redundant_step(taps.block_input[l].slice(1, 1), keep, 0.3);
  EXPECT_TRUE(torch::equal(keep, out.keep));

  // Relation target: Q·Kᵀ (unscaled, Eq. 2) at kept rows and columns, CLS first.
  auto expect_rel = gather_relation(taps.relation[2], keep, 1, true) * std::sqrt(12.0);
  EXPECT_TRUE(torch::allclose(out.targets[1].second, expect_rel, 1e-5, 1e-5));
  EXPECT_EQ(out.preds[1].second.sizes(), (std::vector<int64_t>{2, 4, 17, 17}));
  // Feature target: 64-wide teacher, 128-wide student -> a projection; target LayerNorm'ed.
  EXPECT_EQ(out.preds[2].second.sizes(), (std::vector<int64_t>{2, 17, 64}));
  EXPECT_NEAR(out.targets[2].second.mean(-1).abs().max().item<double>(), 0.0, 1e-5);
  ASSERT_EQ(d->decoders.size(), 1u);

  // Total = features + α · mean of the two relation layers (Eq. 3); see Hybrid.Eq3 below.
  const double expect_total = out.terms[2].second.item<double>() +
                              0.5 * (out.terms[0].second.item<double>() + out.terms[1].second.item<double>());
  EXPECT_NEAR(out.loss.item<double>(), expect_total, 1e-5);

  // Gradients reach the student and the projection only.
  out.loss.backward();
  for (auto& p : d->student->parameters()) EXPECT_TRUE(p.grad().defined());
  EXPECT_TRUE(d->decoders.begin()->second->proj->weight.grad().defined());
  for (auto& t : d->teachers())
    for (auto& p : t.model->parameters()) {
      EXPECT_FALSE(p.requires_grad());
      EXPECT_FALSE(p.grad().defined());
    }
  // Teachers are not part of the trainable module.
  for (auto& p : d->named_parameters(true))
    EXPECT_TRUE(p.key().rfind("student.", 0) == 0 || p.key().rfind("dec_", 0) == 0) << p.key();
}

TEST(Hybrid, NoMaskAndRandomMask) {
  auto r = parse_recipe(recipe_text("strategy: none"), "r.yaml");
  model::VisionTransformer s(r.student);
  HybridDistiller d(r, s, load_teachers(r, torch::kCPU));
  auto x = torch::randn({2, 1, 28, 28});
  EXPECT_EQ(d->forward(x).keep.size(1), 49);
  auto rr = parse_recipe(recipe_text("strategy: random\n  drop_ratio: 0.65"), "r.yaml");
  model::VisionTransformer s2(rr.student);
  HybridDistiller d2(rr, s2, load_teachers(rr, torch::kCPU));
  EXPECT_EQ(d2->forward(x).keep.size(1), 17);  // floor(49 * 0.35)
}

TEST(Hybrid, DecodersAndMaskFeatureReconstruction) {
  // Single teacher, features through a 2-block attention decoder, SimMIM-style masking.
  std::string yaml = "name: simmim\nstudent: {arch: vit_mini_patch4_28}\nteachers:\n"
                     "  - name: sup\n    checkpoint: " + teacher_dir() + "/sup.safetensors\n"
                     "    targets: [{kind: features, decoder: attention, decoder_depth: 2}]\n"
                     "masking: {strategy: mask_tokens, drop_ratio: 0.6}\n";
  auto r = parse_recipe(yaml, "r.yaml");
  torch::manual_seed(0);
  model::VisionTransformer s(r.student);
  HybridDistiller d(r, s, load_teachers(r, torch::kCPU));
  ASSERT_EQ(d->decoders.size(), 1u);
  auto& dec = d->decoders.begin()->second;
  EXPECT_EQ(dec->blocks->size(), 2u);
  EXPECT_TRUE(d->mask_token.defined());
  auto x = torch::randn({2, 1, 28, 28});
  auto out = d->forward(x, true);
  EXPECT_EQ(out.keep.size(1), 49);                   // the student sees every position
  ASSERT_EQ(out.masked.sizes(), (std::vector<int64_t>{2, 30}));  // 49 - floor(49 * 0.4)
  EXPECT_EQ(out.preds[0].second.sizes(), (std::vector<int64_t>{2, 30, 64}));
  // Targets are the teacher's features at the masked positions.
  torch::NoGradGuard ng;
  auto tf = d->teachers()[0].model->forward_features(x);
  EXPECT_TRUE(torch::allclose(out.targets[0].second, gather_tokens(tf, out.masked, 1, false)));
  // The mask token replaces exactly the masked patch embeddings.
  auto flags = torch::zeros({2, 49}, torch::kBool);
  flags.scatter_(1, out.masked, true);
  auto e = d->student->embed_masked(x, flags, d->mask_token);
  auto plain = d->student->embed(x);
  auto same = (e - plain).abs().sum(-1).slice(1, 1) == 0;  // [2,49] unchanged positions
  EXPECT_TRUE(torch::equal(same, flags.logical_not()));

  // A linear decoder is a linear layer even when widths match; relations refuse decoders.
  std::string lin = "name: lin\nstudent: {config: {img_size: 28, patch_size: 4, in_chans: 1, embed_dim: 64, depth: 2, num_heads: 4, mean: [0.5], std: [0.5]}}\n"
                    "teachers:\n  - name: sup\n    checkpoint: " + teacher_dir() + "/sup.safetensors\n"
                    "    targets: [{kind: features, decoder: linear}]\n";
  auto rl = parse_recipe(lin, "r.yaml");
  model::VisionTransformer sl(rl.student);
  HybridDistiller dl(rl, sl, load_teachers(rl, torch::kCPU));
  ASSERT_EQ(dl->decoders.size(), 1u);
  EXPECT_FALSE(dl->decoders.begin()->second->blocks);
  EXPECT_TRUE(dl->decoders.begin()->second->proj);
  auto none = lin;
  none.replace(none.find("decoder: linear"), 15, "decoder: none");
  auto rn = parse_recipe(none, "r.yaml");
  model::VisionTransformer sn(rn.student);
  HybridDistiller dn(rn, sn, load_teachers(rn, torch::kCPU));
  EXPECT_TRUE(dn->decoders.empty());  // same width, no decoder: no projection either
  expect_error(lin.replace(lin.find("kind: features, decoder: linear"), 31, "kind: relation, layers: [0], decoder: linear"),
               "decoder");
}

TEST(Trainer, ShortRunLowersLossAndResumeIsExact) {
  if (!have_fashion()) GTEST_SKIP() << "Fashion-MNIST not installed";
  hd::set_threads(2);
  auto r = parse_recipe(recipe_text(), "r.yaml");
  r.student.depth = 6;
  auto ds = data::open_dataset("fashion-mnist", "train");
  auto run = [&](const std::string& dir, int64_t stop_at, bool resume) {
    torch::manual_seed(r.seed);
    model::VisionTransformer s(r.student);
    HybridDistiller d(r, s, load_teachers(r, torch::kCPU));
    DistillTask task(d);
    data::DataLoader loader(ds, loader_config(r));
    train::TrainConfig tc;
    tc.run_dir = dir;
    tc.max_steps = 24;
    tc.lr = r.optim.lr;
    tc.clip_grad = 3.0;
    tc.seed = r.seed;
    tc.log_every = 6;
    tc.recipe_text = "x";
    tc.resume = resume;
    tc.force = !resume;
    tc.quiet = true;
    tc.stop_at = stop_at;
    auto res = train::train(task, loader, tc);
    return std::make_pair(res, model::state_dict(*d));
  };
  auto base = (fs::temp_directory_path() / "hd_test_trainer").string();
  fs::remove_all(base);
  auto [straight, w_straight] = run(base + "/a", 0, false);
  EXPECT_EQ(straight.steps, 24);
  EXPECT_LT(straight.last_loss, 0.8 * straight.first_loss) << straight.first_loss << " -> " << straight.last_loss;
  EXPECT_TRUE(fs::exists(base + "/a/student.safetensors"));
  auto student = model::load_model(base + "/a/student.safetensors");
  EXPECT_EQ(student->config().depth, 6);

  auto [part, w_part] = run(base + "/b", 10, false);
  EXPECT_TRUE(part.interrupted);
  EXPECT_EQ(part.steps, 10);
  auto [rest, w_rest] = run(base + "/b", 0, true);
  EXPECT_EQ(rest.steps, 24);
  ASSERT_EQ(w_rest.size(), w_straight.size());
  for (size_t i = 0; i < w_rest.size(); ++i)
    EXPECT_TRUE(torch::allclose(w_rest[i].second, w_straight[i].second, 1e-5, 1e-6)) << w_rest[i].first;

  // A different recipe text refuses to resume.
  torch::manual_seed(0);
  model::VisionTransformer s(r.student);
  HybridDistiller d(r, s, load_teachers(r, torch::kCPU));
  DistillTask task(d);
  data::DataLoader loader(ds, loader_config(r));
  train::TrainConfig tc;
  tc.run_dir = base + "/b";
  tc.recipe_text = "changed";
  tc.resume = true;
  tc.quiet = true;
  EXPECT_THROW(train::train(task, loader, tc), hd::Error);
}

namespace {

// Smooth L1 written out (Eq. 1's D): 0.5 x²/β below β, |x| - β/2 above; averaged over elements.
double smooth_l1_by_hand(const torch::Tensor& pred, const torch::Tensor& target, double beta) {
  auto p = pred.to(torch::kDouble).flatten(), t = target.to(torch::kDouble).flatten();
  auto pa = p.accessor<double, 1>(), ta = t.accessor<double, 1>();
  double s = 0;
  for (int64_t i = 0; i < p.numel(); ++i) {
    const double x = std::abs(pa[i] - ta[i]);
    s += x < beta ? 0.5 * x * x / beta : x - 0.5 * beta;
  }
  return s / static_cast<double>(p.numel());
}

double term(const DistillOutput& out, const std::string& name) {
  for (const auto& [k, v] : out.terms)
    if (k == name) return v.item<double>();
  ADD_FAILURE() << "no term " << name;
  return 0;
}

}  // namespace

// Eq. 1 + 3: loss = D(features) + α · D([R^{L-1}, R^{L-2}]), one D over the concatenated relation
// target, i.e. α times the MEAN of the per-layer relation terms (each layer's tensor has the same
// size). `reduce: sum` is the explicit alternative. Block and MSA targets reduce the same way.
TEST(Hybrid, Eq3RelationLayersAreOneTarget) {
  const double alpha = 0.7;
  auto text = recipe_text("strategy: none");
  text.replace(text.find("student_layers: [4, 5]}"), 23, "student_layers: [4, 5], weight: 0.7}");
  auto r = parse_recipe(text, "r.yaml");
  EXPECT_EQ(r.teachers[0].targets[0].reduce, TargetReduce::Mean);
  torch::manual_seed(3);
  model::VisionTransformer student(r.student);
  HybridDistiller d(r, student, load_teachers(r, torch::kCPU));
  torch::manual_seed(5);
  auto x = torch::randn({3, 1, 28, 28});
  auto out = d->forward(x, true);
  const double r1 = term(out, "mim.relation.1"), r2 = term(out, "mim.relation.2"), f = term(out, "sup.features.last");
  EXPECT_NEAR(out.loss.item<double>(), f + alpha * (r1 + r2) / 2, 1e-6);
  // Not the per-layer sum (what α = 2 per layer would be).
  EXPECT_GT(std::abs(out.loss.item<double>() - (f + alpha * (r1 + r2))), 1e-3);
  ASSERT_EQ(out.target_terms.size(), 2u);
  EXPECT_EQ(out.target_terms[0].name, "mim.relation.mean");
  EXPECT_NEAR(out.target_terms[0].value.item<double>(), (r1 + r2) / 2, 1e-6);
  EXPECT_EQ(out.target_terms[1].name, "sup.features.last");

  // Each per-layer term, recomputed from the gathered tensors with a hand-written smooth L1.
  // (Full image: the relation target is the whole teacher relation, CLS included, times √d.)
  for (size_t i = 0; i < out.targets.size(); ++i) {
    EXPECT_NEAR(smooth_l1_by_hand(out.preds[i].second, out.targets[i].second, 2.0), out.terms[i].second.item<double>(),
                1e-6)
        << out.terms[i].first;
  }
  torch::NoGradGuard ng;
  model::TapSpec ts;
  ts.features = false;
  ts.relation = {1};
  auto taps = d->teachers()[0].model->forward_taps(x, ts);
  EXPECT_TRUE(torch::allclose(out.targets[0].second, taps.relation[1] * std::sqrt(12.0), 1e-5, 1e-5));

  // reduce: sum adds the layers.
  auto sum_text = text;
  sum_text.replace(sum_text.find("weight: 0.7}"), 12, "weight: 0.7, reduce: sum}");
  auto rs = parse_recipe(sum_text, "r.yaml");
  EXPECT_EQ(rs.teachers[0].targets[0].reduce, TargetReduce::Sum);
  EXPECT_NE(rs.to_yaml().find("reduce: sum"), std::string::npos);
  torch::manual_seed(3);
  model::VisionTransformer s2(rs.student);
  HybridDistiller d2(rs, s2, load_teachers(rs, torch::kCPU));
  auto out2 = d2->forward(x, true);
  EXPECT_NEAR(term(out2, "mim.relation.1"), r1, 1e-6);  // same student init, same terms
  EXPECT_NEAR(out2.loss.item<double>(), f + alpha * (r1 + r2), 1e-6);
  EXPECT_EQ(out2.target_terms[0].name, "mim.relation.sum");

  // Block and MSA targets over several layers: the mean of their per-layer terms too.
  for (const char* kind : {"block", "msa"}) {
    auto k_text = text;
    k_text.replace(k_text.find("kind: relation"), 14, std::string("kind: ") + kind);
    auto rk = parse_recipe(k_text, "r.yaml");
    torch::manual_seed(3);
    model::VisionTransformer sk(rk.student);
    HybridDistiller dk(rk, sk, load_teachers(rk, torch::kCPU));
    auto ok = dk->forward(x);
    const std::string p = std::string("mim.") + kind + ".";
    EXPECT_NEAR(ok.loss.item<double>(), term(ok, "sup.features.last") + alpha * (term(ok, p + "1") + term(ok, p + "2")) / 2,
                1e-6)
        << kind;
  }
}

// A teacher at its own resolution (as CLIP-L/14 at 196 px beside a ViT-B/16 student at 224 px):
// the student's 28 px images in 7 px patches, an 8 px-patch teacher at 32 px (both 4x4 grids),
// resized bilinearly and re-normalised with the teacher's mean/std.
TEST(Hybrid, TeacherInputSize) {
  auto d0 = fs::temp_directory_path() / "hd_test_teacher_size";
  fs::create_directories(d0);
  auto c = model::preset("vit_mini_patch7_28");
  c.depth = 2;
  c.num_classes = 0;
  c.name = "p8";
  c.patch_size = 8;
  c.img_size = 24;  // a 3x3 grid as saved: its pos_embed is resampled to the 4x4 grid at 32 px
  c.mean = {0.2};
  c.std = {0.4};
  torch::manual_seed(1);
  model::VisionTransformer p8(c);
  model::save_model((d0 / "p8.safetensors").string(), p8);
  std::string yaml = "name: sizes\nstudent: {arch: vit_mini_patch7_28}\nteachers:\n"
                     "  - name: big\n    checkpoint: " + (d0 / "p8.safetensors").string() + "\n"
                     "    targets: [{kind: relation, layers: [0, 1], head_mapping: average}, {kind: features}]\n";
  auto r = parse_recipe(yaml, "r.yaml");
  EXPECT_EQ(r.teachers[0].img_size, 32);  // derived: the student's 4x4 grid in 8 px patches
  EXPECT_NE(r.to_yaml().find("img_size: 32"), std::string::npos);
  auto teachers = load_teachers(r, torch::kCPU);
  EXPECT_EQ(teachers[0].model->config().img_size, 32);
  EXPECT_EQ(teachers[0].model->pos_embed.size(1), 17);
  torch::manual_seed(0);
  model::VisionTransformer s(r.student);
  HybridDistiller d(r, s, teachers);
  auto x = torch::randn({2, 1, 28, 28});
  auto out = d->forward(x, true);
  EXPECT_EQ(out.targets[0].second.sizes(), (std::vector<int64_t>{2, 1, 17, 17}));
  // The target, by hand: un-normalise (the student's Fashion-MNIST mean/std), resize, normalise.
  torch::NoGradGuard ng;
  auto raw = x * 0.3530 + 0.2860;
  auto big = torch::nn::functional::interpolate(
      raw, torch::nn::functional::InterpolateFuncOptions().size(std::vector<int64_t>{32, 32}).mode(torch::kBilinear).align_corners(false));
  auto feats = d->teachers()[0].model->forward_features((big - 0.2) / 0.4);
  EXPECT_TRUE(torch::allclose(out.targets[2].second, feats, 1e-4, 1e-5));
  // An explicit size is kept as given when its grid matches.
  auto ry = yaml;
  ry.replace(ry.find("    targets:"), 4, "    img_size: 32\n    ");
  EXPECT_EQ(parse_recipe(ry, "r.yaml").teachers[0].img_size, 32);
}
