// End-to-end checks of `analyze` and `compare`: a tiny random model on a few Fashion-MNIST
// images; the JSON layout, the figures (valid PNGs, SVGs) and the self-contained report.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "data/image_codec.h"
#include "app/cli_util.h"
#include "io/safetensors.h"

namespace fs = std::filesystem;
using namespace hd;
using namespace hd::testing;

namespace {

std::string tmpdir(const std::string& name) { return scratch("analyze", name); }

bool have_fashion_mnist() { return fs::exists("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"); }

bool have_gnuplot() { return std::system("gnuplot -e 'set terminal pngcairo; set terminal svg' >/dev/null 2>&1") == 0; }

// RFC 4648 decoding, independent of the encoder under test.
std::string unbase64(const std::string& s) {
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : s) {
    int v = val(c);
    if (v < 0) break;  // '=' padding or the closing quote
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  return out;
}

// The bytes of the PNG embedded in the report under alt="<name>.png".
std::string embedded_png(const std::string& html, const std::string& name) {
  auto at = html.find("alt=\"" + name + ".png\"");
  if (at == std::string::npos) return "";
  const std::string marker = "src=\"data:image/png;base64,";
  auto src = html.find(marker, at);
  if (src == std::string::npos) return "";
  auto start = src + marker.size();
  return unbase64(html.substr(start, html.find('"', start) - start));
}

void expect_valid_png(const std::string& path) {
  auto bytes = slurp(path);
  ASSERT_GT(bytes.size(), 8u) << path;
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8)) << path;
  auto img = data::decode_image(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), path);
  EXPECT_EQ(img.dim(), 3) << path;
  EXPECT_GT(img.size(1), 100) << path;
  EXPECT_GT(img.size(2), 100) << path;
  // Not a blank canvas.
  EXPECT_GT(img.to(torch::kFloat).std().item<float>(), 1.0f) << path;
}

}  // namespace

TEST(Analyze, FashionMnistReportAndJson) {
  if (!have_fashion_mnist()) GTEST_SKIP() << "no Fashion-MNIST";
  if (!have_gnuplot()) GTEST_SKIP() << "no gnuplot (Debian package gnuplot-nox)";
  auto dir = tmpdir("fm");
  auto ckpt = dir + "/m.safetensors", out = dir + "/a";
  ASSERT_EQ(run("init --arch vit_mini_patch4_28 --seed 3 -o " + ckpt).code, 0);
  auto r = run("analyze -c " + ckpt + " --data fashion-mnist -n 12 -b 5 -j 1 -t 2 --layers 0,-1 --queries 3:3,0:6,10 "
               "--map-images 2 -o " + out);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "report.html")) << r.out;

  auto j = nlohmann::json::parse(slurp(out + "/diagnostics.json"));
  EXPECT_EQ(j["images"], 12);
  EXPECT_EQ(j["cls"], "excluded, rows renormalised");
  ASSERT_EQ(j["head_distance"].size(), 6u);  // vit_mini: 6 blocks of 4 heads
  ASSERT_EQ(j["nmi"].size(), 6u);
  for (size_t l = 0; l < 6; ++l) {
    EXPECT_EQ(j["head_distance"][l].size(), 4u);
    EXPECT_EQ(j["nmi"][l].size(), 4u);
    double mean = 0;
    for (const auto& v : j["head_distance"][l]) mean += v.get<double>() / 4;
    EXPECT_NEAR(j["head_distance_mean"][l].get<double>(), mean, 1e-9);
    EXPECT_GT(mean, 0.0);
    EXPECT_GE(j["nmi_mean"][l].get<double>(), 0.0);
    EXPECT_LE(j["nmi_mean"][l].get<double>(), 1.0);
  }
  EXPECT_EQ(j["layers"], (std::vector<int64_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(j["model"]["checkpoint"], ckpt);
  EXPECT_EQ(j["model"]["config"], "vit_mini_patch4_28");
  EXPECT_EQ(j["model"]["embed_dim"], 128);
  EXPECT_EQ(j["model"]["depth"], 6);
  EXPECT_EQ(j["model"]["heads"], 4);
  EXPECT_EQ(j["model"]["patch_size"], 4);
  EXPECT_EQ(j["model"]["img_size"], 28);
  EXPECT_EQ(j["attention_maps"]["layers"], (std::vector<int64_t>{0, 5}));
  EXPECT_EQ(j["attention_maps"]["queries"].size(), 3u);
  EXPECT_EQ(j["attention_maps"]["queries"][2], (std::vector<int64_t>{1, 3}));
  // The uniform-attention reference of the 7x7 grid of 4-px patches, in the JSON, the report and
  // the figure scripts.
  EXPECT_NEAR(j["uniform"]["head_distance"].get<double>(), 14.4379, 1e-4);
  EXPECT_NEAR(j["uniform"]["nmi"].get<double>(), 0.0, 1e-12);

  auto html = slurp(out + "/report.html");
  EXPECT_TRUE(contains(html, "<table")) << "per-layer means table";
  EXPECT_TRUE(contains(html, "vit_mini_patch4_28"));
  EXPECT_TRUE(contains(html, "uniform attention over this 7x7 grid")) << "uniform reference sentence";
  EXPECT_TRUE(contains(slurp(out + "/gnuplot/head_distance.gp"), "uniform attention, 7x7 grid: 14.44 px"));
  for (const char* name : {"head_distance", "nmi", "attention_maps_0", "attention_maps_1"}) {
    SCOPED_TRACE(name);
    auto png = out + "/" + name + ".png";
    expect_valid_png(png);
    EXPECT_EQ(embedded_png(html, name), slurp(png)) << "report embeds " << name << ".png";
    auto svg = slurp(out + "/" + name + ".svg");
    EXPECT_TRUE(contains(svg, "<svg")) << name << ".svg";
    EXPECT_TRUE(contains(html, std::string(name) + ".svg"));
  }

  // Same model, images given directly (already normalised) through --input.
  torch::manual_seed(0);
  auto in = dir + "/x.safetensors";
  io::save_safetensors(in, {{"images", torch::randn({3, 1, 28, 28})}});
  auto out2 = dir + "/b";
  r = run("analyze -c " + ckpt + " -i " + in + " -t 1 -o " + out2);
  ASSERT_EQ(r.code, 0) << r.out;
  auto j2 = nlohmann::json::parse(slurp(out2 + "/diagnostics.json"));
  EXPECT_EQ(j2["images"], 3);
  EXPECT_EQ(j2["data"]["source"], in);
  expect_valid_png(out2 + "/attention_maps_0.png");

  // compare: both runs overlaid, with and without labels.
  auto cmp = dir + "/cmp";
  r = run("compare " + out + " " + out2 + " --labels fashion,noise -o " + cmp);
  ASSERT_EQ(r.code, 0) << r.out;
  auto chtml = slurp(cmp + "/report.html");
  for (const char* name : {"head_distance", "nmi"}) {
    SCOPED_TRACE(name);
    expect_valid_png(cmp + "/" + name + ".png");
    EXPECT_EQ(embedded_png(chtml, name), slurp(cmp + "/" + name + ".png"));
    EXPECT_TRUE(fs::exists(cmp + "/" + name + ".svg"));
  }
  EXPECT_TRUE(contains(chtml, "fashion") && contains(chtml, "noise"));
  auto cj = nlohmann::json::parse(slurp(cmp + "/comparison.json"));
  ASSERT_EQ(cj["runs"].size(), 2u);
  EXPECT_EQ(cj["runs"][1]["label"], "noise");
  EXPECT_EQ(cj["runs"][0]["head_distance_mean"].size(), 6u);
  EXPECT_NEAR(cj["runs"][0]["uniform"]["head_distance"].get<double>(), 14.4379, 1e-4);
  EXPECT_TRUE(contains(chtml, "<td>uniform attention</td>")) << "reference row in the per-layer tables";
  EXPECT_TRUE(contains(slurp(cmp + "/gnuplot/nmi.gp"), "uniform attention, 7x7 grid: 0.00"));
  r = run("compare " + out + " " + out2 + " -o " + dir + "/cmp2");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(contains(slurp(dir + "/cmp2/report.html"), ">a<")) << "folder names as default labels";
}

TEST(Analyze, BadInputsGiveClearErrors) {
  auto dir = tmpdir("bad");
  auto ckpt = dir + "/m.safetensors";
  ASSERT_EQ(run("init --arch vit_mini_patch4_28 -o " + ckpt).code, 0);
  auto in = dir + "/x.safetensors";
  io::save_safetensors(in, {{"images", torch::randn({2, 3, 28, 28})}});

  auto r = run("analyze -c " + ckpt + " -i " + in + " --no-plots -o " + dir + "/o");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.out, in) && contains(r.out, "[2, 3, 28, 28]")) << r.out;
  r = run("analyze -c " + ckpt + " -o " + dir + "/o");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(contains(r.out, "--data") && contains(r.out, "--input")) << r.out;
  r = run("analyze -c " + ckpt + " -i " + in + " --data fashion-mnist -o " + dir + "/o");
  EXPECT_NE(r.code, 0);

  io::save_safetensors(in, {{"images", torch::randn({2, 1, 28, 28})}});
  r = run("analyze -c " + ckpt + " -i " + in + " --no-plots --queries 9:9 -o " + dir + "/o");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.out, "--queries") && contains(r.out, "9:9")) << r.out;
  r = run("analyze -c " + ckpt + " -i " + in + " --no-plots --layers 8 -o " + dir + "/o");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.out, "--layers")) << r.out;

  // Without gnuplot: a clear message up front; --no-plots still gives the numbers.
  r = run("analyze -c " + ckpt + " -i " + in + " -o " + dir + "/o", "PATH=/nonexistent");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.out, "gnuplot-nox")) << r.out;
  r = run("analyze -c " + ckpt + " -i " + in + " --no-plots -o " + dir + "/o", "PATH=/nonexistent");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(fs::exists(dir + "/o/diagnostics.json"));
  EXPECT_TRUE(fs::exists(dir + "/o/report.html"));

  r = run("compare " + dir + "/nowhere -o " + dir + "/c");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.out, "nowhere")) << r.out;
  r = run("compare " + dir + "/o --labels a,b -o " + dir + "/c");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.out, "--labels")) << r.out;
}
