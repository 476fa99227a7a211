// Every shipped recipe parses and validates (teacher files replaced by empty stand-ins: with an
// `arch` given, validation needs only the architecture, not the weights).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "distill/recipe.h"
#include "util/common.h"

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
