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

std::string to_string(TargetKind k) {
  switch (k) {
    case TargetKind::Features: return "features";
    case TargetKind::Block: return "block";
    case TargetKind::Msa: return "msa";
    case TargetKind::Relation: return "relation";
  }
  return "?";
}

std::string to_string(MaskStrategy s) {
  switch (s) {
    case MaskStrategy::None: return "none";
    case MaskStrategy::Random: return "random";
    case MaskStrategy::Direct: return "direct";
    case MaskStrategy::Progressive: return "progressive";
    case MaskStrategy::MaskTokens: return "mask_tokens";
  }
  return "?";
}

std::string to_string(TargetReduce r) { return r == TargetReduce::Sum ? "sum" : "mean"; }

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

template <class E>
E parse_enum(const Reader& r, const std::string& key, const std::string& value,
             const std::vector<std::pair<std::string, E>>& options) {
  std::string list;
  for (const auto& [name, e] : options) {
    if (name == value) return e;
    list += (list.empty() ? "" : ", ") + name;
  }
  r.fail(key, "'" + value + "' is not one of: " + list);
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

  // --- student
  auto st = root["student"];
  if (!st) r.fail("student", "is required");
  r.only_keys(st, "student", {"arch", "config", "drop_path"});
  if (st["arch"] && st["config"]) r.fail("student", "give either 'arch' or 'config', not both");
  if (st["arch"]) {
    std::string arch;
    r.get(st, "arch", "student", arch);
    try {
      rc.student = model::preset(arch);
    } catch (const Error& e) {
      r.fail("student.arch", e.what());
    }
  } else if (st["config"]) {
    // The model's own strict reader validates the block (unknown keys, types, consistency).
    try {
      rc.student = model::ViTConfig::from_json(yaml_to_json(r, st["config"], "student.config").dump(),
                                               origin + " (student.config)");
    } catch (const nlohmann::json::exception& e) {  // text that is not UTF-8, a value of the wrong type
      r.fail("student.config", std::string("is not a valid model config (") + e.what() + ")");
    }
  } else {
    r.fail("student", "needs 'arch' (a preset) or 'config'");
  }
  r.get(st, "drop_path", "student", rc.student.drop_path);
  // A distilled student is a backbone (as a timm MAE/CLIP encoder): no classifier head.
  // Fine-tuning and probing attach one.
  rc.student.num_classes = 0;
  try {
    rc.student.validate();
  } catch (const Error& e) {
    r.fail("student", e.what());
  }

  // --- teachers
  auto ts = root["teachers"];
  if (!ts || !ts.IsSequence() || ts.size() == 0) r.fail("teachers", "needs a list of at least one teacher");
  std::set<std::string> names;
  std::vector<model::ViTConfig> tcfgs;
  for (size_t ti = 0; ti < ts.size(); ++ti) {
    auto t = ts[ti];
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
    model::ViTConfig tc;
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
      spec.img_size = tc.grid_size() == rc.student.grid_size() ? tc.img_size : rc.student.grid_size() * tc.patch_size;
    }
    tc.img_size = spec.img_size;
    if (tc.in_chans != rc.student.in_chans) r.fail(path, "teacher and student input channels differ");
    if (!spec.mean.empty() && static_cast<int64_t>(spec.mean.size()) != tc.in_chans)
      r.fail(path + ".mean", "needs one value per input channel");
    if (!spec.std.empty() && static_cast<int64_t>(spec.std.size()) != tc.in_chans)
      r.fail(path + ".std", "needs one value per input channel");
    for (double m : spec.mean) check_range(r, path + ".mean", m, -kInf, kInf, true, true, "finite");
    for (double v : spec.std) check_range(r, path + ".std", v, 0, kInf, true, true, "positive");
    auto targets = t["targets"];
    if (!targets || !targets.IsSequence() || targets.size() == 0) r.fail(path + ".targets", "needs at least one target");
    for (size_t k = 0; k < targets.size(); ++k) {
      auto tg = targets[k];
      std::string tp = path + ".targets[" + std::to_string(k) + "]";
      r.only_keys(tg, tp, {"kind", "layers", "student_layers", "weight", "norm", "relation_scaled", "include_cls",
                           "head_mapping", "decoder", "decoder_depth", "reduce"});
      TargetSpec ts_;
      std::string kind = "features", norm = "none", hm = "none";
      r.get(tg, "kind", tp, kind);
      ts_.kind = parse_enum<TargetKind>(r, tp + ".kind", kind,
                                        {{"features", TargetKind::Features}, {"block", TargetKind::Block},
                                         {"msa", TargetKind::Msa}, {"relation", TargetKind::Relation}});
      r.get(tg, "layers", tp, ts_.layers);
      r.get(tg, "student_layers", tp, ts_.student_layers);
      r.get(tg, "weight", tp, ts_.weight);
      std::string reduce = "mean";
      r.get(tg, "reduce", tp, reduce);
      ts_.reduce = parse_enum<TargetReduce>(r, tp + ".reduce", reduce, {{"mean", TargetReduce::Mean}, {"sum", TargetReduce::Sum}});
      r.get(tg, "norm", tp, norm);
      ts_.norm = parse_enum<TargetNorm>(r, tp + ".norm", norm, {{"none", TargetNorm::None}, {"layernorm", TargetNorm::LayerNorm}});
      r.get(tg, "relation_scaled", tp, ts_.relation_scaled);
      r.get(tg, "include_cls", tp, ts_.include_cls);
      r.get(tg, "head_mapping", tp, hm);
      ts_.head_mapping = parse_enum<HeadMapping>(r, tp + ".head_mapping", hm, {{"none", HeadMapping::None}, {"average", HeadMapping::Average}});
      std::string dec = "none";
      r.get(tg, "decoder", tp, dec);
      ts_.decoder = parse_enum<DecoderKind>(r, tp + ".decoder", dec,
                                            {{"none", DecoderKind::None}, {"linear", DecoderKind::Linear},
                                             {"attention", DecoderKind::Attention}});
      r.get(tg, "decoder_depth", tp, ts_.decoder_depth);
      if (ts_.decoder == DecoderKind::Attention && (ts_.decoder_depth < 1 || ts_.decoder_depth > 64))
        r.fail(tp + ".decoder_depth", "must be in [1, 64]");
      if (tg["decoder_depth"] && ts_.decoder != DecoderKind::Attention)
        r.fail(tp + ".decoder_depth", "only an attention decoder has a depth (decoder: attention)");
      if (ts_.decoder != DecoderKind::None && ts_.kind == TargetKind::Relation)
        r.fail(tp + ".decoder", "decoders apply to token targets (features, block, msa), not relations");
      check_range(r, tp + ".weight", ts_.weight, 0, kInf, false, true, ">= 0");
      if (ts_.kind == TargetKind::Features) {
        if (!ts_.layers.empty() || !ts_.student_layers.empty())
          r.fail(tp, "'features' is the teacher's final output; it takes no layers");
      } else {
        if (ts_.layers.empty()) r.fail(tp + ".layers", "is required for kind '" + kind + "'");
        if (ts_.student_layers.empty()) ts_.student_layers = ts_.layers;
        if (ts_.student_layers.size() != ts_.layers.size())
          r.fail(tp + ".student_layers", "needs one student layer per teacher layer");
        for (auto l : ts_.layers)
          if (l < 0 || l >= tc.depth)
            r.fail(tp + ".layers", "layer " + std::to_string(l) + " is out of range for the " + std::to_string(tc.depth) +
                                       "-block teacher");
        for (auto l : ts_.student_layers)
          if (l < 0 || l >= rc.student.depth)
            r.fail(tp + ".student_layers", "layer " + std::to_string(l) + " is out of range for the " +
                                               std::to_string(rc.student.depth) + "-block student");
      }
      if (ts_.kind == TargetKind::Relation && tc.num_heads != rc.student.num_heads &&
          ts_.head_mapping == HeadMapping::None)
        r.fail(tp + ".head_mapping", "teacher has " + std::to_string(tc.num_heads) + " heads, student " +
                                         std::to_string(rc.student.num_heads) +
                                         ": choose a mapping (head_mapping: average)");
      spec.targets.push_back(ts_);
    }
    rc.teachers.push_back(spec);
    tcfgs.push_back(tc);
  }
  check_grids(r, rc, tcfgs);

  // --- masking
  auto mk = root["masking"];
  r.only_keys(mk, "masking", {"strategy", "teacher", "layers", "drop_ratio", "source"});
  std::string strategy = "none", source = "input";
  r.get(mk, "strategy", "masking", strategy);
  rc.mask.strategy = parse_enum<MaskStrategy>(r, "masking.strategy", strategy,
                                              {{"none", MaskStrategy::None}, {"random", MaskStrategy::Random},
                                               {"direct", MaskStrategy::Direct}, {"progressive", MaskStrategy::Progressive},
                                               {"mask_tokens", MaskStrategy::MaskTokens}});
  r.get(mk, "teacher", "masking", rc.mask.teacher);
  r.get(mk, "layers", "masking", rc.mask.layers);
  r.get(mk, "drop_ratio", "masking", rc.mask.drop_ratio);
  r.get(mk, "source", "masking", source);
  rc.mask.source = parse_enum<MaskSource>(r, "masking.source", source,
                                          {{"input", MaskSource::BlockInput}, {"output", MaskSource::BlockOutput}});
  check_range(r, "masking.drop_ratio", rc.mask.drop_ratio, 0, 1, false, true, "in [0, 1)");
  const bool driven = rc.mask.strategy == MaskStrategy::Progressive || rc.mask.strategy == MaskStrategy::Direct;
  for (const char* key : {"teacher", "source"})
    if (!driven && mk && mk[key])
      r.fail(std::string("masking.") + key, "only progressive and direct masking are driven by a teacher's layers (strategy is '" +
                                               strategy + "')");
  if (rc.mask.strategy == MaskStrategy::MaskTokens && rc.mask.drop_ratio <= 0)
    r.fail("masking.drop_ratio", "mask_tokens needs a mask ratio > 0 (the share of positions to reconstruct)");
  if (rc.mask.strategy == MaskStrategy::Progressive || rc.mask.strategy == MaskStrategy::Direct) {
    if (rc.mask.teacher.empty()) rc.mask.teacher = rc.teachers.front().name;
    size_t ti = 0;
    while (ti < rc.teachers.size() && rc.teachers[ti].name != rc.mask.teacher) ++ti;
    if (ti == rc.teachers.size()) r.fail("masking.teacher", "no teacher named '" + rc.mask.teacher + "'");
    const int64_t L = tcfgs[ti].depth;
    if (rc.mask.layers.empty()) {
      if (rc.mask.strategy == MaskStrategy::Progressive) rc.mask.layers = {0, L / 3, 2 * L / 3};
      else rc.mask.layers = {L - 1};
    }
    for (auto l : rc.mask.layers)
      if (l < 0 || l >= L) r.fail("masking.layers", "layer " + std::to_string(l) + " is out of range for teacher '" + rc.mask.teacher + "'");
    for (size_t i = 1; i < rc.mask.layers.size(); ++i)
      if (rc.mask.layers[i] <= rc.mask.layers[i - 1]) r.fail("masking.layers", "must be strictly increasing");
  } else if (mk && mk["layers"]) {
    r.fail("masking.layers", "only progressive and direct masking use layers");
  }

  // --- loss
  auto ls = root["loss"];
  r.only_keys(ls, "loss", {"type", "beta"});
  std::string ltype = "smooth_l1";
  r.get(ls, "type", "loss", ltype);
  if (ltype != "smooth_l1") r.fail("loss.type", "only smooth_l1 is implemented");
  r.get(ls, "beta", "loss", rc.smooth_l1_beta);
  check_range(r, "loss.beta", rc.smooth_l1_beta, 0, kInf, false, true, ">= 0");

  // --- optim
  auto op = root["optim"];
  r.only_keys(op, "optim", {"lr", "base_batch", "min_lr", "weight_decay", "betas", "eps", "warmup_epochs", "clip_grad"});
  r.get(op, "lr", "optim", rc.optim.lr);
  r.get(op, "base_batch", "optim", rc.optim.base_batch);
  r.get(op, "min_lr", "optim", rc.optim.min_lr);
  r.get(op, "weight_decay", "optim", rc.optim.weight_decay);
  std::vector<double> betas;
  r.get(op, "betas", "optim", betas);
  if (!betas.empty()) {
    if (betas.size() != 2) r.fail("optim.betas", "needs two values");
    rc.optim.beta1 = betas[0];
    rc.optim.beta2 = betas[1];
  }
  r.get(op, "eps", "optim", rc.optim.eps);
  r.get(op, "warmup_epochs", "optim", rc.optim.warmup_epochs);
  r.get(op, "clip_grad", "optim", rc.optim.clip_grad);
  check_range(r, "optim.lr", rc.optim.lr, 0, kInf, true, true, "positive");
  if (rc.optim.base_batch <= 0) r.fail("optim.base_batch", "must be positive");
  check_range(r, "optim.min_lr", rc.optim.min_lr, 0, rc.optim.lr, false, false, "in [0, lr]");
  check_range(r, "optim.weight_decay", rc.optim.weight_decay, 0, kInf, false, true, ">= 0");
  check_range(r, "optim.betas", rc.optim.beta1, 0, 1, false, true, "in [0, 1)");
  check_range(r, "optim.betas", rc.optim.beta2, 0, 1, false, true, "in [0, 1)");
  check_range(r, "optim.eps", rc.optim.eps, 0, kInf, true, true, "positive");
  check_range(r, "optim.warmup_epochs", rc.optim.warmup_epochs, 0, kInf, false, true, ">= 0");
  check_range(r, "optim.clip_grad", rc.optim.clip_grad, 0, kInf, false, true, ">= 0 (0: off)");

  // --- data
  auto dt = root["data"];
  r.only_keys(dt, "data", {"dataset", "split", "augment", "scale", "hflip", "workers"});
  r.get(dt, "dataset", "data", rc.data.dataset);
  r.get(dt, "split", "data", rc.data.split);
  r.get(dt, "augment", "data", rc.data.augment);
  std::vector<double> scale;
  r.get(dt, "scale", "data", scale);
  if (!scale.empty()) {
    if (scale.size() != 2 || !(scale[0] > 0) || !(scale[0] <= scale[1]) || !(scale[1] <= 1))
      r.fail("data.scale", "needs [min, max] with 0 < min <= max <= 1");
    rc.data.scale_min = scale[0];
    rc.data.scale_max = scale[1];
  }
  r.get(dt, "hflip", "data", rc.data.hflip);
  r.get(dt, "workers", "data", rc.data.workers);
  if (rc.data.dataset.empty()) r.fail("data.dataset", "must not be empty");
  check_range(r, "data.hflip", rc.data.hflip, 0, 1, false, false, "a probability in [0, 1]");
  if (rc.data.workers < 0 || rc.data.workers > 256) r.fail("data.workers", "must be in [0, 256]");

  // --- train
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
  return rc;
}

std::string Recipe::to_yaml() const {
  auto kind_name = [](TargetKind k) { return to_string(k); };
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
      e << YAML::Flow << YAML::BeginMap << YAML::Key << "kind" << YAML::Value << kind_name(g.kind);
      if (g.kind != TargetKind::Features) {
        e << YAML::Key << "layers" << YAML::Value << YAML::Flow << g.layers;
        e << YAML::Key << "student_layers" << YAML::Value << YAML::Flow << g.student_layers;
      }
      e << YAML::Key << "weight" << YAML::Value << g.weight;
      if (g.kind != TargetKind::Features) e << YAML::Key << "reduce" << YAML::Value << to_string(g.reduce);
      e << YAML::Key << "norm" << YAML::Value << (g.norm == TargetNorm::LayerNorm ? "layernorm" : "none");
      if (g.kind == TargetKind::Relation) {
        e << YAML::Key << "relation_scaled" << YAML::Value << g.relation_scaled;
        e << YAML::Key << "head_mapping" << YAML::Value << (g.head_mapping == HeadMapping::Average ? "average" : "none");
      } else {
        const char* dec = g.decoder == DecoderKind::None ? "none" : g.decoder == DecoderKind::Linear ? "linear" : "attention";
        e << YAML::Key << "decoder" << YAML::Value << dec;
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
      << (mask.source == MaskSource::BlockInput ? "input" : "output");
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
    << YAML::Key << "workers" << YAML::Value << data.workers << YAML::EndMap;
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
