// End-to-end checks of the command-line tool: the binary is run as a user would run it.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "app/cli_util.h"
#include "data/image_codec.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"

namespace fs = std::filesystem;
using namespace hd;
using namespace hd::testing;

TEST(Cli, HelpShowsSubcommandsAndDefaults) {
  auto r = run("--help");
  EXPECT_EQ(r.code, 0);
  for (const char* sub : {"presets", "inspect", "init", "features", "bench"}) EXPECT_TRUE(contains(r.out, sub)) << sub;
  auto f = run("features --help");
  EXPECT_EQ(f.code, 0);
  EXPECT_TRUE(contains(f.out, "-l,--layers")) << f.out;
  EXPECT_TRUE(contains(f.out, "all")) << "default of --layers shown";
  EXPECT_NE(run("no-such-command").code, 0);
}

TEST(Cli, InitInspectFeaturesMatchLibraryForward) {
  auto dir = scratch("cli", "InitInspectFeaturesMatchLibraryForward");
  auto ckpt = dir + "/m.safetensors", in = dir + "/x.safetensors", out = dir + "/y.safetensors";
  auto r = run("init --arch vit_mini_patch4_28 --seed 3 --out " + ckpt);
  ASSERT_EQ(r.code, 0) << r.out;

  auto ins = run("inspect " + ckpt);
  EXPECT_EQ(ins.code, 0) << ins.out;
  EXPECT_TRUE(contains(ins.out, "blocks.5.attn.qkv.weight")) << ins.out;
  EXPECT_TRUE(contains(ins.out, "vit_mini_patch4_28")) << ins.out;

  torch::manual_seed(0);
  auto x = torch::randn({3, 1, 28, 28});
  io::save_safetensors(in, {{"images", x}});
  r = run("features -c " + ckpt + " -i " + in + " -o " + out + " --layers 0,-1 -b 2 -t 1");
  ASSERT_EQ(r.code, 0) << r.out;

  auto model = model::load_model(ckpt);
  model->eval();
  model::TapSpec spec;
  spec.block = spec.msa = spec.relation = spec.attn = {0, 5};
  torch::NoGradGuard ng;
  auto taps = model->forward_taps(x, spec);
  auto f = io::SafeTensorsFile::open(out);
  EXPECT_EQ(f.tensors().size(), 1u + 2 * 4);
  EXPECT_TRUE(torch::allclose(f.load("features"), taps.features, 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(f.load("block.5"), taps.block[5], 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(f.load("relation.0"), taps.relation[0], 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(f.load("attn.5"), taps.attn[5], 1e-5, 1e-5));
  EXPECT_EQ(f.load("attn.5").sizes(), (std::vector<int64_t>{3, 4, 50, 50}));
}

TEST(Cli, BadInputsGiveClearErrors) {
  auto dir = scratch("cli", "BadInputsGiveClearErrors");
  auto ckpt = dir + "/m2.safetensors", in = dir + "/wrong.safetensors";
  ASSERT_EQ(run("init --arch vit_mini_patch4_28 --out " + ckpt).code, 0);
  io::save_safetensors(in, {{"images", torch::randn({2, 3, 28, 28})}});
  auto r = run("features -c " + ckpt + " -i " + in + " -o " + dir + "/o.safetensors");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.out, in) && contains(r.out, "[2, 3, 28, 28]")) << r.out;

  {
    std::ofstream junk(dir + "/junk.safetensors", std::ios::binary);
    junk << "this is not a checkpoint at all";
  }
  r = run("inspect " + dir + "/junk.safetensors");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.out, "junk.safetensors")) << r.out;

  r = run("features -c " + ckpt + " -i " + dir + "/missing.safetensors -o " + dir + "/o.safetensors");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.out, "missing.safetensors")) << r.out;

  auto good = dir + "/good.safetensors";
  io::save_safetensors(good, {{"images", torch::randn({2, 1, 28, 28})}});
  r = run("features -c " + ckpt + " -i " + good + " -o " + dir + "/o.safetensors --layers 9");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.out, "--layers") && contains(r.out, "out of range")) << r.out;
  r = run("init --arch vit_nope --out " + dir + "/n.safetensors");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.out, "vit_nope")) << r.out;
}

TEST(Cli, DistillAndDumpStep) {
  if (!fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")) GTEST_SKIP() << "no Fashion-MNIST";
  auto dir = scratch("cli", "DistillAndDumpStep") + "/distill";
  fs::remove_all(dir);
  fs::create_directories(dir);
  // Two tiny random teachers stand in for trained ones.
  ASSERT_EQ(run("init --arch vit_mini_patch4_28 --num-classes 0 --seed 1 -o " + dir + "/mim.safetensors").code, 0);
  ASSERT_EQ(run("init --arch vit_mini_patch4_28 --num-classes 0 --seed 2 -o " + dir + "/sup.safetensors").code, 0);
  {
    std::ofstream r(dir + "/r.yaml");
    r << "name: cli\nstudent: {arch: vit_mini_patch4_28}\nteachers:\n"
         "  - name: mim\n    checkpoint: mim.safetensors\n    targets: [{kind: relation, layers: [3, 4]}]\n"
         "  - name: sup\n    checkpoint: sup.safetensors\n    targets: [{kind: features, norm: layernorm}]\n"
         "masking: {strategy: progressive, teacher: mim}\n"
         "data: {augment: false, workers: 1}\ntrain: {batch: 16, log_every: 2}\n";
  }
  auto r = run("distill --precision fp32 -r " + dir + "/r.yaml -o " + dir + "/run --max-steps 4 -t 2");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "mim.relation.3")) << r.out;
  for (const char* f : {"student.safetensors", "checkpoint.safetensors", "metrics.jsonl", "recipe.yaml"})
    EXPECT_TRUE(fs::exists(dir + "/run/" + f)) << f;
  auto student = io::SafeTensorsFile::open(dir + "/run/student.safetensors");
  EXPECT_FALSE(student.contains("head.weight"));
  for (const auto& t : student.tensors()) EXPECT_EQ(t.name.rfind("dec_", 0), std::string::npos) << t.name;
  // A used run folder is not overwritten by accident.
  r = run("distill --precision fp32 -r " + dir + "/r.yaml -o " + dir + "/run --max-steps 4");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.out, "--resume")) << r.out;

  // SIGTERM (handled as SIGINT) mid-run: checkpoint saved, clean exit. (A background job of a
  // non-interactive shell starts with SIGINT ignored, so SIGTERM is the signal a test can send.)
  r = run("distill --precision fp32 -r " + dir + "/r.yaml -o " + dir + "/int --max-steps 3000 -t 1 & P=$!; sleep 12; kill -TERM $P; wait $P");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "interrupted: checkpoint saved")) << r.out;
  ASSERT_TRUE(fs::exists(dir + "/int/checkpoint.safetensors"));
  auto meta = io::SafeTensorsFile::open(dir + "/int/checkpoint.safetensors").metadata();
  EXPECT_GT(std::stoll(meta.at("step")), 0);
  EXPECT_TRUE(fs::exists(dir + "/int/recipe.yaml"));

  torch::manual_seed(0);
  io::save_safetensors(dir + "/x.safetensors", {{"images", torch::randn({2, 1, 28, 28})}});
  r = run("dump-step --precision fp32 -r " + dir + "/r.yaml -i " + dir + "/x.safetensors -o " + dir + "/step.safetensors");
  ASSERT_EQ(r.code, 0) << r.out;
  auto f = io::SafeTensorsFile::open(dir + "/step.safetensors");
  EXPECT_EQ(f.info("mask.keep").shape, (std::vector<int64_t>{2, 16}));
  EXPECT_EQ(f.info("mask.keep").dtype, "I64");
  EXPECT_EQ(f.info("target.mim.relation.3").shape, (std::vector<int64_t>{2, 4, 17, 17}));
  EXPECT_EQ(f.info("pred.sup.features.last").shape, (std::vector<int64_t>{2, 17, 128}));
  // Eq. 1 + 3: features + α · the mean of the relation layers (α = 1), reported as its own term.
  double total = f.load("loss.total").item<double>();
  double rel = 0.5 * (f.load("loss.mim.relation.3").item<double>() + f.load("loss.mim.relation.4").item<double>());
  EXPECT_NEAR(f.load("loss.mim.relation.mean").item<double>(), rel, 1e-6);
  EXPECT_NEAR(total, f.load("loss.sup.features.last").item<double>() + rel, 1e-5);
  EXPECT_EQ(f.metadata().at("loss.total"), "1*mim.relation.mean(mim.relation.3,mim.relation.4) + 1*sup.features.last");
  EXPECT_TRUE(contains(r.out, "= 1*mim.relation.mean(")) << r.out;
  // Same recipe, same input: the dump is reproducible.
  ASSERT_EQ(run("dump-step --precision fp32 -r " + dir + "/r.yaml -i " + dir + "/x.safetensors -o " + dir + "/step2.safetensors").code, 0);
  EXPECT_TRUE(torch::equal(f.load("target.sup.features.last"),
                           io::SafeTensorsFile::open(dir + "/step2.safetensors").load("target.sup.features.last")));

  // A broken recipe is refused before any work, naming the key.
  {
    std::ofstream r2(dir + "/bad.yaml");
    r2 << "name: bad\nstudent: {arch: vit_mini_patch4_28}\nteachers:\n"
          "  - name: mim\n    checkpoint: mim.safetensors\n    targets: [{kind: relation, layers: [7]}]\n";
  }
  r = run("distill --precision fp32 -r " + dir + "/bad.yaml -o " + dir + "/run2");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.out, "bad.yaml") && contains(r.out, "layers")) << r.out;
  EXPECT_FALSE(fs::exists(dir + "/run2"));
}

// Published torch.save files ({"model": OrderedDict, "epoch": 3}, as MAE and DeiT publish them;
// written here by Python's torch) are read by every command that reads a model, and give what
// the same weights in safetensors give.
TEST(Cli, PthCheckpointsInFeaturesExportKnnAndDistill) {
  if (std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0) GTEST_SKIP() << "no python3-torch";
  auto dir = scratch("cli", "PthCheckpoints");
  const std::string arch = " --arch vit_mini_patch4_28";
  ASSERT_EQ(run("init" + arch + " --num-classes 0 --seed 4 -o " + dir + "/m.safetensors").code, 0);
  const std::string py = "OMP_NUM_THREADS=1 /usr/bin/python3 " + std::string(HD_SOURCE_DIR) +
                         "/tests/interop/reference.py save --weights " + dir + "/m.safetensors --out " + dir +
                         "/m.pth --ordered --wrap model >" + dir + "/py.log 2>&1";
  ASSERT_EQ(std::system(py.c_str()), 0) << slurp(dir + "/py.log");

  torch::manual_seed(0);
  io::save_safetensors(dir + "/x.safetensors", {{"images", torch::randn({2, 1, 28, 28})}});
  for (const char* f : {"m.safetensors", "m.pth"}) {
    auto r = run("features -c " + dir + "/" + f + arch + " -i " + dir + "/x.safetensors -o " + dir + "/" + f +
                 ".out.safetensors --layers -1 -t 1");
    ASSERT_EQ(r.code, 0) << r.out;
  }
  EXPECT_TRUE(torch::equal(io::SafeTensorsFile::open(dir + "/m.pth.out.safetensors").load("features"),
                           io::SafeTensorsFile::open(dir + "/m.safetensors.out.safetensors").load("features")));

  auto r = run("export -c " + dir + "/m.pth" + arch + " -o " + dir + "/hub");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(fs::exists(dir + "/hub/model.safetensors"));

  if (!fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")) GTEST_SKIP() << "no Fashion-MNIST";
  r = run("knn -c " + dir + "/m.pth" + arch + " --train-limit 200 --test-limit 50 -q -t 1 -o " + dir + "/knn");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(fs::exists(dir + "/knn/result.json"));
  {
    std::ofstream y(dir + "/r.yaml");
    y << "name: pth\nstudent: {arch: vit_mini_patch4_28}\nteachers:\n"
         "  - name: sup\n    checkpoint: m.pth\n    arch: vit_mini_patch4_28\n"
         "    targets: [{kind: features, norm: layernorm}]\n"
         "data: {augment: false, workers: 1}\ntrain: {batch: 8, log_every: 1}\n";
  }
  r = run("distill -r " + dir + "/r.yaml -o " + dir + "/run --max-steps 2 -t 1");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(fs::exists(dir + "/run/student.safetensors"));
}

// --exact-jpeg reaches the decoder of every training command: on large JPEGs (crops decoded at a
// reduced DCT scale by default) the second step's loss with the flag (the first one's is ln 2 for
// `train`, whose head starts at zero) equals the loss on PNG copies of the full-size decode (the
// generic path), and differs without it.
TEST(Cli, ExactJpegDecodesTrainingJpegsAtFullSize) {
  auto dir = scratch("cli", "ExactJpegDecodesTrainingJpegsAtFullSize");
  torch::manual_seed(5);
  for (int i = 0; i < 4; ++i) {
    const std::string cls = i % 2 ? "/b" : "/a", stem = "/img" + std::to_string(i);
    // Textured 256x256 colour images: a reduced scale visibly low-passes them.
    auto img = torch::nn::functional::interpolate(
        torch::rand({1, 3, 64, 64}),
        torch::nn::functional::InterpolateFuncOptions().size(std::vector<int64_t>{256, 256}).mode(torch::kNearest));
    auto u8 = (img[0] * 255).to(torch::kUInt8).contiguous();
    fs::create_directories(dir + "/jpg" + cls);
    fs::create_directories(dir + "/png" + cls);
    const auto jpeg = data::encode_jpeg(u8, 85);
    data::write_file_bytes(dir + "/jpg" + cls + stem + ".jpg", jpeg);
    const auto full = data::decode_image(jpeg.data(), jpeg.size(), "x.jpg");
    data::write_file_bytes(dir + "/png" + cls + stem + ".png", data::encode_png(full));
  }
  ASSERT_EQ(run("init --arch vit_mini_patch4_28 --num-classes 0 --seed 1 -o " + dir + "/t.safetensors").code, 0);
  {
    std::ofstream r(dir + "/r.yaml");
    r << "student: {arch: vit_mini_patch4_28}\n"
         "teachers: [{name: t, checkpoint: t.safetensors, targets: [{kind: features}]}]\n"
         "data: {workers: 1}\ntrain: {batch: 4, epochs: 2, log_every: 1}\n";
  }
  const std::string common = " --max-steps 2 -t 2 -q --precision fp32 --no-tensorboard";
  const std::string train = " --arch vit_mini_patch4_28 -b 4 -j 1 --log-every 1 --lr 0.01 --warmup-epochs 0" + common;
  struct Command {
    std::string name, args;  // args: {data} stands for the image folder
  };
  const std::vector<Command> commands = {
      {"train", "train -d {data}" + train},
      {"pretrain-mae", "pretrain-mae -d {data} --decoder-dim 32 --decoder-depth 1" + train},
      {"distill", "distill -r " + dir + "/r.yaml --set data.dataset={data}" + common},
  };
  for (const auto& c : commands) {
    SCOPED_TRACE(c.name);
    auto second_loss = [&](const std::string& data, const std::string& flag) {
      const auto out = dir + "/" + c.name + "_" + fs::path(data).filename().string() + (flag.empty() ? "" : "_exact");
      auto args = c.args;
      args.replace(args.find("{data}"), 6, dir + "/" + data);
      const auto r = run(args + flag + " -o " + out);
      EXPECT_EQ(r.code, 0) << r.out;
      std::ifstream in(out + "/metrics.jsonl");
      std::string line;
      std::getline(in, line);
      std::getline(in, line);
      return line.empty() ? std::nan("") : nlohmann::json::parse(line).at("loss").get<double>();
    };
    const double exact = second_loss("jpg", " --exact-jpeg"), png = second_loss("png", ""),
                 scaled = second_loss("jpg", "");
    ASSERT_TRUE(std::isfinite(exact) && std::isfinite(png) && std::isfinite(scaled));
    EXPECT_NEAR(exact, png, 1e-5 * std::abs(png) + 1e-7);
    EXPECT_GT(std::abs(scaled - exact), 1e-4 * std::abs(exact)) << "the default decodes at a reduced scale";
  }
}
