// Model checkpoints: round trips, self-description, mismatch errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "util/error.h"

using namespace hd;
using namespace hd::model;
namespace fs = std::filesystem;

namespace {
ViTConfig small() {
  auto c = preset("vit_mini_patch4_28");
  c.depth = 2;
  return c;
}
std::string tmp(const std::string& name) {
  auto d = fs::temp_directory_path() / "hd_test_checkpoint";
  fs::create_directories(d);
  return (d / name).string();
}
}  // namespace

TEST(Checkpoint, RoundTripIsSelfDescribing) {
  torch::manual_seed(0);
  VisionTransformer m(small());
  {
    torch::NoGradGuard g;
    m->head->weight.normal_();
  }
  auto path = tmp("rt.safetensors");
  save_model(path, m, {{"note", "hello"}});
  auto file = io::SafeTensorsFile::open(path);
  EXPECT_EQ(file.metadata().at("note"), "hello");
  EXPECT_EQ(file.metadata().at("format"), "pt");
  auto back = load_model(path);  // no --arch needed: config is in the metadata
  EXPECT_EQ(back->config().to_json(), m->config().to_json());
  auto x = torch::randn({2, 1, 28, 28});
  m->eval();
  back->eval();
  EXPECT_TRUE(torch::equal(m->forward(x), back->forward(x)));
}

TEST(Checkpoint, HalfPrecisionSaves) {
  torch::manual_seed(1);
  VisionTransformer m(small());
  for (auto dt : {torch::kHalf, torch::kBFloat16}) {
    auto path = tmp("half.safetensors");
    save_model(path, m, {}, dt);
    auto file = io::SafeTensorsFile::open(path);
    EXPECT_EQ(file.info("pos_embed").dtype, dt == torch::kHalf ? "F16" : "BF16");
    auto back = load_model(path);
    auto a = m->pos_embed.detach(), b = back->pos_embed.detach();
    EXPECT_LE((a - b).abs().max().item<double>(), dt == torch::kHalf ? 1e-4 : 1e-3);
  }
}

TEST(Checkpoint, ShapeMismatchNamesTensorAndShapes) {
  VisionTransformer m(small());
  auto path = tmp("mismatch.safetensors");
  save_model(path, m);
  auto other = small();
  other.embed_dim = 64;
  other.name = "other";
  VisionTransformer o(other);
  auto tensors = io::SafeTensorsFile::open(path).load_all();
  try {
    load_state(*o, tensors, true, path);
    FAIL() << "mismatch accepted";
  } catch (const hd::Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find("cls_token"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[1, 1, 128]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[1, 1, 64]"), std::string::npos) << msg;
  }
}

TEST(Checkpoint, MissingAndUnexpectedTensors) {
  VisionTransformer m(small());
  auto tensors = state_dict(*m);
  tensors.erase(tensors.begin());                                // drop cls_token
  tensors.emplace_back("decoder.weight", torch::zeros({3}));  // an extra key
  EXPECT_THROW(load_state(*m, tensors, true, "f"), hd::Error);
  auto r = load_state(*m, tensors, false, "f");
  ASSERT_EQ(r.missing.size(), 1u);
  EXPECT_EQ(r.missing[0], "cls_token");
  ASSERT_EQ(r.unexpected.size(), 1u);
  EXPECT_EQ(r.unexpected[0], "decoder.weight");
}

TEST(Checkpoint, NoConfigNeedsArch) {
  VisionTransformer m(preset("vit_mini_patch4_28"));
  auto path = tmp("bare.safetensors");
  io::save_safetensors(path, state_dict(*m));
  EXPECT_THROW(load_model(path), hd::Error);
  auto back = load_model(path, "vit_mini_patch4_28");
  EXPECT_EQ(back->config().name, "vit_mini_patch4_28");
}
