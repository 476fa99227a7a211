// `analyze`: attention diagnostics of one model (average head distance and NMI per layer and
// head, attention maps of chosen queries), written as diagnostics.json, PNG/SVG figures and a
// self-contained report.html. `compare`: several analyze folders overlaid in the same figures.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <sstream>

#include <torch/torch.h>

#include "analysis/analyze.h"
#include "analysis/report.h"
#include "app/commands.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "train/model_transform.h"
#include "train/precision.h"
#include "util/error.h"
#include "util/timer.h"

namespace fs = std::filesystem;

namespace hd::cli {

namespace {

void make_dir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(dir + ": cannot create output folder: " + ec.message());
}

// Default map layers: first, middle and last block.
std::vector<int64_t> default_map_layers(int64_t depth) {
  std::vector<int64_t> l{0, depth / 2, depth - 1};
  std::sort(l.begin(), l.end());
  l.erase(std::unique(l.begin(), l.end()), l.end());
  return l;
}

}  // namespace

void add_analyze(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "analyze",
      "Attention diagnostics of a model: average head distance (pixels) and query-key NMI per layer and head, "
      "over patch tokens (CLS excluded, rows renormalised), averaged over images; plus attention maps of chosen "
      "query patches. Writes OUT/diagnostics.json, PNG + SVG figures (gnuplot) and OUT/report.html.");
  struct Opts {
    std::string checkpoint, arch, data, split = "val", input, out, layers = "auto", queries = "auto";
    int64_t images = 256, batch = 16, map_images = 1;
    int workers = 2;
    bool no_plots = false;
    Runtime rt;
  };
  auto o = std::make_shared<Opts>();
  sub->add_option("-c,--checkpoint", o->checkpoint, "model .safetensors")->required();
  sub->add_option("-a,--arch", o->arch, "model preset; default: the config stored in the checkpoint");
  auto* data_opt = sub->add_option("-d,--data", o->data, "data set: fashion-mnist, fashion-mnist:DIR or an ImageFolder root");
  auto* input_opt = sub->add_option("-i,--input", o->input,
                                    ".safetensors with a float32 tensor `images` [B,C,H,W] (already normalised)");
  data_opt->excludes(input_opt);
  input_opt->excludes(data_opt);
  sub->add_option("--split", o->split, "data set split (train, val or test); the first images are used, in order");
  sub->add_option("-n,--images", o->images, "images to average over (0 = all)")->check(CLI::NonNegativeNumber);
  sub->add_option("-b,--batch", o->batch, "images per forward pass (bounds memory)")->check(CLI::PositiveNumber);
  sub->add_option("-l,--layers", o->layers,
                  "blocks to draw attention maps for: auto (first, middle, last), all, none, or a list such as "
                  "0,5,9-11 (-1 = last)");
  sub->add_option("--queries", o->queries,
                  "query patches of the attention maps: auto (centre and upper-left quarter cells), or a comma "
                  "list of row:col grid cells or row-major patch indices");
  sub->add_option("--map-images", o->map_images, "images to draw attention maps for (the first ones)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("-j,--workers", o->workers, "data loader worker threads");
  sub->add_flag("--no-plots", o->no_plots, "write diagnostics.json and a report with the tables only (no gnuplot)");
  sub->add_option("-o,--out", o->out, "output folder")->required();
  add_model_runtime_options(sub, o->rt);
  sub->callback([o] {
    if (o->data.empty() == o->input.empty()) throw Error("analyze: give either --data or --input");
    if (!o->no_plots) analysis::check_gnuplot();
    auto device = apply_runtime(o->rt);
    auto model = model::load_model(o->checkpoint, o->arch);
    const auto& cfg = model->config();

    analysis::MapRequest req;
    req.layers = o->layers == "auto" ? default_map_layers(cfg.depth) : parse_layers(o->layers, cfg.depth, "--layers");
    req.queries = analysis::parse_queries(o->queries, cfg.grid_size(), cfg.grid_size(), "--queries");
    req.images = o->no_plots ? 0 : o->map_images;

    analysis::DataInfo info;
    analysis::BatchSource source;
    std::unique_ptr<data::DataLoader> loader;
    torch::Tensor all;
    int64_t pos = 0;
    if (!o->data.empty()) {
      auto ds = data::open_dataset(o->data, o->split);
      info.source = ds->name();
      data::LoaderConfig lc;
      lc.batch_size = o->batch;
      lc.shuffle = false;
      lc.drop_last = false;
      lc.num_workers = o->workers;
      lc.transform = train::model_transform(cfg, false);
      loader = std::make_unique<data::DataLoader>(ds, lc);
      loader->start_epoch(0);
      source = [&](torch::Tensor& x) {
        data::Batch b;
        if (!loader->next(b)) return false;
        x = b.images;
        return true;
      };
    } else {
      auto in = io::SafeTensorsFile::open(o->input);
      if (!in.contains("images"))
        throw Error(o->input + ": no tensor named 'images' (expected float32 [B,C,H,W])");
      all = in.load("images");
      if (all.scalar_type() != torch::kFloat)
        throw Error(o->input + ": 'images' must be F32, found " + in.info("images").dtype);
      if (all.dim() != 4 || all.size(1) != cfg.in_chans || all.size(2) != cfg.img_size ||
          all.size(3) != cfg.img_size) {
        std::ostringstream s;
        s << all.sizes();
        throw Error(o->input + ": 'images' has shape " + s.str() + " but model '" + cfg.name + "' expects [B, " +
                    std::to_string(cfg.in_chans) + ", " + std::to_string(cfg.img_size) + ", " +
                    std::to_string(cfg.img_size) + "]");
      }
      info.source = o->input;
      source = [&](torch::Tensor& x) {
        if (pos >= all.size(0)) return false;
        x = all.slice(0, pos, std::min(all.size(0), pos + o->batch));
        pos += x.size(0);
        return true;
      };
    }

    make_dir(o->out);
    Timer timer;
    analysis::AnalysisResult res;
    {
      // bf16: the model's matrix products under autocast; the diagnostics are computed in float32.
      train::AutocastScope autocast(device, precision_of(o->rt, device) == train::Precision::BF16);
      res = analysis::analyze(model, source, o->images, req, device);
    }
    const double secs = timer.seconds();
    auto mi = analysis::model_info(cfg, o->checkpoint);
    const auto& d = res.diagnostics;
    analysis::write_diagnostics_json((fs::path(o->out) / "diagnostics.json").string(), d, mi, info, res.maps);
    auto figs = analysis::write_analysis_report(o->out, d, mi, info, res.maps, !o->no_plots);

    std::printf("%s on %s: %ld images in %.2f s (CLS excluded, rows renormalised)\n", cfg.name.c_str(),
                info.source.c_str(), (long)d.images, secs);
    std::printf("%5s  %14s  %8s\n", "layer", "distance (px)", "NMI");
    auto dm = d.head_distance_mean(), nm = d.nmi_mean();
    for (size_t l = 0; l < d.layers.size(); ++l)
      std::printf("%5ld  %14.2f  %8.4f\n", (long)d.layers[l], dm[l], nm[l]);
    std::printf("wrote %s/diagnostics.json, %zu figures (PNG + SVG) and %s/report.html\n", o->out.c_str(), figs.size(),
                o->out.c_str());
  });
}

void add_compare(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "compare",
      "Overlay the attention diagnostics of several `analyze` output folders: head distance per head and per "
      "layer, NMI per layer. Writes PNG + SVG figures, comparison.json and OUT/report.html.");
  struct Opts {
    std::vector<std::string> dirs;
    std::string out, labels;
  };
  auto o = std::make_shared<Opts>();
  sub->add_option("dirs", o->dirs, "analyze output folders (or their diagnostics.json files)")->required();
  sub->add_option("-o,--out", o->out, "output folder")->required();
  sub->add_option("--labels", o->labels, "comma-separated legend labels, one per folder; default: folder names");
  sub->callback([o] {
    std::vector<std::string> labels;
    if (!o->labels.empty()) {
      std::stringstream ss(o->labels);
      std::string item;
      while (std::getline(ss, item, ',')) labels.push_back(item);
      if (labels.size() != o->dirs.size())
        throw Error("--labels: " + std::to_string(labels.size()) + " labels for " + std::to_string(o->dirs.size()) +
                    " folders");
    } else {
      for (const auto& d : o->dirs) {
        fs::path p = fs::path(d).lexically_normal();
        if (p.filename().empty()) p = p.parent_path();
        if (p.extension() == ".json") p = p.parent_path();
        labels.push_back(p.filename().empty() ? d : p.filename().string());
      }
    }
    std::vector<analysis::Run> runs;
    for (size_t i = 0; i < o->dirs.size(); ++i) runs.push_back(analysis::read_run(o->dirs[i], labels[i]));
    analysis::check_gnuplot();
    make_dir(o->out);
    auto figs = analysis::write_compare_report(o->out, runs);
    std::printf("%-20s %6s  %s\n", "run", "layers", "distance mean (px) first..last layer / NMI mean first..last");
    for (const auto& r : runs) {
      auto dm = r.diagnostics.head_distance_mean(), nm = r.diagnostics.nmi_mean();
      std::printf("%-20s %6zu  %.2f .. %.2f / %.4f .. %.4f\n", r.label.c_str(), dm.size(), dm.front(), dm.back(),
                  nm.front(), nm.back());
    }
    std::printf("wrote %zu figures (PNG + SVG), %s/comparison.json and %s/report.html\n", figs.size(), o->out.c_str(),
                o->out.c_str());
  });
}

}  // namespace hd::cli
