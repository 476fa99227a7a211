// Recipes from users: unknown, duplicated or contradictory keys, values that would silently
// give wrong numbers (NaN, zero std, beta >= 1), malformed YAML structure and overrides. Each is
// refused with an hd::Error naming the file and the key.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>

#include "distill/recipe.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "util/error.h"

namespace fs = std::filesystem;
using namespace hd;
using namespace hd::distill;

namespace {

// A teacher checkpoint holding only its architecture: all a recipe reads.
const std::string& teacher() {
  static const std::string path = [] {
    auto dir = fs::temp_directory_path() / "hd_test_recipe_robustness";
    fs::create_directories(dir);
    auto p = (dir / "t.safetensors").string();
    io::save_safetensors(p, {}, {{model::kConfigMetaKey, model::preset("vit_mini_patch4_28").to_json()}});
    return p;
  }();
  return path;
}

std::string recipe(const std::string& extra = "", const std::string& target = "{kind: relation, layers: [3]}") {
  return "name: t\nstudent: {arch: vit_mini_patch4_28}\nteachers:\n  - name: mim\n    checkpoint: " + teacher() +
         "\n    targets: [" + target + "]\n" + extra;
}

// The hd::Error message of parsing `text` (with overrides), or a failure.
std::string error_of(const std::string& text, const std::vector<std::string>& overrides = {}) {
  try {
    parse_recipe(text, "r.yaml", ".", overrides);
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("not an hd::Error: ") + e.what();
  }
  return "(accepted)";
}

void expect_refused(const std::string& text, const std::string& key, const std::vector<std::string>& overrides = {}) {
  const std::string msg = error_of(text, overrides);
  EXPECT_EQ(msg.rfind(overrides.empty() ? "r.yaml: " : "", 0), 0u) << msg;
  EXPECT_NE(msg.find(key), std::string::npos) << "expected '" << key << "' in: " << msg;
}

}  // namespace

TEST(RecipeRobustness, BaseRecipeIsAccepted) { EXPECT_EQ(error_of(recipe()), "(accepted)"); }

TEST(RecipeRobustness, DuplicateKeysAreRefused) {
  expect_refused(recipe("train: {epochs: 1, epochs: 5}\n"), "'train.epochs': is given twice");
  expect_refused(recipe("train: {epochs: 1}\ntrain: {epochs: 2}\n"), "'train': is given twice");
}

TEST(RecipeRobustness, ContradictoryKeysAreRefused) {
  expect_refused(recipe("masking: {strategy: random, teacher: mim, drop_ratio: 0.5}\n"), "'masking.teacher'");
  expect_refused(recipe("", "{kind: block, layers: [3], decoder: linear, decoder_depth: 2}"), "decoder_depth");
  expect_refused(recipe("optim: {lr: 1.0e-4, min_lr: 1.0e-3}\n"), "'optim.min_lr'");
  auto both = recipe();
  both.replace(both.find("{arch: vit_mini_patch4_28}"), 26, "{arch: vit_mini_patch4_28, config: {depth: 2}}");
  expect_refused(both, "either 'arch' or 'config'");
}

TEST(RecipeRobustness, ValuesThatGiveWrongNumbersAreRefused) {
  expect_refused(recipe("", "{kind: relation, layers: [3], weight: .nan}"), "weight");
  auto zero_std = recipe();
  zero_std.replace(zero_std.find("    targets:"), 0, "    std: [0.0]\n");
  expect_refused(zero_std, "'teachers.mim.std': must be positive");
  expect_refused(recipe("optim: {betas: [0.9, 1.0]}\n"), "'optim.betas'");
  expect_refused(recipe("optim: {eps: 0}\n"), "'optim.eps'");
  expect_refused(recipe("optim: {lr: .inf}\n"), "'optim.lr'");
  expect_refused(recipe("optim: {clip_grad: -1}\n"), "'optim.clip_grad'");
  expect_refused(recipe("loss: {beta: .nan}\n"), "'loss.beta'");
  expect_refused(recipe("masking: {strategy: random, drop_ratio: .nan}\n"), "'masking.drop_ratio'");
  expect_refused(recipe("data: {hflip: 1.5}\n"), "'data.hflip'");
  expect_refused(recipe("data: {workers: -1}\n"), "'data.workers'");
  expect_refused(recipe("data: {scale: [.nan, 1.0]}\n"), "'data.scale'");
  expect_refused(recipe("train: {checkpoint_every: -1}\n"), "'train.checkpoint_every'");
  expect_refused(recipe("train: {epochs: 1.5}\n"), "'train.epochs': has the wrong type");
}

TEST(RecipeRobustness, MalformedStructureIsAnHdError) {
  expect_refused(recipe("? [a, b]\n: 1\n"), "keys must be plain names");
  auto alias = recipe();
  alias.replace(alias.find("{arch: vit_mini_patch4_28}"), 26, "{config: &c {depth: [*c]}}");
  expect_refused(alias, "r.yaml: ");  // refused as a cycle or as too deep, not a crash
  expect_refused("[1, 2]", "must be a YAML mapping");
  expect_refused("a: [", "not valid YAML");
}

TEST(RecipeRobustness, BadOverridesAreHdErrors) {
  expect_refused(recipe(), "index 99999999999999999999 is out of range", {"teachers.99999999999999999999.checkpoint=x"});
  expect_refused(recipe(), "no list element named 'nope'", {"teachers.nope.checkpoint=x"});
  expect_refused(recipe(), "'train.epochs': is given twice", {"train={epochs: 1, epochs: 2}"});
  expect_refused(recipe(), "expected KEY=VALUE", {"train.epochs"});
  expect_refused(recipe(), "'train.bogus': unknown key", {"train.bogus=1"});
}

// Every committed fuzz input (fuzz/corpus/recipe/: seeds and the inputs of past crashes) parses,
// or is refused with an hd::Error. Same input format as fuzz/fuzz_recipe.cpp: the recipe, then
// optionally "#--set" and one override per line; teachers t.safetensors and u.safetensors.
TEST(RecipeRobustness, FuzzCorpusParsesOrGivesHdError) {
  const fs::path corpus = fs::path(HD_TEST_DATA_DIR) / ".." / ".." / "fuzz" / "corpus" / "recipe";
  const std::string base = fs::path(teacher()).parent_path().string();
  auto wide = model::preset("vit_mini_patch4_28");
  wide.num_heads = 8;
  wide.depth = 3;
  io::save_safetensors(base + "/u.safetensors", {}, {{model::kConfigMetaKey, wide.to_json()}});
  int n = 0;
  for (const auto& e : fs::directory_iterator(corpus)) {
    std::ifstream in(e.path(), std::ios::binary);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::string> overrides;
    if (auto at = text.find("#--set\n"); at != std::string::npos) {
      std::istringstream rest(text.substr(at + 7));
      for (std::string line; std::getline(rest, line);) overrides.push_back(line);
      text.resize(at);
    }
    try {
      parse_recipe(text, "fuzz.yaml", base, overrides);
    } catch (const Error&) {
    } catch (const std::exception& ex) {
      ADD_FAILURE() << e.path() << ": not an hd::Error: " << ex.what();
    }
    ++n;
  }
  EXPECT_GE(n, 5);
}
