// Every shipped recipe parses and validates (teacher files replaced by empty stand-ins: with an
// `arch` given, validation needs only the architecture, not the weights).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "distill/recipe.h"
#include "model/checkpoint.h"
#include "util/error.h"

using namespace hd::distill;
namespace fs = std::filesystem;

TEST(Configs, PaperAndAblationRecipesValidate) {
  const fs::path src = fs::path(HD_TEST_DATA_DIR).parent_path().parent_path() / "configs";
  auto tmp = fs::temp_directory_path() / "hd_test_configs";
  fs::remove_all(tmp);
  fs::create_directories(tmp / "paper");
  fs::create_directories(tmp / "ablations");
  for (const char* f : {"vit_base_patch16_224.mae.safetensors", "vit_base_patch16_clip_224.openai.safetensors",
                        "deit_base_patch16_224.fb_in1k.safetensors"}) {
    std::ofstream(tmp / "paper" / f).put('x');
    std::ofstream(tmp / f).put('x');
  }
  int n = 0;
  for (const char* sub : {"paper", "ablations"}) {
    for (const auto& e : fs::directory_iterator(src / sub)) {
      if (e.path().extension() != ".yaml") continue;
      std::ifstream in(e.path());
      std::stringstream ss;
      ss << in.rdbuf();
      // Resolve teacher paths against the stand-ins (ablations live one folder down).
      auto base = (tmp / sub).string();
      try {
        auto r = parse_recipe(ss.str(), e.path().string(), base);
        EXPECT_EQ(r.student.name, "vit_base_patch16_224") << e.path();
        EXPECT_FALSE(r.teachers.empty());
        ++n;
      } catch (const hd::Error& err) {
        ADD_FAILURE() << err.what();
      }
    }
  }
  EXPECT_GE(n, 35);
}

TEST(Configs, FashionMnistRecipesAndOverrides) {
  const fs::path src = fs::path(HD_TEST_DATA_DIR).parent_path().parent_path() / "configs";
  auto tmp = fs::temp_directory_path() / "hd_test_configs_fmnist";
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  // Teachers of the pipeline's architecture, as `pretrain-mae` / `train` write them.
  for (const char* name : {"mae", "sup"}) {
    auto c = hd::model::preset("vit_mini_patch7_28");
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
  EXPECT_EQ(r.student.name, "vit_mini_patch7_28");
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
