#include "analysis/report.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "util/atomic_file.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace hd::analysis {

namespace {

void write_json(const std::string& path, const nlohmann::json& j) {
  std::string text = j.dump(2) + "\n";
  atomic_write_file(path, [&](std::FILE* f) { std::fwrite(text.data(), 1, text.size(), f); });
}

std::string join_ints(const std::vector<int64_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

std::vector<std::vector<std::string>> means_rows(const Diagnostics& d) {
  std::vector<std::vector<std::string>> rows;
  auto dm = d.head_distance_mean(), nm = d.nmi_mean();
  for (size_t l = 0; l < d.layers.size(); ++l) {
    const auto& hdist = d.head_distance[l];
    const auto& hn = d.nmi[l];
    rows.push_back({std::to_string(d.layers[l]), fixed(dm[l], 2), fixed(*std::min_element(hdist.begin(), hdist.end()), 2),
                    fixed(*std::max_element(hdist.begin(), hdist.end()), 2), fixed(nm[l], 4),
                    fixed(*std::min_element(hn.begin(), hn.end()), 4), fixed(*std::max_element(hn.begin(), hn.end()), 4)});
  }
  return rows;
}

void per_head_tables(Report& r, const Diagnostics& d, const std::string& prefix) {
  const size_t heads = d.head_distance.empty() ? 0 : d.head_distance[0].size();
  std::vector<std::string> header{"layer"};
  for (size_t h = 0; h < heads; ++h) header.push_back("head " + std::to_string(h));
  std::vector<std::vector<std::string>> dist, nmi;
  for (size_t l = 0; l < d.layers.size(); ++l) {
    std::vector<std::string> a{std::to_string(d.layers[l])}, b{std::to_string(d.layers[l])};
    for (size_t h = 0; h < heads; ++h) {
      a.push_back(fixed(d.head_distance[l][h], 2));
      b.push_back(fixed(d.nmi[l][h], 4));
    }
    dist.push_back(a);
    nmi.push_back(b);
  }
  r.table(header, dist, prefix + "Head distance per head (pixels)", true);
  r.table(header, nmi, prefix + "NMI per head", true);
}

std::vector<std::vector<std::string>> model_rows(const ModelInfo& m) {
  return {{"checkpoint", m.checkpoint},
          {"config", m.config_name},
          {"embed_dim / depth / heads", std::to_string(m.embed_dim) + " / " + std::to_string(m.depth) + " / " +
                                            std::to_string(m.num_heads)},
          {"image / patch size", std::to_string(m.img_size) + " / " + std::to_string(m.patch_size) + " px"}};
}

std::string uniform_sentence(const UniformReference& u) {
  return "Reference: uniform attention over this " + std::to_string(u.grid_h) + "x" + std::to_string(u.grid_w) +
         " grid of " + fixed(u.patch_size, 0) + "-px patches gives a head distance of " + fixed(u.head_distance, 2) +
         " px and an NMI of " + fixed(u.nmi, 4) +
         " (dashed grey lines in the figures). A layer near both attends almost uniformly.";
}

const char* const kMethod =
    "Per image and head, over patch tokens only (the CLS row and column are dropped and each row is "
    "renormalised to sum to 1): head distance = sum_k attn(q,k) * dist(q,k) averaged over queries, dist being the "
    "Euclidean distance between patch-grid cells times the patch size (pixels); NMI = I(q;k) / sqrt(H(q) H(k)) with "
    "p(q) = 1/N, p(k|q) = attn(q,k). Both are averaged over images (NMI: the mean of per-image values); a layer's "
    "value is the mean over its heads.";

}  // namespace

void write_diagnostics_json(const std::string& path, const Diagnostics& d, const ModelInfo& model,
                            const DataInfo& data, const AttentionMaps& maps) {
  auto j = to_json(d, model);
  j["data"] = {{"source", data.source}, {"images", d.images}};
  nlohmann::json q = nlohmann::json::array();
  for (auto p : maps.queries) q.push_back({p / std::max<int64_t>(1, maps.grid_w), p % std::max<int64_t>(1, maps.grid_w)});
  j["attention_maps"] = {{"images", maps.images.defined() ? maps.images.size(0) : 0},
                         {"layers", maps.layers},
                         {"queries", q},
                         {"heads", "mean over heads"}};
  write_json(path, j);
}

std::vector<Figure> write_analysis_report(const std::string& out_dir, const Diagnostics& d, const ModelInfo& model,
                                          const DataInfo& data, const AttentionMaps& maps, bool plots) {
  std::vector<Figure> figs;
  const std::string label = model.config_name.empty() ? std::string("model") : model.config_name;
  if (plots) {
    std::vector<Series> s{{label, d, uniform_reference(model)}};
    figs.push_back(plot_head_distance(s, out_dir, label + ": average attention distance (" +
                                                      std::to_string(d.images) + " images)"));
    figs.push_back(plot_nmi(s, out_dir, label + ": NMI between query and key (" + std::to_string(d.images) + " images)"));
    if (maps.images.defined())
      for (int64_t k = 0; k < maps.images.size(0); ++k) figs.push_back(plot_attention_maps(maps, k, out_dir));
  }
  Report r("Attention diagnostics: " + label);
  r.table({"model", ""}, model_rows(model));
  r.paragraph("Data: " + data.source + ", " + std::to_string(d.images) + " images.");
  r.paragraph(kMethod);
  if (auto u = uniform_reference(model)) r.paragraph(uniform_sentence(*u));
  r.table({"layer", "head distance mean (px)", "min head", "max head", "NMI mean", "min head", "max head"},
          means_rows(d), "Per-layer means over heads");
  for (const auto& f : figs) r.figure(f, out_dir);
  r.heading("Per-head values");
  per_head_tables(r, d, "");
  if (plots && maps.images.defined())
    r.paragraph("Attention maps: layers " + join_ints(maps.layers) + "; the first " +
                std::to_string(maps.images.size(0)) + " image(s) analysed.");
  r.write((fs::path(out_dir) / "report.html").string());
  return figs;
}

Run read_run(const std::string& dir_or_file, const std::string& label) {
  fs::path p(dir_or_file);
  if (fs::is_directory(p)) p /= "diagnostics.json";
  std::ifstream f(p);
  if (!f) throw Error(p.string() + ": cannot open (expected an analyze output folder or its diagnostics.json)");
  nlohmann::json j;
  try {
    f >> j;
  } catch (const nlohmann::json::exception& e) {
    throw Error(p.string() + ": not valid JSON: " + e.what());
  }
  Run run;
  run.path = p.string();
  auto [d, m] = from_json(j, run.path);
  run.diagnostics = std::move(d);
  run.model = std::move(m);
  if (j.contains("data") && j["data"].is_object()) run.data_source = j["data"].value("source", std::string());
  run.label = label;
  return run;
}

std::vector<Figure> write_compare_report(const std::string& out_dir, const std::vector<Run>& runs) {
  if (runs.empty()) throw Error("compare: no runs given");
  std::vector<Series> series;
  for (const auto& r : runs) series.push_back({r.label, r.diagnostics, uniform_reference(r.model)});
  std::vector<Figure> figs;
  figs.push_back(plot_head_distance(series, out_dir, "Average attention distance per head"));
  figs.push_back(plot_nmi(series, out_dir, "NMI between query and key"));

  nlohmann::json cj;
  cj["format"] = "hybrid-distill.comparison/1";
  cj["runs"] = nlohmann::json::array();
  for (const auto& r : runs)
    cj["runs"].push_back({{"label", r.label},
                          {"diagnostics", r.path},
                          {"config", r.model.config_name},
                          {"checkpoint", r.model.checkpoint},
                          {"images", r.diagnostics.images},
                          {"layers", r.diagnostics.layers},
                          {"head_distance_mean", r.diagnostics.head_distance_mean()},
                          {"nmi_mean", r.diagnostics.nmi_mean()}});
  for (size_t i = 0; i < runs.size(); ++i)
    if (auto u = series[i].uniform)
      cj["runs"][i]["uniform"] = {{"head_distance", u->head_distance}, {"nmi", u->nmi}, {"grid", {u->grid_h, u->grid_w}}};
  write_json((fs::path(out_dir) / "comparison.json").string(), cj);

  Report rep("Attention diagnostics compared");
  std::vector<std::vector<std::string>> rows;
  for (const auto& r : runs)
    rows.push_back({r.label, r.model.config_name, r.model.checkpoint, r.data_source, std::to_string(r.diagnostics.images),
                    r.path});
  rep.table({"label", "config", "checkpoint", "data", "images", "diagnostics"}, rows, "Runs");
  rep.paragraph(kMethod);
  // The uniform-attention reference of every distinct grid among the runs.
  std::vector<std::string> refs;
  for (const auto& s : series)
    if (s.uniform && std::find(refs.begin(), refs.end(), uniform_sentence(*s.uniform)) == refs.end())
      refs.push_back(uniform_sentence(*s.uniform));
  for (const auto& t : refs) rep.paragraph(t);
  // Per-layer means side by side: one row per layer present in any run.
  std::vector<int64_t> layers;
  for (const auto& r : runs) layers.insert(layers.end(), r.diagnostics.layers.begin(), r.diagnostics.layers.end());
  std::sort(layers.begin(), layers.end());
  layers.erase(std::unique(layers.begin(), layers.end()), layers.end());
  std::vector<std::string> header{"layer"};
  for (const auto& r : runs) header.push_back(r.label);
  std::vector<std::vector<std::string>> dist_rows, nmi_rows;
  for (auto l : layers) {
    std::vector<std::string> a{std::to_string(l)}, b{std::to_string(l)};
    for (const auto& r : runs) {
      const auto& d = r.diagnostics;
      auto it = std::find(d.layers.begin(), d.layers.end(), l);
      if (it == d.layers.end()) {
        a.push_back("");
        b.push_back("");
        continue;
      }
      size_t i = static_cast<size_t>(it - d.layers.begin());
      a.push_back(fixed(d.head_distance_mean()[i], 2));
      b.push_back(fixed(d.nmi_mean()[i], 4));
    }
    dist_rows.push_back(a);
    nmi_rows.push_back(b);
  }
  std::vector<std::string> ua{"uniform attention"}, ub{"uniform attention"};
  for (const auto& s : series) {
    ua.push_back(s.uniform ? fixed(s.uniform->head_distance, 2) : "");
    ub.push_back(s.uniform ? fixed(s.uniform->nmi, 4) : "");
  }
  dist_rows.push_back(ua);
  nmi_rows.push_back(ub);
  rep.table(header, dist_rows, "Head distance, layer mean over heads (pixels)");
  rep.table(header, nmi_rows, "NMI, layer mean over heads");
  for (const auto& f : figs) rep.figure(f, out_dir);
  rep.heading("Per-head values");
  for (const auto& r : runs) per_head_tables(rep, r.diagnostics, r.label + ": ");
  rep.write((fs::path(out_dir) / "report.html").string());
  return figs;
}

}  // namespace hd::analysis
