// The output folders of `analyze` and `compare`: diagnostics.json, figures and report.html.
#pragma once

#include <string>
#include <vector>

#include "analysis/analyze.h"
#include "analysis/diagnostics.h"
#include "analysis/plots.h"

namespace hd::analysis {

// What was analysed, for the report and the JSON: a data set name and split, or an input file.
struct DataInfo {
  std::string source;  // e.g. "fashion-mnist/test" or the --input path
};

// Writes OUT/diagnostics.json (atomically) for one analysed model.
void write_diagnostics_json(const std::string& path, const Diagnostics& d, const ModelInfo& model,
                            const DataInfo& data, const AttentionMaps& maps);

// Draws head_distance, nmi and attention_maps_<k> (one per mapped image) into `out_dir` and
// writes OUT/report.html embedding them with the model identity and per-layer tables. With
// `plots` false only the tables go into the report. Returns the figures drawn.
std::vector<Figure> write_analysis_report(const std::string& out_dir, const Diagnostics& d, const ModelInfo& model,
                                          const DataInfo& data, const AttentionMaps& maps, bool plots = true);

// One analysed run read back for `compare`.
struct Run {
  std::string label, path;  // legend label; the diagnostics.json it came from
  Diagnostics diagnostics;
  ModelInfo model;
  std::string data_source;
};

// Reads DIR/diagnostics.json (or a .json file given directly). hd::Error naming the file.
Run read_run(const std::string& dir_or_file, const std::string& label);

// Overlays the runs in head_distance and nmi figures in `out_dir` and writes OUT/report.html
// and OUT/comparison.json (the per-layer means of every run). Returns the figures drawn.
std::vector<Figure> write_compare_report(const std::string& out_dir, const std::vector<Run>& runs);

}  // namespace hd::analysis
