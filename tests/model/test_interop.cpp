// Published checkpoints: key prefixes, wrapper dicts, OpenAI CLIP / torchvision names, .pth
// files, positional-embedding resampling, classifier handling, error messages, timm export.
// The Python side (tests/interop/reference.py) runs Debian's python3 with torch; tests that
// need it are skipped when it is missing.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <torch/torch.h>

#include <cstdlib>
#include <functional>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/interop.h"
#include "model/timm_hub.h"
#include "test_util.h"
#include "util/error.h"

#ifndef HD_SOURCE_DIR
#define HD_SOURCE_DIR HD_TEST_DATA_DIR "/../.."
#endif

using namespace hd;
using namespace hd::model;
namespace fs = std::filesystem;

namespace interop_test {

std::string tmp_dir(const std::string& name) {
  auto d = fs::temp_directory_path() / "hd_test_interop" / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

bool python_available() {
  static const bool ok =
      fs::exists("/usr/bin/python3") &&
      std::system("/usr/bin/python3 -c 'import torch, torchvision' >/dev/null 2>&1") == 0;
  return ok;
}

// Runs tests/interop/reference.py ARGS; returns the exit status (77: a package is missing). The
// script's output goes to LOG, shown on failure.
int reference(const std::string& args, const std::string& log) {
  std::string cmd = "OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 " + std::string(HD_SOURCE_DIR) +
                    "/tests/interop/reference.py " + args + " >" + log + " 2>&1";
  int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

#define RUN_REFERENCE(args, log)                                              \
  do {                                                                        \
    int rc_ = reference(args, log);                                           \
    if (rc_ == 77) GTEST_SKIP() << "python3 lacks a package (see " << log << ")"; \
    ASSERT_EQ(rc_, 0) << slurp(log);                                          \
  } while (0)

using hd::testing::error_of;

bool has(const std::string& s, const std::string& what) { return s.find(what) != std::string::npos; }

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream o;
  o << f.rdbuf();
  return o.str();
}

// Non-trivial values everywhere (norm scales and every bias too), so that every tensor matters.
void randomize(VisionTransformer& m, uint64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard g;
  for (auto& p : m->named_parameters()) {
    const auto& k = p.key();
    auto t = p.value();
    const bool norm_weight = has(k, "norm") && k.size() > 7 && k.compare(k.size() - 7, 7, ".weight") == 0;
    if (norm_weight) t.copy_(1.0 + 0.1 * torch::randn_like(t));
    else if (t.dim() == 1) t.copy_(0.05 * torch::randn_like(t));
    else if (k == "cls_token" || k == "pos_embed") t.copy_(0.1 * torch::randn_like(t));
    else if (k == "head.weight") t.normal_(0.0, 0.02);
  }
}

ViTConfig small() {
  auto c = preset("vit_mini_patch4_28");
  c.depth = 2;
  return c;
}

// A small CLIP-style image tower (the OpenAI details at a test size).
ViTConfig small_clip() {
  auto c = preset("vit_base_patch16_clip_224.openai");
  c.name = "clip_test";
  c.img_size = 32;
  c.patch_size = 8;
  c.embed_dim = 64;
  c.depth = 2;
  c.num_heads = 4;
  c.num_classes = 24;
  return c;
}

NamedTensors clone_all(const NamedTensors& t) {
  NamedTensors out;
  for (const auto& [k, v] : t) out.emplace_back(k, v.detach().clone());
  return out;
}

const torch::Tensor& get(const NamedTensors& t, const std::string& name) {
  for (const auto& [k, v] : t)
    if (k == name) return v;
  throw std::runtime_error("no tensor " + name);
}

double max_diff(const torch::Tensor& a, const torch::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  if (a.sizes() != b.sizes()) return 1e30;
  return (a - b).abs().max().item<double>();
}

}  // namespace interop_test

using namespace interop_test;

// ---------------------------------------------------------------------------------------------
TEST(InteropKeys, PrefixesAreStrippedAndOtherTowersIgnored) {
  VisionTransformer m(small());
  auto sd = clone_all(state_dict(*m));
  NamedTensors wrapped;
  for (const auto& [k, v] : sd) wrapped.emplace_back("module.backbone." + k, v);
  wrapped.emplace_back("module.head_dino.mlp.0.weight", torch::zeros({3, 3}));
  auto c = to_timm_layout(wrapped, "f");
  EXPECT_EQ(c.layout, "timm");
  ASSERT_EQ(c.tensors.size(), sd.size());
  for (size_t i = 0; i < sd.size(); ++i) EXPECT_EQ(c.tensors[i].first, sd[i].first);
  ASSERT_EQ(c.ignored.size(), 1u);
  EXPECT_EQ(c.ignored[0], "head_dino.mlp.0.weight");
  ASSERT_GE(c.notes.size(), 2u);
  EXPECT_TRUE(has(c.notes[0], "'module.'")) << c.notes[0];
  EXPECT_TRUE(has(c.notes[1], "'backbone.'")) << c.notes[1];

  // Keys that merely start like a prefix stay: "model.*" without a patch embedding is not a ViT.
  NamedTensors odd = sd;
  odd.emplace_back("model.ema_decay", torch::zeros({1}));
  auto o = to_timm_layout(odd, "f");
  EXPECT_EQ(o.tensors.size(), odd.size());
  EXPECT_TRUE(o.ignored.empty());
}

TEST(InteropKeys, MaeDecoderAndMaskTokenAreIgnored) {
  VisionTransformer m(preset("vit_mini_patch4_28"));
  auto sd = clone_all(state_dict(*m));
  sd.emplace_back("mask_token", torch::zeros({1, 1, 128}));
  sd.emplace_back("decoder_embed.weight", torch::zeros({64, 128}));
  sd.emplace_back("decoder_blocks.0.norm1.weight", torch::zeros({64}));
  auto path = tmp_dir("mae") + "/mae_pretrain.safetensors";
  io::save_safetensors(path, sd);
  LoadReport r;
  auto back = load_model(path, "vit_mini_patch4_28", /*strict=*/false, &r);
  EXPECT_EQ(r.ignored.size(), 3u);
  EXPECT_TRUE(r.unexpected.empty());
}

TEST(InteropKeys, OpenAIClipNamesInProjAndProjTranspose) {
  auto cfg = small_clip();
  VisionTransformer m(cfg);
  randomize(m, 3);
  const int64_t D = cfg.embed_dim;
  // OpenAI's names and layouts, written here by hand.
  NamedTensors openai;
  for (const auto& [k, v] : state_dict(*m)) {
    std::string n = k;
    torch::Tensor t = v.detach().clone();
    if (k == "cls_token") n = "class_embedding", t = t.reshape({D});
    else if (k == "pos_embed") n = "positional_embedding", t = t[0];
    else if (k == "patch_embed.proj.weight") n = "conv1.weight";
    else if (k.rfind("norm_pre.", 0) == 0) n = "ln_pre." + k.substr(9);
    else if (k.rfind("norm.", 0) == 0) n = "ln_post." + k.substr(5);
    else if (k == "head.weight") n = "proj", t = t.t().contiguous();
    else if (k.rfind("blocks.", 0) == 0) {
      auto dot = k.find('.', 7);
      std::string i = k.substr(7, dot - 7), rest = k.substr(dot + 1);
      const std::map<std::string, std::string> sub = {
          {"norm1.weight", "ln_1.weight"}, {"norm1.bias", "ln_1.bias"}, {"norm2.weight", "ln_2.weight"},
          {"norm2.bias", "ln_2.bias"}, {"attn.qkv.weight", "attn.in_proj_weight"},
          {"attn.qkv.bias", "attn.in_proj_bias"}, {"attn.proj.weight", "attn.out_proj.weight"},
          {"attn.proj.bias", "attn.out_proj.bias"}, {"mlp.fc1.weight", "mlp.c_fc.weight"},
          {"mlp.fc1.bias", "mlp.c_fc.bias"}, {"mlp.fc2.weight", "mlp.c_proj.weight"},
          {"mlp.fc2.bias", "mlp.c_proj.bias"}};
      n = "transformer.resblocks." + i + "." + sub.at(rest);
    }
    openai.emplace_back("visual." + n, t);
  }
  EXPECT_EQ(get(openai, "visual.proj").sizes(), (std::vector<int64_t>{D, 24}));
  // The text tower of a whole CLIP state dict reuses some names; it must be left out.
  openai.emplace_back("positional_embedding", torch::zeros({77, 32}));
  openai.emplace_back("transformer.resblocks.0.attn.in_proj_weight", torch::zeros({96, 32}));
  openai.emplace_back("logit_scale", torch::zeros({}));

  auto c = to_timm_layout(openai, "clip.pt");
  EXPECT_EQ(c.layout, "openai_clip");
  EXPECT_EQ(c.ignored.size(), 3u);
  auto want = state_dict(*m);
  ASSERT_EQ(c.tensors.size(), want.size());
  for (const auto& [k, v] : want) EXPECT_TRUE(torch::equal(get(c.tensors, k), v)) << k;
  EXPECT_EQ(get(c.tensors, "head.weight").sizes(), (std::vector<int64_t>{24, D}));
  EXPECT_EQ(get(c.tensors, "blocks.1.attn.qkv.weight").sizes(), (std::vector<int64_t>{3 * D, D}));

  // Through a file and load_model: the same model, the same outputs.
  auto path = tmp_dir("clip_names") + "/clip.safetensors";
  io::save_safetensors(path, openai, {{kConfigMetaKey, cfg.to_json()}});
  LoadReport r;
  auto back = load_model(path, "", /*strict=*/true, &r);
  EXPECT_FALSE(back->config().head_bias);
  m->eval();
  back->eval();
  auto x = torch::randn({2, 3, 32, 32});
  EXPECT_TRUE(torch::equal(back->forward(x), m->forward(x)));

  // A malformed projection is named with its shape.
  NamedTensors bad = openai;
  for (auto& [k, v] : bad)
    if (k == "visual.proj") v = torch::zeros({D});
  auto msg = error_of([&] { to_timm_layout(bad, "bad.pt"); });
  EXPECT_TRUE(has(msg, "bad.pt") && has(msg, "'proj'") && has(msg, "[64]")) << msg;
}

TEST(InteropKeys, ConflictsAndUnreadableLayoutsAreErrors) {
  NamedTensors t = {{"conv_proj.weight", torch::zeros({4, 3, 2, 2})},
                    {"class_token", torch::zeros({1, 1, 4})},
                    {"cls_token", torch::zeros({1, 1, 4})}};
  auto msg = error_of([&] { to_timm_layout(t, "tv.pth"); });
  EXPECT_TRUE(has(msg, "tv.pth") && has(msg, "'class_token'") && has(msg, "'cls_token'")) << msg;
  NamedTensors hf = {{"vit.embeddings.patch_embeddings.projection.weight", torch::zeros({4, 3, 2, 2})}};
  msg = error_of([&] { to_timm_layout(hf, "hf.safetensors"); });
  EXPECT_TRUE(has(msg, "hf.safetensors") && has(msg, "transformers")) << msg;
}

TEST(InteropKeys, MismatchedTensorIsNamedWithShapes) {
  VisionTransformer m(preset("vit_mini_patch4_28"));
  auto sd = clone_all(state_dict(*m));
  for (auto& [k, v] : sd)
    if (k == "blocks.1.attn.qkv.weight") v = torch::zeros({384, 64});
  auto path = tmp_dir("mismatch") + "/m.safetensors";
  io::save_safetensors(path, sd);
  auto msg = error_of([&] { load_model(path, "vit_mini_patch4_28"); });
  EXPECT_TRUE(has(msg, path) && has(msg, "blocks.1.attn.qkv.weight") && has(msg, "[384, 64]") &&
              has(msg, "[384, 128]"))
      << msg;
  // A file that is neither safetensors nor a readable torch.save archive names the file.
  auto junk = tmp_dir("mismatch") + "/junk.pth";
  std::ofstream(junk, std::ios::binary) << "PK\x03\x04 this is not a zip archive";
  msg = error_of([&] { load_model(junk, "vit_mini_patch4_28"); });
  EXPECT_TRUE(has(msg, junk)) << msg;
}

// ---------------------------------------------------------------------------------------------
TEST(InteropPosEmbed, SameGridIsExact) {
  auto pos = torch::randn({1, 1 + 49, 16});
  EXPECT_TRUE(torch::equal(resample_pos_embed(pos, 7, 7, 1), pos));
  auto up = resample_pos_embed(pos, 9, 9, 1);
  EXPECT_EQ(up.sizes(), (std::vector<int64_t>{1, 82, 16}));
  EXPECT_TRUE(torch::equal(up.slice(1, 0, 1), pos.slice(1, 0, 1)));  // the class token is kept
  EXPECT_THROW(resample_pos_embed(torch::randn({1, 1 + 48, 16}), 7, 7, 1), hd::Error);
}

TEST(InteropPosEmbed, MatchesTorchInterpolate) {
  if (!python_available()) GTEST_SKIP() << "no /usr/bin/python3 with torch";
  auto dir = tmp_dir("resample");
  torch::manual_seed(5);
  struct Case {
    int64_t grid, h, w, prefix;
    bool antialias;
  };
  const std::vector<Case> cases = {Case{2, 4, 4, 1, false}, Case{2, 4, 4, 1, true}, Case{14, 16, 16, 1, true},
                                   Case{6, 4, 4, 1, true},   Case{6, 4, 4, 0, false}, Case{3, 5, 5, 2, false}};
  NamedTensors inputs;
  std::string spec;
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& cs = cases[i];
    inputs.emplace_back("pos." + std::to_string(i), torch::randn({1, cs.prefix + cs.grid * cs.grid, 8}));
    spec += (i ? " " : "") + std::to_string(cs.h) + "," + std::to_string(cs.w) + "," + std::to_string(cs.prefix) +
            "," + std::to_string(cs.antialias ? 1 : 0);
  }
  io::save_safetensors(dir + "/in.safetensors", inputs);
  RUN_REFERENCE("resample --input " + dir + "/in.safetensors --out " + dir + "/out.safetensors --cases " + spec,
                dir + "/log.txt");
  auto out = io::SafeTensorsFile::open(dir + "/out.safetensors");
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& cs = cases[i];
    auto got = resample_pos_embed(inputs[i].second, cs.h, cs.w, cs.prefix, cs.antialias);
    EXPECT_LE(max_diff(got, out.load("out." + std::to_string(i))), 1e-6)
        << cs.grid << "->" << cs.h << " prefix " << cs.prefix << " antialias " << cs.antialias;
  }
}

TEST(InteropPosEmbed, LoadResamplesToTheModelGrid) {
  torch::manual_seed(2);
  auto cfg = small();  // 28 px, patch 4: 7x7 grid
  VisionTransformer m(cfg);
  auto big = cfg;
  big.img_size = 36;  // 9x9 grid
  auto path = tmp_dir("pos") + "/m.safetensors";
  io::save_safetensors(path, state_dict(*m), {{kConfigMetaKey, big.to_json()}});
  LoadReport r;
  auto back = load_model(path, "", true, &r);
  EXPECT_EQ(back->pos_embed.sizes(), (std::vector<int64_t>{1, 82, 128}));
  EXPECT_TRUE(torch::allclose(back->pos_embed, resample_pos_embed(m->pos_embed.detach(), 9, 9, 1)));
  bool noted = false;
  for (const auto& n : r.notes) noted |= has(n, "7x7") && has(n, "9x9");
  EXPECT_TRUE(noted);
}

TEST(InteropHead, ClassifierFollowsTheFile) {
  VisionTransformer m(preset("vit_mini_patch4_28"));
  auto sd = clone_all(state_dict(*m));
  NamedTensors headless;
  for (const auto& [k, v] : sd)
    if (k.rfind("head.", 0) != 0) headless.emplace_back(k, v);
  auto dir = tmp_dir("head");
  io::save_safetensors(dir + "/a.safetensors", headless);
  LoadReport r;
  auto a = load_model(dir + "/a.safetensors", "vit_mini_patch4_28", true, &r);
  EXPECT_FALSE(a->head);
  EXPECT_EQ(a->config().num_classes, 0);
  EXPECT_FALSE(r.notes.empty());
  auto seven = headless;
  seven.emplace_back("head.weight", torch::randn({7, 128}));
  io::save_safetensors(dir + "/b.safetensors", seven);
  auto b = load_model(dir + "/b.safetensors", "vit_mini_patch4_28");
  EXPECT_EQ(b->config().num_classes, 7);
  EXPECT_FALSE(b->config().head_bias);
}

// ---------------------------------------------------------------------------------------------
TEST(InteropPth, PlainDictsWrappersPrefixesAndTorchvisionNames) {
  if (!python_available()) GTEST_SKIP() << "no /usr/bin/python3 with torch";
  auto dir = tmp_dir("pth");
  VisionTransformer m(preset("vit_mini_patch4_28"));
  randomize(m, 11);
  m->eval();
  save_model(dir + "/w.safetensors", m);
  auto x = torch::randn({2, 1, 28, 28});
  auto want = m->forward(x);
  struct Case {
    std::string args, note;
  };
  for (const Case& cs : {Case{"", ""}, Case{"--wrap model --prefix module.", "'model' entry"},
                         Case{"--wrap state_dict", "'state_dict' entry"}, Case{"--layout torchvision", "torchvision"}}) {
    RUN_REFERENCE("save --weights " + dir + "/w.safetensors --out " + dir + "/w.pth " + cs.args, dir + "/log.txt");
    LoadReport r;
    auto back = load_model(dir + "/w.pth", "vit_mini_patch4_28", true, &r);
    back->eval();
    EXPECT_TRUE(torch::equal(back->forward(x), want)) << cs.args;
    std::string notes;
    for (const auto& n : r.notes) notes += n + "; ";
    EXPECT_TRUE(has(notes, cs.note)) << cs.args << ": " << notes;
  }
}

// What torch.save(model.state_dict()) writes, bare or wrapped as MAE's and DeiT's files are
// ({"model": OrderedDict, "epoch": ...}), loads as a plain dict does.
TEST(InteropPth, OrderedDictsLoad) {
  if (!python_available()) GTEST_SKIP() << "no /usr/bin/python3 with torch";
  auto dir = tmp_dir("pth_ordered");
  VisionTransformer m(preset("vit_mini_patch4_28"));
  randomize(m, 5);
  m->eval();
  save_model(dir + "/w.safetensors", m);
  auto x = torch::randn({2, 1, 28, 28});
  for (const std::string wrap : {"", "model"}) {
    const auto pth = dir + "/o" + wrap + ".pth";
    RUN_REFERENCE("save --weights " + dir + "/w.safetensors --out " + pth + " --ordered" +
                      (wrap.empty() ? "" : " --wrap " + wrap),
                  dir + "/log.txt");
    LoadReport r;
    auto back = load_model(pth, "vit_mini_patch4_28", true, &r);
    back->eval();
    EXPECT_TRUE(torch::equal(back->forward(x), m->forward(x))) << wrap;
    if (!wrap.empty()) {
      ASSERT_FALSE(r.notes.empty());
      EXPECT_TRUE(has(r.notes[0], "using the 'model' entry of the file (other entries not read: epoch)")) << r.notes[0];
    }
  }
}

// OpenAI's CLIP .pt files are TorchScript archives (torch.jit.save of a traced model): their
// parameters are read from the module objects, named as the Python model's state dict, and
// go through the OpenAI CLIP key layout like a .pth of the same weights.
TEST(InteropPth, TorchScriptClipArchive) {
  if (!python_available()) GTEST_SKIP() << "no /usr/bin/python3 with torch";
  auto dir = tmp_dir("torchscript");
  const std::string cmd = "OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 " + std::string(HD_SOURCE_DIR) +
                          "/tests/io/torch_files.py " + dir + " >" + dir + "/log.txt 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << slurp(dir + "/log.txt");
  const std::string pt = dir + "/clip_script.pt";
  auto file = read_checkpoint_file(pt);
  EXPECT_EQ(file.format, "torchscript");
  ASSERT_FALSE(file.notes.empty());
  EXPECT_TRUE(has(file.notes[0], "TorchScript module")) << file.notes[0];
  auto conv = to_timm_layout(std::move(file.tensors), pt);
  EXPECT_EQ(conv.layout, "openai_clip");
  EXPECT_EQ(conv.ignored.size(), 3u);  // token_embedding.weight, positional_embedding, logit_scale
  // The same weights written by Python as safetensors convert to the same tensors.
  auto same = to_timm_layout(io::SafeTensorsFile::open(dir + "/clip_script.safetensors").load_all(), pt);
  ASSERT_EQ(conv.tensors.size(), same.tensors.size());
  for (size_t i = 0; i < conv.tensors.size(); ++i) {
    EXPECT_EQ(conv.tensors[i].first, same.tensors[i].first);
    EXPECT_TRUE(torch::equal(conv.tensors[i].second, same.tensors[i].second)) << conv.tensors[i].first;
  }
  // ... and fill a CLIP-style ViT of that size exactly.
  auto cfg = small_clip();
  cfg.img_size = 8;
  cfg.patch_size = 4;
  cfg.embed_dim = 16;
  cfg.num_heads = 2;
  cfg.num_classes = 8;
  cfg.head_bias = false;
  fit_to_config(conv, cfg, pt);
  VisionTransformer back(cfg);
  auto rep = load_state(*back, conv.tensors, /*strict=*/true, pt);
  EXPECT_TRUE(rep.missing.empty() && rep.unexpected.empty());
}

// The fuzz corpus of the checkpoint reader (torch.save files of every shape published
// checkpoints come in, and inputs that crashed LibTorch's zip reader and unpickler, which read
// these files before the project's own reader did): each one loads or gives an hd::Error naming
// the file, never a crash.
TEST(InteropPth, FuzzCorpusAndDamagedArchivesGiveHdErrors) {
  const fs::path corpus = fs::path(HD_TEST_DATA_DIR) / ".." / ".." / "fuzz" / "corpus" / "checkpoint";
  ASSERT_TRUE(fs::is_directory(corpus)) << corpus;
  int n = 0, loaded = 0;
  for (const auto& e : fs::directory_iterator(corpus)) {
    const std::string path = e.path().string();
    try {
      auto f = read_checkpoint_file(path);
      EXPECT_FALSE(f.tensors.empty()) << path;
      ++loaded;
    } catch (const hd::Error& err) {
      EXPECT_EQ(std::string(err.what()).rfind(path + ": ", 0), 0u) << err.what();
    }
    ++n;
  }
  EXPECT_GE(n, 10);
  EXPECT_GE(loaded, 8);  // plain, wrapped, nested, prefixed, ordered, legacy, CLIP, bf16/fp16

  // Damaged copies of a good archive.
  auto good = read_file(corpus / "plain.pth");
  auto dir = tmp_dir("pth_damaged");
  auto expect_error = [&](const std::string& name, const std::string& bytes, const std::string& what) {
    const std::string path = dir + "/" + name;
    std::ofstream(path, std::ios::binary) << bytes;
    try {
      read_checkpoint_file(path);
      ADD_FAILURE() << name << " was accepted";
    } catch (const hd::Error& err) {
      EXPECT_TRUE(has(err.what(), path + ": not a valid torch.save zip archive: ") && has(err.what(), what)) << err.what();
    }
  };
  expect_error("half.pth", good.substr(0, good.size() / 2), "no end-of-central-directory record");
  std::string compressed = good;
  const auto cd = compressed.find(std::string("PK\x01\x02", 4));
  ASSERT_NE(cd, std::string::npos);
  compressed[cd + 10] = 8;  // deflate
  expect_error("compressed.pth", compressed, "is compressed");
  std::string long_name = good;
  long_name[cd + 28] = '\xff';  // file name length 0x..ff: past the central directory
  long_name[cd + 29] = '\xff';
  expect_error("long_name.pth", long_name, "overruns the directory");
}

// ---------------------------------------------------------------------------------------------
// Full-size configurations with random weights against independent Python implementations.
namespace interop_test {

void parity(const std::string& arch, const std::string& impl, int depth_override = 0) {
  auto cfg = preset(arch);
  if (depth_override > 0) cfg.depth = depth_override;
  auto dir = tmp_dir("parity_" + arch);
  torch::manual_seed(42);
  VisionTransformer m(cfg);
  randomize(m, 42);
  m->eval();
  save_model(dir + "/w.safetensors", m);
  torch::manual_seed(7);
  auto x = torch::randn({2, cfg.in_chans, cfg.img_size, cfg.img_size});
  io::save_safetensors(dir + "/x.safetensors", {{"images", x}});
  const bool pth = impl == "openai_clip";
  std::string args = "forward --impl " + impl + " --config '" + cfg.to_json() + "' --weights " + dir +
                     "/w.safetensors --images " + dir + "/x.safetensors --out " + dir + "/o.safetensors" +
                     (pth ? " --pth " + dir + "/clip_openai.pth" : "");
  RUN_REFERENCE(args, dir + "/log.txt");
  fs::remove(dir + "/w.safetensors");
  auto out = io::SafeTensorsFile::open(dir + "/o.safetensors");
  torch::NoGradGuard ng;
  auto feats = m->forward_features(x);
  double df = max_diff(feats, out.load("features"));
  EXPECT_LE(df, 1e-4) << arch << " features";
  std::string line = arch + (depth_override ? " (" + std::to_string(depth_override) + " blocks)" : "") +
                     " vs " + impl + ": features max abs diff " + std::to_string(df);
  if (cfg.num_classes > 0) {
    double dl = max_diff(m->forward_head(feats), out.load("logits"));
    EXPECT_LE(dl, 1e-4) << arch << " logits";
    line += ", logits " + std::to_string(dl);
  }
  std::printf("[parity] %s\n", line.c_str());
  ::testing::Test::RecordProperty("max_abs_diff", line);
  if (pth) {
    // The reference's own state dict (OpenAI names under visual., text tower beside it) loads
    // through the .pth reader and the CLIP key conversion into the same model.
    const auto pth_path = dir + "/clip_openai.pth";
    auto want = m->forward_head(feats);
    VisionTransformer back{nullptr};
    if (depth_override == 0) {
      LoadReport r;
      back = load_model(pth_path, arch, /*strict=*/true, &r);
      EXPECT_EQ(r.ignored.size(), 4u);
    } else {
      // Fewer blocks than the preset: the same steps as load_model, with this config.
      auto file = read_checkpoint_file(pth_path);
      EXPECT_EQ(file.format, "torch");
      auto conv = to_timm_layout(std::move(file.tensors), pth_path);
      EXPECT_EQ(conv.layout, "openai_clip");
      EXPECT_EQ(conv.ignored.size(), 4u);
      auto cfg2 = cfg;
      fit_to_config(conv, cfg2, pth_path);
      back = VisionTransformer(cfg2);
      load_state(*back, conv.tensors, /*strict=*/true, pth_path);
    }
    back->eval();
    EXPECT_TRUE(torch::equal(back->forward(x), want));
    fs::remove(pth_path);
  }
}

}  // namespace interop_test

TEST(InteropParity, MaeViTB16VsTorchvision) {
  if (!python_available()) GTEST_SKIP() << "no /usr/bin/python3 with torch and torchvision";
  parity("vit_base_patch16_224.mae", "torchvision");
}

TEST(InteropParity, DeiTB16VsTorchvision) {
  if (!python_available()) GTEST_SKIP() << "no /usr/bin/python3 with torch and torchvision";
  parity("deit_base_patch16_224.fb_in1k", "torchvision");
}

TEST(InteropParity, DinoViTB16VsTorchvision) {
  if (!python_available()) GTEST_SKIP() << "no /usr/bin/python3 with torch and torchvision";
  parity("vit_base_patch16_224.dino", "torchvision");
}

TEST(InteropParity, OpenAIClipViTB16VsOpenAIStyleReference) {
  if (!python_available()) GTEST_SKIP() << "no /usr/bin/python3 with torch and torchvision";
  parity("vit_base_patch16_clip_224.openai", "openai_clip");
}

TEST(InteropParity, OpenAIClipViTL14VsOpenAIStyleReference) {
  if (!python_available()) GTEST_SKIP() << "no /usr/bin/python3 with torch and torchvision";
  // Real widths, patch 14 and a 16x16 grid; 2 of the 24 blocks unless HD_PARITY_FULL=1.
  const bool full = std::getenv("HD_PARITY_FULL") != nullptr;
  parity("vit_large_patch14_clip_224.openai", "openai_clip", full ? 0 : 2);
}

// ---------------------------------------------------------------------------------------------
TEST(InteropExport, TimmHubLayoutRoundTrips) {
  auto dir = tmp_dir("export");
  for (const auto& cfg : {small(), small_clip()}) {
    VisionTransformer m(cfg);
    randomize(m, 9);
    auto paths = export_timm(m, dir + "/" + cfg.name);
    ASSERT_EQ(paths.size(), 2u);
    auto j = nlohmann::json::parse(slurp(paths[1]));
    const bool clip = cfg.act == Activation::QuickGELU;
    EXPECT_EQ(j["architecture"], clip ? "vit_base_patch16_clip_224" : "vit_base_patch16_224");
    EXPECT_EQ(j["num_classes"], cfg.num_classes);
    EXPECT_EQ(j["num_features"], cfg.embed_dim);
    EXPECT_EQ(j["model_args"]["act_layer"], clip ? "quick_gelu" : "gelu");
    EXPECT_EQ(j["model_args"]["pre_norm"], clip);
    EXPECT_EQ(j["model_args"]["patch_size"], cfg.patch_size);
    EXPECT_EQ(j["pretrained_cfg"]["input_size"].get<std::vector<int64_t>>(),
              (std::vector<int64_t>{cfg.in_chans, cfg.img_size, cfg.img_size}));
    EXPECT_EQ(j["pretrained_cfg"]["mean"].get<std::vector<double>>(), cfg.mean);
    auto file = io::SafeTensorsFile::open(paths[0]);
    EXPECT_EQ(file.metadata().at("format"), "pt");
    EXPECT_TRUE(file.contains("head.bias"));  // timm's head always has one (zeros for CLIP)
    if (clip) EXPECT_FALSE(file.load("head.bias").any().item<bool>());
    // Read back through config.json alone (as from the Hugging Face hub, no metadata).
    auto hub = config_from_timm_hub(slurp(paths[1]), paths[1]);
    EXPECT_EQ(hub.embed_dim, cfg.embed_dim);
    EXPECT_EQ(hub.depth, cfg.depth);
    EXPECT_EQ(hub.img_size, cfg.img_size);
    EXPECT_EQ(hub.in_chans, cfg.in_chans);
    EXPECT_EQ(hub.act, cfg.act);
    EXPECT_EQ(hub.norm_pre, cfg.norm_pre);
    EXPECT_EQ(hub.patch_bias, cfg.patch_bias);
    EXPECT_DOUBLE_EQ(hub.ln_eps, cfg.ln_eps);
    EXPECT_EQ(hub.mean, cfg.mean);
    auto bare = dir + "/" + cfg.name + "_bare";
    fs::create_directories(bare);
    io::save_safetensors(bare + "/model.safetensors", file.load_all());
    fs::copy_file(paths[1], bare + "/config.json");
    auto back = load_model(bare + "/model.safetensors");
    m->eval();
    back->eval();
    auto x = torch::randn({2, cfg.in_chans, cfg.img_size, cfg.img_size});
    EXPECT_TRUE(torch::allclose(back->forward(x), m->forward(x), 1e-6, 1e-6));
  }
  auto odd = small();
  odd.ln_eps = 1e-3;
  VisionTransformer o(odd);
  EXPECT_TRUE(has(error_of([&] { export_timm(o, dir + "/odd"); }), "eps"));
}

TEST(InteropPresets, TeacherFamiliesCarryTheirDetails) {
  auto mae_l = preset("vit_large_patch16_224.mae");
  EXPECT_EQ(mae_l.embed_dim, 1024);
  EXPECT_EQ(mae_l.depth, 24);
  EXPECT_EQ(mae_l.num_classes, 0);
  auto dino = preset("vit_base_patch16_224.dino");
  EXPECT_DOUBLE_EQ(dino.ln_eps, 1e-6);
  EXPECT_EQ(dino.num_classes, 0);
  EXPECT_EQ(dino.act, Activation::GELU);
  auto clip_l = preset("vit_large_patch14_clip_224.openai");
  EXPECT_EQ(clip_l.patch_size, 14);
  EXPECT_EQ(clip_l.grid_size(), 16);
  EXPECT_EQ(clip_l.num_classes, 768);
  EXPECT_TRUE(clip_l.norm_pre);
  EXPECT_FALSE(clip_l.patch_bias);
  EXPECT_EQ(clip_l.act, Activation::QuickGELU);
  EXPECT_DOUBLE_EQ(clip_l.ln_eps, 1e-5);
  EXPECT_DOUBLE_EQ(clip_l.mean[0], 0.48145466);
  auto deit = preset("deit_base_patch16_224.fb_in1k");
  EXPECT_EQ(deit.num_classes, 1000);
  deit.name = "deit_base_patch16_224";
  EXPECT_EQ(deit.to_json(), preset("deit_base_patch16_224").to_json());
}
