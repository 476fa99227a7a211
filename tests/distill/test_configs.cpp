// Every shipped recipe parses and validates (teacher files replaced by stand-ins: with an `arch`
// given, validation needs only the architecture, not the weights).
#include <gtest/gtest.h>

#include <filesystem>
#include <algorithm>
#include <fstream>
#include <iomanip>
#include <regex>
#include <sstream>

#include "distill/recipe.h"
#include "model/checkpoint.h"
#include "util/error.h"

using namespace hd::distill;
namespace fs = std::filesystem;

namespace {

std::string read(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const TargetSpec* find_target(const Recipe& r, const std::string& teacher, TargetKind kind) {
  for (const auto& t : r.teachers)
    if (t.name == teacher)
      for (const auto& g : t.targets)
        if (g.kind == kind) return &g;
  return nullptr;
}

std::vector<std::string> teacher_names(const Recipe& r) {
  std::vector<std::string> n;
  for (const auto& t : r.teachers) n.push_back(t.name);
  std::sort(n.begin(), n.end());
  return n;
}

bool starts(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }

}  // namespace

// Every recipe under configs/ (recursive) parses and validates, teacher files replaced by
// stand-ins: an empty file where the recipe names the architecture, a small model otherwise.
// The paper recipes also carry their table's facts: teachers, masking, alpha, layers, epochs.
TEST(Configs, EveryRecipeValidatesAndPaperRowsMatchTheirTables) {
  const fs::path src = fs::path(HD_TEST_DATA_DIR).parent_path().parent_path() / "configs";
  auto tmp = fs::temp_directory_path() / "hd_test_configs";
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  {
    // The shipped Fashion-MNIST recipes' teachers: 12 blocks on a 7x7 grid.
    auto c = hd::model::preset("vit_mini12_patch4_28");
    hd::model::VisionTransformer m(c);
    hd::model::save_model((tmp / "small.safetensors").string(), m);
  }
  const std::regex teacher_re(R"(\n  - name: (\S+)\n    checkpoint: (\S+)\n(    arch: )?)");
  int n = 0, paper = 0;
  for (const auto& e : fs::recursive_directory_iterator(src)) {
    if (e.path().extension() != ".yaml") continue;
    const auto text = read(e.path());
    std::vector<std::string> overrides;
    for (std::sregex_iterator it(text.begin(), text.end(), teacher_re), end; it != end; ++it) {
      const std::string name = (*it)[1], ckpt = (*it)[2];
      auto standin = (*it)[3].matched ? tmp / fs::path(ckpt).filename() : tmp / "small.safetensors";
      if ((*it)[3].matched) std::ofstream(standin).put('x');
      overrides.push_back("teachers." + name + ".checkpoint=" + standin.string());
    }
    const std::string stem = e.path().stem().string();
    Recipe r;
    try {
      r = load_recipe(e.path().string(), overrides);
    } catch (const hd::Error& err) {
      ADD_FAILURE() << err.what();
      continue;
    }
    ++n;
    EXPECT_EQ(r.name, stem) << e.path();
    EXPECT_FALSE(r.teachers.empty());
    if (e.path().parent_path().filename() != "paper") continue;
    ++paper;
    // Every paper recipe quotes the paper: a header comment naming its table or figure.
    EXPECT_TRUE(starts(text, "# Table ") || starts(text, "# Figure ")) << stem;
    const bool vitl = stem == "table1_hybrid_clip_vitl";
    EXPECT_EQ(r.student.name, vitl ? "vit_large_patch16_224" : "vit_base_patch16_224") << stem;
    for (const auto& t : r.teachers) EXPECT_FALSE(t.arch.empty()) << stem << ": published teachers by preset";

    const auto* rel = find_target(r, "mae", TargetKind::Relation);
    const bool hybrid = rel && r.teachers.size() == 2;
    std::string table = stem.substr(0, stem.find('_'));
    // Teachers per table: DeiT + MAE (3, 5, 7, 8, 12a), CLIP + MAE (4, 6, 12b), DINO + MAE (11).
    std::string tc;
    if (table == "table3" || table == "table5" || table == "table7" || table == "table8" || table == "table12a") tc = "deit";
    if (table == "table4" || table == "table6" || table == "table12b") tc = "clip";
    if (table == "table13") tc = stem.find("_deit_") != std::string::npos ? "deit" : "clip";
    if (hybrid && !tc.empty()) {
      EXPECT_EQ(teacher_names(r), (std::vector<std::string>{tc, "mae"})) << stem;
    }
    if (!tc.empty()) {
      for (const auto& t : r.teachers) EXPECT_TRUE(t.name == tc || t.name == "mae") << stem << ": teacher " << t.name;
    }
    if (stem == "table11_hybrid_mae_dino") {
      EXPECT_EQ(teacher_names(r), (std::vector<std::string>{"dino", "mae"}));
    }

    // Schedules: 100 epochs for ablations, 300 for main rows, 40 for ViT-L (ImageNet-21K).
    const bool ablation = table == "table3" || table == "table4" || table == "table5" || table == "table6" ||
                          table == "table7" || table == "table8" || table == "table12a" || table == "table12b";
    int64_t epochs = r.epochs;
    if (ablation) epochs = 100;
    if (table == "table1" || table == "table9" || table == "table11") epochs = vitl ? 40 : 300;
    if (table == "table13") epochs = stem.find("_300ep") != std::string::npos ? 300 : 100;
    EXPECT_EQ(r.epochs, epochs) << stem;
    // The ablation rows ran without token masking (their Tc + T'm row is Table 8's no-masking row).
    if (ablation && table != "table8") {
      EXPECT_EQ(r.mask.strategy, MaskStrategy::None) << stem;
    }
    if (table == "table13") {
      EXPECT_EQ(r.mask.strategy, stem.find("_nomask_") != std::string::npos ? MaskStrategy::None : MaskStrategy::Progressive)
          << stem;
    }
    if (hybrid && (table == "table1" || table == "table9" || table == "table11")) {
      EXPECT_EQ(r.mask.strategy, MaskStrategy::Progressive) << stem;
      EXPECT_DOUBLE_EQ(r.mask.drop_ratio, 0.3) << stem;
    }
    // The MIM relations: L-2, L-1 (0-based 9, 10 of 12; 21, 22 of 24), alpha 1, reduced by the mean.
    if (rel && table != "table7") {
      EXPECT_EQ(rel->layers, vitl ? (std::vector<int64_t>{21, 22}) : (std::vector<int64_t>{9, 10})) << stem;
      EXPECT_EQ(rel->reduce, TargetReduce::Mean) << stem;
      if (table != "table12a" && table != "table12b" && stem != "table4_tc_tm_rel_weak_mae") {
        EXPECT_DOUBLE_EQ(rel->weight, 1.0) << stem;
      }
    }
  }
  EXPECT_GE(n, 80);

  auto load = [&](const std::string& stem) {
    const auto path = src / "paper" / (stem + ".yaml");
    const auto text = read(path);
    std::vector<std::string> o;
    for (std::sregex_iterator it(text.begin(), text.end(), teacher_re), end; it != end; ++it)
      o.push_back("teachers." + std::string((*it)[1]) + ".checkpoint=" +
                  (tmp / fs::path(std::string((*it)[2])).filename()).string());
    return load_recipe(path.string(), o);
  };
  // Table 7: 1-based layer sets -> 0-based blocks.
  const std::vector<std::pair<std::string, std::vector<int64_t>>> t7 = {
      {"1-11", {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}}, {"1-2-3", {0, 1, 2}}, {"5-6-7", {4, 5, 6}},
      {"9-10-11", {8, 9, 10}}, {"10-11", {9, 10}}, {"11", {10}}};
  for (const auto& [label, layers] : t7) {
    auto r = load("table7_layers_" + label);
    EXPECT_EQ(find_target(r, "mae", TargetKind::Relation)->layers, layers) << label;
    EXPECT_EQ(find_target(r, "mae", TargetKind::Relation)->reduce, TargetReduce::Mean) << label;
  }
  // Table 12: alpha.
  for (const char* sub : {"a", "b"})
    for (double a : {0.0, 0.1, 0.3, 0.5, 0.7, 1.0}) {
      std::ostringstream s;
      s << "table12" << sub << "_alpha_" << std::fixed << std::setprecision(1) << a;
      EXPECT_DOUBLE_EQ(find_target(load(s.str()), "mae", TargetKind::Relation)->weight, a) << s.str();
    }
  // Table 8: the masking strategies and their ratios.
  EXPECT_EQ(load("table8_none").mask.strategy, MaskStrategy::None);
  EXPECT_EQ(load("table8_random").mask.strategy, MaskStrategy::Random);
  EXPECT_DOUBLE_EQ(load("table8_random").mask.drop_ratio, 0.65);
  auto direct = load("table8_direct");
  EXPECT_EQ(direct.mask.strategy, MaskStrategy::Direct);
  EXPECT_EQ(direct.mask.layers, (std::vector<int64_t>{11}));
  for (auto [row, k] : std::vector<std::pair<std::string, double>>{{"50", 0.5}, {"70", 0.3}, {"90", 0.1}}) {
    auto r = load("table8_progressive_" + row);
    EXPECT_EQ(r.mask.strategy, MaskStrategy::Progressive);
    EXPECT_EQ(r.mask.layers, (std::vector<int64_t>{0, 4, 8}));
    EXPECT_DOUBLE_EQ(r.mask.drop_ratio, k) << row;
  }
  // Table 5/6: the kind of T'm; the naive row distils both teachers' features.
  for (const char* t : {"table5", "table6"})
    for (auto [kind, k] : std::vector<std::pair<std::string, TargetKind>>{
             {"block", TargetKind::Block}, {"msa", TargetKind::Msa}, {"relation", TargetKind::Relation}}) {
      auto r = load(std::string(t) + "_" + kind);
      ASSERT_NE(find_target(r, "mae", k), nullptr) << t << kind;
      EXPECT_EQ(find_target(r, "mae", k)->layers, (std::vector<int64_t>{9, 10}));
    }
  auto naive = load("table5_naive");
  EXPECT_NE(find_target(naive, "mae", TargetKind::Features), nullptr);
  EXPECT_NE(find_target(naive, "deit", TargetKind::Features), nullptr);
  // Fig. 9: decoder depths 1, 4, 8.
  for (int d : {1, 4, 8}) {
    auto r = load("fig9_clip_attn_decoder_" + std::to_string(d));
    EXPECT_EQ(r.teachers[0].targets[0].decoder, DecoderKind::Attention);
    EXPECT_EQ(r.teachers[0].targets[0].decoder_depth, d);
  }
  // ViT-L: CLIP-L/14 sees 196 px (14x14 grid, as the MAE-L/16 teacher and the student at 224 px).
  auto vitl = load("table1_hybrid_clip_vitl");
  EXPECT_EQ(vitl.teachers[1].name, "clip");
  EXPECT_EQ(vitl.teachers[1].img_size, 196);
  EXPECT_EQ(vitl.teachers[0].img_size, 224);
}

TEST(Configs, FashionMnistRecipesAndOverrides) {
  const fs::path src = fs::path(HD_TEST_DATA_DIR).parent_path().parent_path() / "configs";
  auto tmp = fs::temp_directory_path() / "hd_test_configs_fmnist";
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  // Teachers of the pipeline's architecture, as `pretrain-mae` / `train` write them.
  for (const char* name : {"mae", "sup"}) {
    auto c = hd::model::preset("vit_mini12_patch4_28");
    hd::model::VisionTransformer m(c);
    hd::model::save_model((tmp / (std::string(name) + ".safetensors")).string(), m);
  }
  const std::vector<std::string> teachers = {"teachers.mim.checkpoint=" + (tmp / "mae.safetensors").string(),
                                             "teachers.1.checkpoint=" + (tmp / "sup.safetensors").string()};
  auto overrides = teachers;
  overrides.push_back("train.epochs=7");
  overrides.push_back("masking.layers=[0, 1]");
  auto r = load_recipe((src / "fmnist_hybrid.yaml").string(), overrides);
  EXPECT_EQ(r.epochs, 7);
  EXPECT_EQ(r.mask.layers, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(r.teachers.at(0).checkpoint, (tmp / "mae.safetensors").string());
  EXPECT_EQ(r.teachers.at(1).checkpoint, (tmp / "sup.safetensors").string());
  EXPECT_EQ(r.student.name, "vit_mini12_patch4_28");
  // Without overrides the recipes use the shipped teachers (teachers/), which load and match.
  const auto shipped = src.parent_path() / "teachers";
  auto d = load_recipe((src / "fmnist_hybrid.yaml").string());
  EXPECT_EQ(fs::weakly_canonical(d.teachers.at(0).checkpoint), fs::weakly_canonical(shipped / "mae.safetensors"));
  EXPECT_EQ(fs::weakly_canonical(d.teachers.at(1).checkpoint), fs::weakly_canonical(shipped / "sup.safetensors"));
  EXPECT_EQ(d.mask.layers, (std::vector<int64_t>{0, 4, 8}));
  EXPECT_EQ(d.teachers.at(0).targets.at(0).layers, (std::vector<int64_t>{9, 10}));
  EXPECT_EQ(load_recipe((src / "fmnist_single.yaml").string()).teachers.size(), 1u);
  std::string by_name = teachers[1];
  by_name.replace(9, 1, "sup");  // teachers.sup.checkpoint=...
  auto single = load_recipe((src / "fmnist_single.yaml").string(), {by_name});
  EXPECT_EQ(single.teachers.size(), 1u);

  auto fails_with = [&](std::vector<std::string> o, const std::string& what) {
    try {
      load_recipe((src / "fmnist_hybrid.yaml").string(), o);
      ADD_FAILURE() << "accepted; expected: " << what;
    } catch (const hd::Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  fails_with({"train.epochs"}, "expected KEY=VALUE");
  fails_with({"teachers.5.checkpoint=x"}, "index 5 is out of range");
  fails_with({"teachers.nobody.checkpoint=x"}, "no list element named 'nobody'");
  auto bad = teachers;
  bad.push_back("train.epoch=3");  // a typo is an unknown key, named
  fails_with(bad, "'train.epoch': unknown key");
  bad = teachers;
  bad.push_back("name.sub=1");
  fails_with(bad, "below a plain value");
}
