// `export`: a model as timm's Hugging Face hub layout, from this project's checkpoints and from
// published ones (torchvision names under a prefix).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "app/cli_util.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"

namespace fs = std::filesystem;
using namespace hd;
using namespace hd::testing;

namespace {
std::string scratch(const std::string& name) { return hd::testing::scratch("export", name); }
}  // namespace

TEST(CliExport, WritesTimmHubLayout) {
  auto dir = scratch("WritesTimmHubLayout");
  auto ckpt = dir + "/m.safetensors";
  ASSERT_EQ(run("init --arch vit_mini_patch7_28 --seed 1 --out " + ckpt).code, 0);
  auto r = run("export -c " + ckpt + " -o " + dir + "/hub");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "config.json")) << r.out;
  auto j = read_json(dir + "/hub/config.json");
  EXPECT_EQ(j["architecture"], "vit_base_patch16_224");
  EXPECT_EQ(j["num_classes"], 10);
  EXPECT_EQ(j["model_args"]["patch_size"], 7);
  EXPECT_EQ(j["model_args"]["in_chans"], 1);
  EXPECT_EQ(j["pretrained_cfg"]["input_size"].get<std::vector<int64_t>>(), (std::vector<int64_t>{1, 28, 28}));
  auto a = model::load_model(ckpt), b = model::load_model(dir + "/hub/model.safetensors");
  a->eval();
  b->eval();
  auto x = torch::randn({2, 1, 28, 28});
  EXPECT_TRUE(torch::equal(a->forward(x), b->forward(x)));
}

TEST(CliExport, PublishedNamesAndErrors) {
  auto dir = scratch("PublishedNamesAndErrors");
  // torchvision names under `module.`, no metadata: needs --arch.
  model::VisionTransformer m(model::preset("vit_mini_patch7_28"));
  model::NamedTensors tv;
  for (auto& [k, v] : model::state_dict(*m)) {
    std::string n = k;
    auto rep = [&](const std::string& from, const std::string& to) {
      auto p = n.find(from);
      if (p != std::string::npos) n.replace(p, from.size(), to);
    };
    if (n.rfind("blocks.", 0) == 0) {
      rep("blocks.", "encoder.layers.encoder_layer_");
      rep("norm1", "ln_1");
      rep("norm2", "ln_2");
      rep("attn.qkv.weight", "self_attention.in_proj_weight");
      rep("attn.qkv.bias", "self_attention.in_proj_bias");
      rep("attn.proj", "self_attention.out_proj");
      rep("mlp.fc1", "mlp.0");
      rep("mlp.fc2", "mlp.3");
    } else if (n == "cls_token") {
      n = "class_token";
    } else if (n == "pos_embed") {
      n = "encoder.pos_embedding";
    } else {
      rep("patch_embed.proj", "conv_proj");
      rep("norm.", "encoder.ln.");
      rep("head.", "heads.head.");
    }
    tv.emplace_back("module." + n, v.detach());
  }
  io::save_safetensors(dir + "/tv.safetensors", tv);
  auto r = run("export -c " + dir + "/tv.safetensors -o " + dir + "/hub");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(contains(r.out, "--arch")) << r.out;
  r = run("export -c " + dir + "/tv.safetensors --arch vit_mini_patch7_28 -o " + dir + "/hub");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "torchvision")) << r.out;
  EXPECT_TRUE(contains(r.out, "'module.'")) << r.out;
  auto f = io::SafeTensorsFile::open(dir + "/hub/model.safetensors");
  EXPECT_TRUE(f.contains("blocks.5.attn.qkv.weight"));
  EXPECT_TRUE(torch::equal(f.load("pos_embed"), m->pos_embed.detach()));
}
