// Figures and the HTML report of the attention diagnostics. Figures are drawn by gnuplot
// (Debian package gnuplot-nox, terminals pngcairo and svg): each one writes its data file and
// script to OUT/gnuplot/<name>.{dat,gp} (re-runnable by hand from that folder) and produces
// OUT/<name>.png and OUT/<name>.svg. The report is one self-contained HTML file: PNGs are
// embedded as base64 data URIs.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "analysis/analyze.h"
#include "analysis/diagnostics.h"

namespace hd::analysis {

// hd::Error unless a `gnuplot` on PATH runs and offers the pngcairo and svg terminals.
void check_gnuplot();

// Runs gnuplot on `script` (a file name relative to `dir`) with `dir` as working directory;
// its stderr goes to <script>.log next to it. hd::Error naming the script and quoting the log
// if gnuplot is missing or fails.
void run_gnuplot(const std::string& dir, const std::string& script);

// A figure written to OUT/<name>.png and OUT/<name>.svg.
struct Figure {
  std::string name;     // file stem
  std::string title;    // heading in the report
  std::string caption;  // what is shown
};

// One run's diagnostics, with its legend label.
struct Series {
  std::string label;
  Diagnostics diagnostics;
  std::optional<UniformReference> uniform;  // drawn as a dashed grey reference line
};

// Average head distance per head against the layer (one point per head, the layer mean as a
// line), as the paper's Fig. 1; several series are overlaid with small x offsets.
Figure plot_head_distance(const std::vector<Series>& series, const std::string& out_dir,
                          const std::string& title);

// Layer-mean NMI against the layer (line), with the per-head values as faint points.
Figure plot_nmi(const std::vector<Series>& series, const std::string& out_dir, const std::string& title);

// Attention maps of image `k` of `maps`: one row per query, the input (query cell outlined) then
// one column per layer, each map overlaid on the image as a colour map whose opacity grows with
// the attention (normalised to the map's maximum).
Figure plot_attention_maps(const AttentionMaps& maps, int64_t k, const std::string& out_dir);

// Standard base64 (RFC 4648, with padding).
std::string base64(const std::string& bytes);

// Escapes &, <, >, " and ' for HTML text and attributes.
std::string html_escape(const std::string& s);

// Builds the HTML report.
class Report {
 public:
  explicit Report(std::string title);
  void paragraph(const std::string& text);  // escaped
  void heading(const std::string& text);
  // A table; cells are escaped. `collapsed`: folded away under its caption (<details>).
  void table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows,
             const std::string& caption = "", bool collapsed = false);
  // Embeds OUT/<name>.png (hd::Error if unreadable) and links OUT/<name>.svg.
  void figure(const Figure& fig, const std::string& out_dir);
  // Writes the document atomically.
  void write(const std::string& path) const;

 private:
  std::string title_, body_;
};

// "12.345" style fixed formatting for tables.
std::string fixed(double v, int digits);

}  // namespace hd::analysis
