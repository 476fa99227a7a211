// libFuzzer harness: distillation recipes (YAML) and --set overrides.
// Input: the recipe text, optionally followed by a line "#--set" and one KEY=VALUE override per
// line. Teacher checkpoints named t.safetensors and u.safetensors exist next to the recipe (a
// tiny model's config in the metadata), so that mutations get past the checkpoint checks.
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "distill/recipe.h"
#include "fuzz/fuzz_util.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/config.h"

namespace {
void make_teachers() {
  static bool done = false;
  if (done) return;
  done = true;
  const auto& dir = hd::fuzz::scratch_dir();
  hd::io::save_safetensors(dir + "/t.safetensors", {},
                           {{hd::model::kConfigMetaKey, hd::model::preset("vit_mini_patch4_28").to_json()}});
  auto wide = hd::model::preset("vit_mini_patch4_28");
  wide.num_heads = 8;
  wide.depth = 3;
  hd::io::save_safetensors(dir + "/u.safetensors", {}, {{hd::model::kConfigMetaKey, wide.to_json()}});
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  make_teachers();
  std::string text(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> overrides;
  const std::string sep = "#--set\n";
  if (auto at = text.find(sep); at != std::string::npos) {
    std::istringstream rest(text.substr(at + sep.size()));
    for (std::string line; std::getline(rest, line);) overrides.push_back(line);
    text.resize(at);
  }
  hd::fuzz::expect_only_hd_errors("recipe", [&] {
    auto r = hd::distill::parse_recipe(text, "fuzz.yaml", hd::fuzz::scratch_dir(), overrides);
    // The effective recipe written into a run folder must read back to the same recipe.
    const std::string y = r.to_yaml();
    auto again = hd::distill::parse_recipe(y, "effective.yaml", hd::fuzz::scratch_dir());
    if (again.to_yaml() != y) {
      std::fprintf(stderr, "effective recipe does not round-trip:\n%s\n---\n%s\n", y.c_str(), again.to_yaml().c_str());
      std::abort();
    }
  });
  return 0;
}
