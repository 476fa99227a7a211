#include "distill/recipe.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "model/checkpoint.h"
#include "util/error.h"

namespace hd::distill {

namespace fs = std::filesystem;

namespace {

// One name table per enum: parsing, messages, to_string and to_yaml all read it.
template <class E>
struct Names;
#define HD_NAMES(E, ...)                                                      \
  template <>                                                                 \
  struct Names<E> {                                                           \
    static constexpr std::pair<const char*, E> table[] = {__VA_ARGS__};       \
  };
HD_NAMES(TargetKind, {"features", TargetKind::Features}, {"block", TargetKind::Block}, {"msa", TargetKind::Msa},
         {"relation", TargetKind::Relation})
HD_NAMES(TargetNorm, {"none", TargetNorm::None}, {"layernorm", TargetNorm::LayerNorm})
HD_NAMES(TargetReduce, {"mean", TargetReduce::Mean}, {"sum", TargetReduce::Sum})
HD_NAMES(HeadMapping, {"none", HeadMapping::None}, {"average", HeadMapping::Average})
HD_NAMES(DecoderKind, {"none", DecoderKind::None}, {"linear", DecoderKind::Linear},
         {"attention", DecoderKind::Attention})
HD_NAMES(MaskStrategy, {"none", MaskStrategy::None}, {"random", MaskStrategy::Random},
         {"direct", MaskStrategy::Direct}, {"progressive", MaskStrategy::Progressive},
         {"mask_tokens", MaskStrategy::MaskTokens})
HD_NAMES(MaskSource, {"input", MaskSource::BlockInput}, {"output", MaskSource::BlockOutput})
#undef HD_NAMES

template <class E>
std::string name_of(E e) {
  for (const auto& [name, v] : Names<E>::table)
    if (v == e) return name;
  return "?";
}

}  // namespace

std::string to_string(TargetKind k) { return name_of(k); }
std::string to_string(TargetNorm n) { return name_of(n); }
std::string to_string(TargetReduce r) { return name_of(r); }
std::string to_string(HeadMapping h) { return name_of(h); }
std::string to_string(DecoderKind d) { return name_of(d); }
std::string to_string(MaskStrategy s) { return name_of(s); }
std::string to_string(MaskSource s) { return name_of(s); }

namespace {

// Walks a YAML tree with the current key path, so every message names the file and the key.
class Reader {
 public:
  Reader(std::string origin) : origin_(std::move(origin)) {}

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw Error(origin_ + ": " + (key.empty() ? std::string() : "'" + key + "': ") + what);
  }

  void only_keys(const YAML::Node& n, const std::string& path, const std::set<std::string>& allowed) const {
    if (!n) return;
    if (!n.IsMap()) fail(path, "must be a mapping");
    std::set<std::string> seen;
    for (const auto& kv : n) {
      auto k = key_name(kv.first, path);
      // YAML parsers disagree on which of two equal keys wins: refuse the contradiction.
      if (!seen.insert(k).second) fail(path.empty() ? k : path + "." + k, "is given twice");
      if (!allowed.count(k)) {
        std::string list;
        for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
        fail(path.empty() ? k : path + "." + k, "unknown key (allowed here: " + list + ")");
      }
    }
  }

  template <class T>
  void get(const YAML::Node& n, const std::string& key, const std::string& path, T& out) const {
    if (!n || !n[key]) return;
    try {
      out = n[key].as<T>();
    } catch (const YAML::Exception&) {
      fail(path.empty() ? key : path + "." + key, "has the wrong type");
    }
  }

  // A mapping key as text; complex keys (lists, mappings) are refused.
  std::string key_name(const YAML::Node& key, const std::string& path) const {
    if (!key.IsScalar()) fail(path, "keys must be plain names");
    return key.Scalar();
  }

  const std::string& origin() const { return origin_; }

 private:
  std::string origin_;
};

// The enum value named `value` (an hd::Error naming the key and the allowed names otherwise);
// `fallback` when the key is absent.
template <class E>
E read_enum(const Reader& r, const YAML::Node& n, const std::string& key, const std::string& path, E fallback) {
  std::string value = name_of(fallback);
  r.get(n, key, path, value);
  std::string list;
  for (const auto& [name, e] : Names<E>::table) {
    if (name == value) return e;
    list += (list.empty() ? "" : ", ") + std::string(name);
  }
  r.fail(path.empty() ? key : path + "." + key, "'" + value + "' is not one of: " + list);
}

// NaN compares false with everything: every range check goes through this.
void check_range(const Reader& r, const std::string& key, double v, double lo, double hi, bool lo_open, bool hi_open,
                 const std::string& what) {
  const bool ok = std::isfinite(v) && (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
  if (!ok) r.fail(key, "must be " + what + " (got " + std::to_string(v) + ")");
}
constexpr double kInf = std::numeric_limits<double>::infinity();

// Plain YAML (maps, lists, scalars) to JSON; scalars become numbers/bools where they parse.
// Nesting is limited: a config is two levels deep, and a YAML alias can refer to itself.
nlohmann::json yaml_to_json(const Reader& r, const YAML::Node& n, const std::string& path, int depth = 0) {
  if (depth > 16) r.fail(path, "is nested too deeply");
  if (n.IsMap()) {
    nlohmann::json j = nlohmann::json::object();
    for (const auto& kv : n) j[r.key_name(kv.first, path)] = yaml_to_json(r, kv.second, path, depth + 1);
    return j;
  }
  if (n.IsSequence()) {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& v : n) j.push_back(yaml_to_json(r, v, path, depth + 1));
    return j;
  }
  if (n.IsNull()) return nullptr;
  int64_t i;
  double d;
  bool b;
  if (YAML::convert<int64_t>::decode(n, i)) return i;
  if (YAML::convert<double>::decode(n, d)) return d;
  if (YAML::convert<bool>::decode(n, b)) return b;
  return n.as<std::string>();
}

}  // namespace

namespace {

void set_path(YAML::Node node, const std::vector<std::string>& parts, size_t i, const YAML::Node& value,
              const std::string& spec) {
  const std::string& k = parts[i];
  const bool last = i + 1 == parts.size();
  auto bad = [&](const std::string& what) { throw Error("override '" + spec + "': " + what); };
  if (node.IsSequence()) {
    size_t idx = node.size();
    if (!k.empty() && k.find_first_not_of("0123456789") == std::string::npos) {
      if (k.size() > 9 || std::stoul(k) >= node.size())
        bad("index " + k + " is out of range (the list has " + std::to_string(node.size()) + ")");
      idx = std::stoul(k);
    } else {
      for (size_t j = 0; j < node.size(); ++j)
        if (node[j].IsMap() && node[j]["name"] && node[j]["name"].IsScalar() && node[j]["name"].Scalar() == k) idx = j;
      if (idx == node.size()) bad("no list element named '" + k + "'");
    }
    if (last) node[idx] = value;
    else set_path(node[idx], parts, i + 1, value, spec);
    return;
  }
  if (!node.IsMap() && !node.IsNull()) bad("'" + k + "' is below a plain value");
  if (last) {
    node[k] = value;
  } else {
    if (!node[k]) node[k] = YAML::Node(YAML::NodeType::Map);
    set_path(node[k], parts, i + 1, value, spec);
  }
}

void apply_override(YAML::Node root, const std::string& spec) {
  const auto eq = spec.find('=');
  if (eq == std::string::npos || eq == 0)
    throw Error("override '" + spec + "': expected KEY=VALUE, e.g. train.epochs=3 or teachers.mim.checkpoint=F");
  std::vector<std::string> parts;
  std::stringstream ss(spec.substr(0, eq));
  for (std::string p; std::getline(ss, p, '.');) {
    if (p.empty()) throw Error("override '" + spec + "': empty key component");
    parts.push_back(p);
  }
  YAML::Node value;
  try {
    value = YAML::Load(spec.substr(eq + 1));
  } catch (const YAML::Exception&) {
    value = YAML::Node(spec.substr(eq + 1));  // not YAML: the plain string
  }
  set_path(root, parts, 0, value, spec);
}

}  // namespace

namespace {

// Every teacher's patch grid must equal the student's (tokens correspond one to one). Reached
// only with an explicit teacher img_size: otherwise the size is derived to match.
void check_grids(const Reader& r, const Recipe& rc, const std::vector<model::ViTConfig>& tcfgs) {
  auto describe = [](const std::string& who, const model::ViTConfig& c) {
    const auto g = std::to_string(c.grid_size());
    return who + " " + std::to_string(c.img_size) + "px in " + std::to_string(c.patch_size) + "px patches (" + g + "x" +
           g + " grid)";
  };
  for (size_t i = 0; i < tcfgs.size(); ++i) {
    if (tcfgs[i].grid_size() == rc.student.grid_size() && tcfgs[i].img_size % tcfgs[i].patch_size == 0) continue;
    std::string all = describe("student", rc.student);
    for (size_t j = 0; j < tcfgs.size(); ++j) all += "; " + describe("teacher '" + rc.teachers[j].name + "'", tcfgs[j]);
    r.fail("teachers." + rc.teachers[i].name + ".img_size",
           "token grids differ: " + all + ". Every teacher's grid must equal the student's (here img_size " +
               std::to_string(rc.student.grid_size() * tcfgs[i].patch_size) + " for '" + rc.teachers[i].name + "')");
  }
}

}  // namespace

namespace {

// --- one reader per section; each checks its keys, values and what they imply

model::ViTConfig read_student(const Reader& r, const YAML::Node& root) {
  auto st = root["student"];
  if (!st) r.fail("student", "is required");
  r.only_keys(st, "student", {"arch", "config", "drop_path"});
  if (st["arch"] && st["config"]) r.fail("student", "give either 'arch' or 'config', not both");
  model::ViTConfig c;
  if (st["arch"]) {
    std::string arch;
    r.get(st, "arch", "student", arch);
    try {
      c = model::preset(arch);
    } catch (const Error& e) {
      r.fail("student.arch", e.what());
    }
  } else if (st["config"]) {
    // The model's own strict reader validates the block (unknown keys, types, consistency).
    try {
      c = model::ViTConfig::from_json(yaml_to_json(r, st["config"], "student.config").dump(),
                                      r.origin() + " (student.config)");
    } catch (const nlohmann::json::exception& e) {  // text that is not UTF-8, a value of the wrong type
      r.fail("student.config", std::string("is not a valid model config (") + e.what() + ")");
    }
  } else {
    r.fail("student", "needs 'arch' (a preset) or 'config'");
  }
  r.get(st, "drop_path", "student", c.drop_path);
  // A distilled student is a backbone (as a timm MAE/CLIP encoder): no classifier head.
  // Fine-tuning and probing attach one.
  c.num_classes = 0;
  try {
    c.validate();
  } catch (const Error& e) {
    r.fail("student", e.what());
  }
  return c;
}

// One target of a teacher (`tc`) for the student `sc`; `tp` is its key path.
TargetSpec read_target(const Reader& r, const YAML::Node& tg, const std::string& tp, const model::ViTConfig& tc,
                       const model::ViTConfig& sc) {
  r.only_keys(tg, tp, {"kind", "layers", "student_layers", "weight", "norm", "relation_scaled", "include_cls",
                       "head_mapping", "decoder", "decoder_depth", "reduce"});
  TargetSpec t;
  t.kind = read_enum(r, tg, "kind", tp, TargetKind::Features);
  r.get(tg, "layers", tp, t.layers);
  r.get(tg, "student_layers", tp, t.student_layers);
  r.get(tg, "weight", tp, t.weight);
  t.reduce = read_enum(r, tg, "reduce", tp, TargetReduce::Mean);
  t.norm = read_enum(r, tg, "norm", tp, TargetNorm::None);
  r.get(tg, "relation_scaled", tp, t.relation_scaled);
  r.get(tg, "include_cls", tp, t.include_cls);
  t.head_mapping = read_enum(r, tg, "head_mapping", tp, HeadMapping::None);
  t.decoder = read_enum(r, tg, "decoder", tp, DecoderKind::None);
  r.get(tg, "decoder_depth", tp, t.decoder_depth);
  if (t.decoder == DecoderKind::Attention && (t.decoder_depth < 1 || t.decoder_depth > 64))
    r.fail(tp + ".decoder_depth", "must be in [1, 64]");
  if (tg["decoder_depth"] && t.decoder != DecoderKind::Attention)
    r.fail(tp + ".decoder_depth", "only an attention decoder has a depth (decoder: attention)");
  if (t.decoder != DecoderKind::None && t.kind == TargetKind::Relation)
    r.fail(tp + ".decoder", "decoders apply to token targets (features, block, msa), not relations");
  check_range(r, tp + ".weight", t.weight, 0, kInf, false, true, ">= 0");
  if (t.kind == TargetKind::Features) {
    if (!t.layers.empty() || !t.student_layers.empty())
      r.fail(tp, "'features' is the teacher's final output; it takes no layers");
  } else {
    if (t.layers.empty()) r.fail(tp + ".layers", "is required for kind '" + to_string(t.kind) + "'");
    if (t.student_layers.empty()) t.student_layers = t.layers;
    if (t.student_layers.size() != t.layers.size())
      r.fail(tp + ".student_layers", "needs one student layer per teacher layer");
    for (auto l : t.layers)
      if (l < 0 || l >= tc.depth)
        r.fail(tp + ".layers", "layer " + std::to_string(l) + " is out of range for the " + std::to_string(tc.depth) +
                                   "-block teacher");
    for (auto l : t.student_layers)
      if (l < 0 || l >= sc.depth)
        r.fail(tp + ".student_layers", "layer " + std::to_string(l) + " is out of range for the " +
                                           std::to_string(sc.depth) + "-block student");
  }
  if (t.kind == TargetKind::Relation && tc.num_heads != sc.num_heads && t.head_mapping == HeadMapping::None)
    r.fail(tp + ".head_mapping", "teacher has " + std::to_string(tc.num_heads) + " heads, student " +
                                     std::to_string(sc.num_heads) + ": choose a mapping (head_mapping: average)");
  return t;
}

// Teacher `ti` of the list; its model config (at the size it will see) goes to `tc`.
TeacherSpec read_teacher(const Reader& r, const YAML::Node& t, size_t ti, const std::string& base_dir,
                         const model::ViTConfig& sc, std::set<std::string>& names, model::ViTConfig& tc) {
  std::string path = "teachers[" + std::to_string(ti) + "]";
  r.only_keys(t, path, {"name", "checkpoint", "arch", "img_size", "mean", "std", "targets"});
  TeacherSpec spec;
  r.get(t, "name", path, spec.name);
  if (spec.name.empty()) r.fail(path + ".name", "is required");
  if (!names.insert(spec.name).second) r.fail(path + ".name", "'" + spec.name + "' is used twice");
  path = "teachers." + spec.name;
  r.get(t, "checkpoint", path, spec.checkpoint);
  if (spec.checkpoint.empty()) r.fail(path + ".checkpoint", "is required");
  if (fs::path(spec.checkpoint).is_relative()) spec.checkpoint = (fs::path(base_dir) / spec.checkpoint).string();
  std::error_code ec;
  if (!fs::exists(spec.checkpoint, ec)) r.fail(path + ".checkpoint", "file not found: " + spec.checkpoint);
  r.get(t, "arch", path, spec.arch);
  r.get(t, "mean", path, spec.mean);
  r.get(t, "std", path, spec.std);
  try {
    tc = model::checkpoint_config(spec.checkpoint, spec.arch);
  } catch (const Error& e) {
    r.fail(path + ".checkpoint", e.what());
  }
  // Each teacher sees its own resolution; token positions correspond when the grids are equal.
  r.get(t, "img_size", path, spec.img_size);
  if (t["img_size"]) {
    if (spec.img_size <= 0 || spec.img_size > 4096 || spec.img_size % tc.patch_size != 0)
      r.fail(path + ".img_size", "must be a positive multiple of the teacher's " + std::to_string(tc.patch_size) +
                                     "px patch (got " + std::to_string(spec.img_size) + ")");
  } else {
    spec.img_size = tc.grid_size() == sc.grid_size() ? tc.img_size : sc.grid_size() * tc.patch_size;
  }
  tc.img_size = spec.img_size;
  if (tc.in_chans != sc.in_chans) r.fail(path, "teacher and student input channels differ");
  if (!spec.mean.empty() && static_cast<int64_t>(spec.mean.size()) != tc.in_chans)
    r.fail(path + ".mean", "needs one value per input channel");
  if (!spec.std.empty() && static_cast<int64_t>(spec.std.size()) != tc.in_chans)
    r.fail(path + ".std", "needs one value per input channel");
  for (double m : spec.mean) check_range(r, path + ".mean", m, -kInf, kInf, true, true, "finite");
  for (double v : spec.std) check_range(r, path + ".std", v, 0, kInf, true, true, "positive");
  auto targets = t["targets"];
  if (!targets || !targets.IsSequence() || targets.size() == 0) r.fail(path + ".targets", "needs at least one target");
  for (size_t k = 0; k < targets.size(); ++k)
    spec.targets.push_back(read_target(r, targets[k], path + ".targets[" + std::to_string(k) + "]", tc, sc));
  return spec;
}

void read_teachers(const Reader& r, const YAML::Node& root, const std::string& base_dir, Recipe& rc,
                   std::vector<model::ViTConfig>& tcfgs) {
  auto ts = root["teachers"];
  if (!ts || !ts.IsSequence() || ts.size() == 0) r.fail("teachers", "needs a list of at least one teacher");
  std::set<std::string> names;
  for (size_t ti = 0; ti < ts.size(); ++ti) {
    model::ViTConfig tc;
    rc.teachers.push_back(read_teacher(r, ts[ti], ti, base_dir, rc.student, names, tc));
    tcfgs.push_back(tc);
  }
  check_grids(r, rc, tcfgs);
}

MaskSpec read_masking(const Reader& r, const YAML::Node& root, const std::vector<TeacherSpec>& teachers,
                      const std::vector<model::ViTConfig>& tcfgs) {
  auto mk = root["masking"];
  r.only_keys(mk, "masking", {"strategy", "teacher", "layers", "drop_ratio", "source"});
  MaskSpec m;
  m.strategy = read_enum(r, mk, "strategy", "masking", MaskStrategy::None);
  r.get(mk, "teacher", "masking", m.teacher);
  r.get(mk, "layers", "masking", m.layers);
  r.get(mk, "drop_ratio", "masking", m.drop_ratio);
  m.source = read_enum(r, mk, "source", "masking", MaskSource::BlockInput);
  check_range(r, "masking.drop_ratio", m.drop_ratio, 0, 1, false, true, "in [0, 1)");
  const bool driven = m.strategy == MaskStrategy::Progressive || m.strategy == MaskStrategy::Direct;
  for (const char* key : {"teacher", "source"})
    if (!driven && mk && mk[key])
      r.fail(std::string("masking.") + key,
             "only progressive and direct masking are driven by a teacher's layers (strategy is '" +
                 to_string(m.strategy) + "')");
  if (m.strategy == MaskStrategy::MaskTokens && m.drop_ratio <= 0)
    r.fail("masking.drop_ratio", "mask_tokens needs a mask ratio > 0 (the share of positions to reconstruct)");
  if (!driven) {
    if (mk && mk["layers"]) r.fail("masking.layers", "only progressive and direct masking use layers");
    return m;
  }
  if (m.teacher.empty()) m.teacher = teachers.front().name;
  size_t ti = 0;
  while (ti < teachers.size() && teachers[ti].name != m.teacher) ++ti;
  if (ti == teachers.size()) r.fail("masking.teacher", "no teacher named '" + m.teacher + "'");
  const int64_t L = tcfgs[ti].depth;
  if (m.layers.empty()) {
    if (m.strategy == MaskStrategy::Progressive) m.layers = {0, L / 3, 2 * L / 3};
    else m.layers = {L - 1};
  }
  for (auto l : m.layers)
    if (l < 0 || l >= L)
      r.fail("masking.layers", "layer " + std::to_string(l) + " is out of range for teacher '" + m.teacher + "'");
  for (size_t i = 1; i < m.layers.size(); ++i)
    if (m.layers[i] <= m.layers[i - 1]) r.fail("masking.layers", "must be strictly increasing");
  return m;
}

double read_loss(const Reader& r, const YAML::Node& root, double beta) {
  auto ls = root["loss"];
  r.only_keys(ls, "loss", {"type", "beta"});
  std::string ltype = "smooth_l1";
  r.get(ls, "type", "loss", ltype);
  if (ltype != "smooth_l1") r.fail("loss.type", "only smooth_l1 is implemented");
  r.get(ls, "beta", "loss", beta);
  check_range(r, "loss.beta", beta, 0, kInf, false, true, ">= 0");
  return beta;
}

OptimSpec read_optim(const Reader& r, const YAML::Node& root, OptimSpec o) {
  auto op = root["optim"];
  r.only_keys(op, "optim", {"lr", "base_batch", "min_lr", "weight_decay", "betas", "eps", "warmup_epochs", "clip_grad"});
  r.get(op, "lr", "optim", o.lr);
  r.get(op, "base_batch", "optim", o.base_batch);
  r.get(op, "min_lr", "optim", o.min_lr);
  r.get(op, "weight_decay", "optim", o.weight_decay);
  std::vector<double> betas;
  r.get(op, "betas", "optim", betas);
  if (!betas.empty()) {
    if (betas.size() != 2) r.fail("optim.betas", "needs two values");
    o.beta1 = betas[0];
    o.beta2 = betas[1];
  }
  r.get(op, "eps", "optim", o.eps);
  r.get(op, "warmup_epochs", "optim", o.warmup_epochs);
  r.get(op, "clip_grad", "optim", o.clip_grad);
  check_range(r, "optim.lr", o.lr, 0, kInf, true, true, "positive");
  if (o.base_batch <= 0) r.fail("optim.base_batch", "must be positive");
  check_range(r, "optim.min_lr", o.min_lr, 0, o.lr, false, false, "in [0, lr]");
  check_range(r, "optim.weight_decay", o.weight_decay, 0, kInf, false, true, ">= 0");
  check_range(r, "optim.betas", o.beta1, 0, 1, false, true, "in [0, 1)");
  check_range(r, "optim.betas", o.beta2, 0, 1, false, true, "in [0, 1)");
  check_range(r, "optim.eps", o.eps, 0, kInf, true, true, "positive");
  check_range(r, "optim.warmup_epochs", o.warmup_epochs, 0, kInf, false, true, ">= 0");
  check_range(r, "optim.clip_grad", o.clip_grad, 0, kInf, false, true, ">= 0 (0: off)");
  return o;
}

DataSpec read_data(const Reader& r, const YAML::Node& root, DataSpec d) {
  auto dt = root["data"];
  r.only_keys(dt, "data", {"dataset", "split", "augment", "scale", "hflip", "workers", "seed"});
  r.get(dt, "dataset", "data", d.dataset);
  r.get(dt, "split", "data", d.split);
  r.get(dt, "augment", "data", d.augment);
  std::vector<double> scale;
  r.get(dt, "scale", "data", scale);
  if (!scale.empty()) {
    if (scale.size() != 2 || !(scale[0] > 0) || !(scale[0] <= scale[1]) || !(scale[1] <= 1))
      r.fail("data.scale", "needs [min, max] with 0 < min <= max <= 1");
    d.scale_min = scale[0];
    d.scale_max = scale[1];
  }
  r.get(dt, "hflip", "data", d.hflip);
  r.get(dt, "workers", "data", d.workers);
  if (dt && dt["seed"]) {
    uint64_t seed = 0;
    r.get(dt, "seed", "data", seed);
    d.seed = seed;
  }
  if (d.dataset.empty()) r.fail("data.dataset", "must not be empty");
  check_range(r, "data.hflip", d.hflip, 0, 1, false, false, "a probability in [0, 1]");
  if (d.workers < 0 || d.workers > 256) r.fail("data.workers", "must be in [0, 256]");
  return d;
}

void read_train(const Reader& r, const YAML::Node& root, Recipe& rc) {
  auto tr = root["train"];
  r.only_keys(tr, "train", {"epochs", "max_steps", "batch", "seed", "log_every", "checkpoint_every"});
  r.get(tr, "epochs", "train", rc.epochs);
  r.get(tr, "max_steps", "train", rc.max_steps);
  r.get(tr, "batch", "train", rc.batch);
  r.get(tr, "seed", "train", rc.seed);
  r.get(tr, "log_every", "train", rc.log_every);
  r.get(tr, "checkpoint_every", "train", rc.checkpoint_every);
  if (rc.epochs <= 0) r.fail("train.epochs", "must be positive");
  if (rc.batch <= 0) r.fail("train.batch", "must be positive");
  if (rc.max_steps < 0) r.fail("train.max_steps", "must be >= 0");
  if (rc.log_every < 0) r.fail("train.log_every", "must be >= 0");
  if (rc.checkpoint_every < 0) r.fail("train.checkpoint_every", "must be >= 0 (0: at epoch ends only)");
}

}  // namespace

Recipe parse_recipe(const std::string& text, const std::string& origin, const std::string& base_dir,
                    const std::vector<std::string>& overrides) {
  Reader r(origin);
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw Error(origin + ": not valid YAML: " + e.what());
  }
  if (!root.IsMap()) throw Error(origin + ": a recipe must be a YAML mapping");
  for (const auto& o : overrides) apply_override(root, o);
  r.only_keys(root, "", {"name", "student", "teachers", "masking", "loss", "optim", "data", "train"});

  Recipe rc;
  rc.origin = origin;
  r.get(root, "name", "", rc.name);
  rc.student = read_student(r, root);
  std::vector<model::ViTConfig> tcfgs;
  read_teachers(r, root, base_dir, rc, tcfgs);
  rc.mask = read_masking(r, root, rc.teachers, tcfgs);
  rc.smooth_l1_beta = read_loss(r, root, rc.smooth_l1_beta);
  rc.optim = read_optim(r, root, rc.optim);
  rc.data = read_data(r, root, rc.data);
  read_train(r, root, rc);
  return rc;
}

std::string Recipe::to_yaml() const {
  YAML::Emitter e;
  e << YAML::BeginMap;
  e << YAML::Key << "name" << YAML::Value << name;
  // The student as a full config: the effective architecture, whatever preset it came from.
  e << YAML::Key << "student" << YAML::Value << YAML::BeginMap << YAML::Key << "config" << YAML::Value
    << YAML::Load(student.to_json()) << YAML::EndMap;
  e << YAML::Key << "teachers" << YAML::Value << YAML::BeginSeq;
  for (const auto& t : teachers) {
    e << YAML::BeginMap << YAML::Key << "name" << YAML::Value << t.name << YAML::Key << "checkpoint" << YAML::Value
      << t.checkpoint;
    if (!t.arch.empty()) e << YAML::Key << "arch" << YAML::Value << t.arch;
    if (t.img_size > 0) e << YAML::Key << "img_size" << YAML::Value << t.img_size;
    if (!t.mean.empty()) e << YAML::Key << "mean" << YAML::Value << YAML::Flow << t.mean;
    if (!t.std.empty()) e << YAML::Key << "std" << YAML::Value << YAML::Flow << t.std;
    e << YAML::Key << "targets" << YAML::Value << YAML::BeginSeq;
    for (const auto& g : t.targets) {
      e << YAML::Flow << YAML::BeginMap << YAML::Key << "kind" << YAML::Value << to_string(g.kind);
      if (g.kind != TargetKind::Features) {
        e << YAML::Key << "layers" << YAML::Value << YAML::Flow << g.layers;
        e << YAML::Key << "student_layers" << YAML::Value << YAML::Flow << g.student_layers;
      }
      e << YAML::Key << "weight" << YAML::Value << g.weight;
      if (g.kind != TargetKind::Features) e << YAML::Key << "reduce" << YAML::Value << to_string(g.reduce);
      e << YAML::Key << "norm" << YAML::Value << to_string(g.norm);
      if (g.kind == TargetKind::Relation) {
        e << YAML::Key << "relation_scaled" << YAML::Value << g.relation_scaled;
        e << YAML::Key << "head_mapping" << YAML::Value << to_string(g.head_mapping);
      } else {
        e << YAML::Key << "decoder" << YAML::Value << to_string(g.decoder);
        if (g.decoder == DecoderKind::Attention) e << YAML::Key << "decoder_depth" << YAML::Value << g.decoder_depth;
      }
      e << YAML::Key << "include_cls" << YAML::Value << g.include_cls;
      e << YAML::EndMap;
    }
    e << YAML::EndSeq << YAML::EndMap;
  }
  e << YAML::EndSeq;
  e << YAML::Key << "masking" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "strategy" << YAML::Value
    << to_string(mask.strategy) << YAML::Key << "drop_ratio" << YAML::Value << mask.drop_ratio;
  if (mask.strategy == MaskStrategy::Progressive || mask.strategy == MaskStrategy::Direct)
    e << YAML::Key << "teacher" << YAML::Value << mask.teacher << YAML::Key << "layers" << YAML::Value << YAML::Flow
      << mask.layers << YAML::Key << "source" << YAML::Value
      << to_string(mask.source);
  e << YAML::EndMap;
  e << YAML::Key << "loss" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "type" << YAML::Value
    << "smooth_l1" << YAML::Key << "beta" << YAML::Value << smooth_l1_beta << YAML::EndMap;
  e << YAML::Key << "optim" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "lr" << YAML::Value
    << optim.lr << YAML::Key << "base_batch" << YAML::Value << optim.base_batch << YAML::Key << "min_lr"
    << YAML::Value << optim.min_lr << YAML::Key << "weight_decay" << YAML::Value << optim.weight_decay << YAML::Key
    << "betas" << YAML::Value << YAML::Flow << std::vector<double>{optim.beta1, optim.beta2} << YAML::Key << "eps"
    << YAML::Value << optim.eps << YAML::Key << "warmup_epochs" << YAML::Value << optim.warmup_epochs << YAML::Key
    << "clip_grad" << YAML::Value << optim.clip_grad << YAML::EndMap;
  e << YAML::Key << "data" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "dataset" << YAML::Value
    << data.dataset << YAML::Key << "split" << YAML::Value << data.split << YAML::Key << "augment" << YAML::Value
    << data.augment << YAML::Key << "scale" << YAML::Value << YAML::Flow
    << std::vector<double>{data.scale_min, data.scale_max} << YAML::Key << "hflip" << YAML::Value << data.hflip
    << YAML::Key << "workers" << YAML::Value << data.workers;
  // Only when set: recipes without it keep their effective text (and --resume its hash).
  if (data.seed) e << YAML::Key << "seed" << YAML::Value << *data.seed;
  e << YAML::EndMap;
  e << YAML::Key << "train" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "epochs" << YAML::Value
    << epochs << YAML::Key << "max_steps" << YAML::Value << max_steps << YAML::Key << "batch" << YAML::Value << batch
    << YAML::Key << "seed" << YAML::Value << seed << YAML::Key << "log_every" << YAML::Value << log_every << YAML::Key
    << "checkpoint_every" << YAML::Value << checkpoint_every << YAML::EndMap;
  e << YAML::EndMap;
  return std::string(e.c_str()) + "\n";
}

Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path);
  if (!in) throw Error(path + ": cannot open recipe");
  std::stringstream ss;
  ss << in.rdbuf();
  auto dir = fs::path(path).parent_path();
  return parse_recipe(ss.str(), path, dir.empty() ? "." : dir.string(), overrides);
}

}  // namespace hd::distill
