#include "analysis/plots.h"

#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <torch/torch.h>

#include "util/atomic_file.h"
#include "util/error.h"

namespace fs = std::filesystem;

namespace hd::analysis {

namespace {

const char* const kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
constexpr size_t kPaletteSize = sizeof(kPalette) / sizeof(kPalette[0]);

// For the shell: 'text' with embedded single quotes closed, escaped and reopened.
std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// For gnuplot: a single-quoted string ('' stands for one quote).
std::string gp_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
  f.close();
  if (!f) throw Error(path + ": cannot write");
}

std::string gnuplot_dir(const std::string& out_dir) {
  auto d = fs::path(out_dir) / "gnuplot";
  std::error_code ec;
  fs::create_directories(d, ec);
  if (ec) throw Error(d.string() + ": cannot create folder: " + ec.message());
  return d.string();
}

// The script draws `body` twice: to ../<name>.png and to ../<name>.svg.
std::string two_terminals(const std::string& name, int width, int height, const std::string& body) {
  std::ostringstream s;
  s << "# Draws " << name << ".png and " << name << ".svg (run from this folder: gnuplot " << name << ".gp)\n";
  s << "set terminal pngcairo size " << width << "," << height << " noenhanced font 'Sans,11'\n";
  s << "set output " << gp_quote("../" + name + ".png") << "\n" << body << "unset output\n";
  s << "set terminal svg size " << width << "," << height << " noenhanced font 'Sans,11' background rgb 'white'\n";
  s << "set output " << gp_quote("../" + name + ".svg") << "\n" << body << "unset output\n";
  return s.str();
}

void render(const std::string& out_dir, const std::string& name, const std::string& data, const std::string& script) {
  auto dir = gnuplot_dir(out_dir);
  if (!data.empty()) write_text((fs::path(dir) / (name + ".dat")).string(), data);
  write_text((fs::path(dir) / (name + ".gp")).string(), script);
  run_gnuplot(dir, name + ".gp");
  for (const char* ext : {".png", ".svg"}) {
    auto p = fs::path(out_dir) / (name + ext);
    std::error_code ec;
    if (!fs::exists(p) || fs::file_size(p, ec) == 0)
      throw Error(p.string() + ": gnuplot reported success but wrote no figure (see " + dir + "/" + name + ".gp.log)");
  }
}

struct XRange {
  double lo, hi;
  int64_t depth;
};

XRange layer_range(const std::vector<Series>& series) {
  int64_t lo = 0, hi = 0;
  bool first = true;
  for (const auto& s : series)
    for (auto l : s.diagnostics.layers) {
      lo = first ? l : std::min(lo, l);
      hi = first ? l : std::max(hi, l);
      first = false;
    }
  return {static_cast<double>(lo) - 0.6, static_cast<double>(hi) + 0.6, hi - lo + 1};
}

double series_offset(size_t i, size_t n) {
  if (n <= 1) return 0.0;
  double step = std::min(0.15, 0.6 / static_cast<double>(n));
  return (static_cast<double>(i) - (static_cast<double>(n) - 1) / 2) * step;
}

// Per-head points (index 2i) and layer means (index 2i+1) of each series.
std::string per_head_data(const std::vector<Series>& series, bool distance) {
  std::ostringstream s;
  s.precision(9);
  for (size_t i = 0; i < series.size(); ++i) {
    const auto& d = series[i].diagnostics;
    const auto& table = distance ? d.head_distance : d.nmi;
    auto means = distance ? d.head_distance_mean() : d.nmi_mean();
    double off = series_offset(i, series.size());
    s << "# " << series[i].label << ": x layer head value\n";
    for (size_t l = 0; l < d.layers.size(); ++l)
      for (size_t h = 0; h < table[l].size(); ++h)
        s << d.layers[l] + off << " " << d.layers[l] << " " << h << " " << table[l][h] << "\n";
    s << "\n\n# " << series[i].label << ": x layer mean\n";
    for (size_t l = 0; l < d.layers.size(); ++l) s << d.layers[l] + off << " " << d.layers[l] << " " << means[l] << "\n";
    s << "\n\n";
  }
  return s.str();
}

std::string axes(const XRange& r, bool single) {
  std::ostringstream s;
  s << "set xrange [" << r.lo << ":" << r.hi << "]\n";
  s << "set xtics " << (r.depth > 24 ? 2 : 1) << "\n";
  s << "set xlabel 'layer (0-based block index)'\n";
  s << "set grid xtics ytics lc rgb '#e0e0e0' lw 1\n";
  s << (single ? "set key outside right top\n" : "set key below\nset bmargin 6\n");
  return s.str();
}

// Jet-like colour map, t in [0,1].
void jet(double t, int& r, int& g, int& b) {
  auto ch = [](double v) { return static_cast<int>(std::lround(255 * std::clamp(v, 0.0, 1.0))); };
  r = ch(1.5 - std::fabs(4 * t - 3));
  g = ch(1.5 - std::fabs(4 * t - 2));
  b = ch(1.5 - std::fabs(4 * t - 1));
}

// Dashed grey lines at the uniform-attention value of each distinct grid among the series.
std::string uniform_lines(const std::vector<Series>& series, bool distance) {
  std::vector<std::pair<double, std::string>> lines;
  for (const auto& s : series) {
    if (!s.uniform) continue;
    const auto& u = *s.uniform;
    double v = distance ? u.head_distance : u.nmi;
    std::string grid = std::to_string(u.grid_h) + "x" + std::to_string(u.grid_w) + " grid";
    std::string title = "uniform attention, " + grid + ": " + (distance ? fixed(v, 2) + " px" : fixed(v, 2));
    bool seen = false;
    for (const auto& l : lines) seen = seen || l.second == title;
    if (!seen) lines.emplace_back(v, title);
  }
  std::ostringstream b;
  b.precision(9);
  for (const auto& [v, title] : lines)
    b << ", \\\n     " << v << " with lines dt 3 lw 1.5 lc rgb '#707070' title " << gp_quote(title);
  return b.str();
}

}  // namespace

void check_gnuplot() {
  int rc = std::system("gnuplot -e 'set terminal pngcairo; set terminal svg' >/dev/null 2>&1");
  if (rc == -1) throw Error("cannot run a shell to start gnuplot");
  if (WIFEXITED(rc) && WEXITSTATUS(rc) == 127)
    throw Error("gnuplot was not found on PATH: the figures need it (Debian package gnuplot-nox; "
                "scripts/setup.sh installs it), or pass --no-plots for the numbers alone");
  if (!WIFEXITED(rc) || WEXITSTATUS(rc) != 0)
    throw Error("gnuplot lacks the pngcairo or svg terminal (install Debian package gnuplot-nox), "
                "or pass --no-plots for the numbers alone");
}

void run_gnuplot(const std::string& dir, const std::string& script) {
  const std::string log = script + ".log";
  const std::string cmd = "cd " + shell_quote(dir) + " && gnuplot " + shell_quote(script) + " 2>" + shell_quote(log);
  int rc = std::system(cmd.c_str());
  if (rc == -1) throw Error(dir + "/" + script + ": cannot run a shell to start gnuplot");
  if (WIFEXITED(rc) && WEXITSTATUS(rc) == 0) return;
  std::string path = (fs::path(dir) / script).string();
  if (WIFEXITED(rc) && WEXITSTATUS(rc) == 127)
    throw Error(path + ": gnuplot was not found on PATH (Debian package gnuplot-nox)");
  std::string text = read_text((fs::path(dir) / log).string());
  if (text.size() > 800) text = "..." + text.substr(text.size() - 800);
  throw Error(path + ": gnuplot failed (" +
              (WIFEXITED(rc) ? "exit status " + std::to_string(WEXITSTATUS(rc)) : std::string("killed")) + "): " + text);
}

Figure plot_head_distance(const std::vector<Series>& series, const std::string& out_dir, const std::string& title) {
  if (series.empty()) throw Error("plot_head_distance: nothing to plot");
  Figure fig{"head_distance", "Average attention distance per head",
             "One point per head: the attention-weighted Euclidean distance between query and key patches, in "
             "pixels, averaged over queries and images (CLS excluded, rows renormalised). Lines: layer means."};
  auto r = layer_range(series);
  std::ostringstream b;
  b << "set title " << gp_quote(title) << "\n" << axes(r, series.size() == 1);
  b << "set ylabel 'average attention distance (pixels)'\nset yrange [0:*]\n";
  b << "plot ";
  const bool single = series.size() == 1;
  for (size_t i = 0; i < series.size(); ++i) {
    std::string c = kPalette[i % kPaletteSize];
    if (i) b << ", \\\n     ";
    b << "'head_distance.dat' index " << 2 * i << " using 1:4 with points pt 7 ps 0.9 lc rgb '" << c << "' title "
      << gp_quote(single ? "head" : series[i].label) << ", \\\n     ";
    b << "'' index " << 2 * i + 1 << " using 1:3 with lines lw 2 dt " << (single ? 1 : 2) << " lc rgb '" << c << "' "
      << (single ? "title 'layer mean'" : "notitle");
  }
  b << uniform_lines(series, true) << "\n";
  render(out_dir, fig.name, per_head_data(series, true), two_terminals(fig.name, 900, 520, b.str()));
  return fig;
}

Figure plot_nmi(const std::vector<Series>& series, const std::string& out_dir, const std::string& title) {
  if (series.empty()) throw Error("plot_nmi: nothing to plot");
  Figure fig{"nmi", "Normalised mutual information between query and key",
             "NMI = I(q;k) / sqrt(H(q) H(k)) of each head's attention over patch tokens, per image, averaged over "
             "images. Lines: layer means; faint points: heads. High NMI: attention depends on the query (local, "
             "diverse); low NMI: every query attends to the same keys."};
  auto r = layer_range(series);
  std::ostringstream b;
  b << "set title " << gp_quote(title) << "\n" << axes(r, series.size() == 1);
  b << "set ylabel 'NMI'\nset yrange [0:*]\n";
  b << "plot ";
  const bool single = series.size() == 1;
  for (size_t i = 0; i < series.size(); ++i) {
    std::string c = kPalette[i % kPaletteSize];
    if (i) b << ", \\\n     ";
    // Faint points: gnuplot reads '#AARRGGBB', AA being the transparency.
    b << "'nmi.dat' index " << 2 * i << " using 1:4 with points pt 7 ps 0.6 lc rgb '#88" << c.substr(1)
      << "' notitle, \\\n     ";
    b << "'' index " << 2 * i + 1 << " using 1:3 with linespoints pt 7 ps 1.1 lw 2 lc rgb '" << c << "' title "
      << gp_quote(single ? "layer mean" : series[i].label);
  }
  b << uniform_lines(series, false) << "\n";
  std::string script = two_terminals(fig.name, 900, 520, b.str());
  render(out_dir, fig.name, per_head_data(series, false), script);
  return fig;
}

Figure plot_attention_maps(const AttentionMaps& m, int64_t k, const std::string& out_dir) {
  if (!m.images.defined() || k < 0 || k >= m.images.size(0)) throw Error("plot_attention_maps: no image " + std::to_string(k));
  const std::string name = "attention_maps_" + std::to_string(k);
  Figure fig{name, "Attention maps, image " + std::to_string(k),
             "Rows: query patches (outlined). First column: the input; then one column per layer: the query's "
             "attention over patch tokens, mean over heads, CLS excluded and rows renormalised, shown as a colour "
             "map from blue (the map's minimum) to red (its maximum) whose opacity grows with the attention. The "
             "title gives the maximum as a multiple of uniform attention (1/N): near 1x, the map is almost flat."};
  const int64_t C = m.images.size(1), H = m.images.size(2), W = m.images.size(3);
  const int64_t L = static_cast<int64_t>(m.layers.size()), Q = static_cast<int64_t>(m.queries.size());
  const double ps = static_cast<double>(m.patch_size);

  // Image pixels (x y r g b, pixel centres) and the maps (x y r g b a at patch centres), one data
  // block per (layer, query).
  auto img = (m.images[k].to(torch::kDouble) * 255.0).round().clamp(0, 255).to(torch::kInt).contiguous();
  const int* ip = img.data_ptr<int>();
  std::ostringstream di;
  for (int64_t y = 0; y < H; ++y) {
    for (int64_t x = 0; x < W; ++x) {
      int r = ip[(0 * H + y) * W + x];
      int g = C == 3 ? ip[(1 * H + y) * W + x] : r, bl = C == 3 ? ip[(2 * H + y) * W + x] : r;
      di << x + 0.5 << " " << y + 0.5 << " " << r << " " << g << " " << bl << "\n";
    }
    di << "\n";
  }
  auto maps = m.maps[k].to(torch::kDouble).contiguous();  // [L,Q,h,w]
  std::ostringstream dm;
  std::vector<double> peak(static_cast<size_t>(L * Q));
  for (int64_t l = 0; l < L; ++l)
    for (int64_t q = 0; q < Q; ++q) {
      auto a = maps[l][q];
      double mx = a.max().item<double>(), mn = a.min().item<double>();
      peak[static_cast<size_t>(l * Q + q)] = mx;
      auto acc = a.accessor<double, 2>();
      dm << "# layer " << m.layers[static_cast<size_t>(l)] << " query " << m.queries[static_cast<size_t>(q)] << "\n";
      for (int64_t r = 0; r < m.grid_h; ++r) {
        for (int64_t c = 0; c < m.grid_w; ++c) {
          double t = mx > mn ? (acc[r][c] - mn) / (mx - mn) : 0.0;
          int cr, cg, cb;
          jet(t, cr, cg, cb);
          int alpha = static_cast<int>(std::lround(255 * (0.15 + 0.55 * t)));
          dm << (c + 0.5) * ps << " " << (r + 0.5) * ps << " " << cr << " " << cg << " " << cb << " " << alpha << "\n";
        }
        dm << "\n";
      }
      dm << "\n";
    }
  auto dir = gnuplot_dir(out_dir);
  write_text((fs::path(dir) / (name + "_image.dat")).string(), di.str());

  const int panel = 210, top = 56, gap = 30;
  const int width = static_cast<int>((L + 1) * panel), height = static_cast<int>(Q * (panel + gap) + top);
  std::ostringstream b;
  b << "set multiplot layout " << Q << "," << L + 1 << " title 'image " << k << ": attention of the query patch"
    << " (mean over heads)' margins 0.01,0.99,0.01," << 1.0 - static_cast<double>(top - gap) / height << " spacing 0.015,"
    << static_cast<double>(gap) / height << "\n";
  b << "unset key\nunset tics\nunset border\nunset colorbox\nset size ratio -1\n";
  b << "set xrange [0:" << W << "]\nset yrange [" << H << ":0]\n";
  for (int64_t q = 0; q < Q; ++q) {
    const int64_t cell = m.queries[static_cast<size_t>(q)];
    const int64_t qr = cell / m.grid_w, qc = cell % m.grid_w;
    b << "set object 1 rectangle from " << qc * ps << "," << qr * ps << " to " << (qc + 1) * ps << "," << (qr + 1) * ps
      << " front fillstyle empty border lc rgb '#00ff40' lw 2\n";
    b << "set title 'input, query (" << qr << "," << qc << ")' font ',10'\n";
    b << "plot '" << name << "_image.dat' with rgbimage\n";
    for (int64_t l = 0; l < L; ++l) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.2f", peak[static_cast<size_t>(l * Q + q)] * m.grid_h * m.grid_w);
      b << "set title 'layer " << m.layers[static_cast<size_t>(l)] << " (max " << buf << "x uniform)' font ',10'\n";
      b << "plot '" << name << "_image.dat' with rgbimage, '" << name << ".dat' index " << l * Q + q
        << " with rgbalpha\n";
    }
    b << "unset object 1\n";
  }
  b << "unset multiplot\n";
  render(out_dir, name, dm.str(), two_terminals(name, width, height, b.str()));
  return fig;
}

std::string base64(const std::string& bytes) {
  static const char* tbl = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    uint32_t v = (uint32_t(uint8_t(bytes[i])) << 16) | (uint32_t(uint8_t(bytes[i + 1])) << 8) | uint8_t(bytes[i + 2]);
    out += tbl[v >> 18];
    out += tbl[(v >> 12) & 63];
    out += tbl[(v >> 6) & 63];
    out += tbl[v & 63];
  }
  if (i < bytes.size()) {
    uint32_t v = uint32_t(uint8_t(bytes[i])) << 16;
    if (i + 1 < bytes.size()) v |= uint32_t(uint8_t(bytes[i + 1])) << 8;
    out += tbl[v >> 18];
    out += tbl[(v >> 12) & 63];
    out += i + 1 < bytes.size() ? tbl[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

Report::Report(std::string title) : title_(std::move(title)) {}

void Report::paragraph(const std::string& text) { body_ += "<p>" + html_escape(text) + "</p>\n"; }

void Report::heading(const std::string& text) { body_ += "<h2>" + html_escape(text) + "</h2>\n"; }

void Report::table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows,
                   const std::string& caption, bool collapsed) {
  if (collapsed) body_ += "<details><summary>" + html_escape(caption) + "</summary>\n";
  body_ += "<table>\n";
  if (!caption.empty() && !collapsed) body_ += "<caption>" + html_escape(caption) + "</caption>\n";
  body_ += "<tr>";
  for (const auto& h : header) body_ += "<th>" + html_escape(h) + "</th>";
  body_ += "</tr>\n";
  for (const auto& row : rows) {
    body_ += "<tr>";
    for (const auto& c : row) body_ += "<td>" + html_escape(c) + "</td>";
    body_ += "</tr>\n";
  }
  body_ += "</table>\n";
  if (collapsed) body_ += "</details>\n";
}

void Report::figure(const Figure& fig, const std::string& out_dir) {
  auto png = (fs::path(out_dir) / (fig.name + ".png")).string();
  std::string bytes = read_text(png);
  if (bytes.empty()) throw Error(png + ": missing or empty, cannot embed it in the report");
  body_ += "<h2>" + html_escape(fig.title) + "</h2>\n<figure id=\"fig-" + html_escape(fig.name) + "\">\n";
  body_ += "<img alt=\"" + html_escape(fig.name) + ".png\" src=\"data:image/png;base64," + base64(bytes) + "\">\n";
  body_ += "<figcaption>" + html_escape(fig.caption) + " Vector version: <a href=\"" + html_escape(fig.name) +
           ".svg\">" + html_escape(fig.name) + ".svg</a>.</figcaption>\n</figure>\n";
}

void Report::write(const std::string& path) const {
  std::string doc =
      "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>" + html_escape(title_) +
      "</title>\n<style>\n"
      "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}\n"
      "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}\n"
      "th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}caption{text-align:left;padding:4px 0}\n"
      "img{max-width:100%;height:auto;border:1px solid #eee}figcaption{color:#555;font-size:90%}\n"
      "details{margin:1em 0}\n</style>\n</head>\n<body>\n<h1>" +
      html_escape(title_) + "</h1>\n" + body_ + "</body>\n</html>\n";
  atomic_write_file(path, [&](std::FILE* f) { std::fwrite(doc.data(), 1, doc.size(), f); });
}

}  // namespace hd::analysis
