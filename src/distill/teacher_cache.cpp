#include "distill/teacher_cache.h"

#include <ATen/autocast_mode.h>

#include <algorithm>
#include <filesystem>
#include <iostream>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "io/safetensors.h"
#include "util/error.h"
#include "util/format.h"
#include "util/sha256.h"

namespace hd::distill {

namespace fs = std::filesystem;

namespace {

// The per-layer tap kinds: their name in keys, and where they live in TapSpec / Taps.
struct LayerKind {
  const char* name;
  std::set<int64_t> model::TapSpec::*spec;
  std::map<int64_t, torch::Tensor> model::Taps::*taps;
  bool square;  // [B,H,N,N] rather than [B,N,D]
};
const LayerKind kLayerKinds[] = {
    {"block_input", &model::TapSpec::block_input, &model::Taps::block_input, false},
    {"block", &model::TapSpec::block, &model::Taps::block, false},
    {"msa", &model::TapSpec::msa, &model::Taps::msa, false},
    {"relation", &model::TapSpec::relation, &model::Taps::relation, true},
    {"attn", &model::TapSpec::attn, &model::Taps::attn, true},
};

const LayerKind* layer_kind(const std::string& name) {
  for (const auto& k : kLayerKinds)
    if (name == k.name) return &k;
  return nullptr;
}

torch::Tensor& slot(model::Taps& taps, const std::string& kind, int64_t layer) {
  if (const auto* k = layer_kind(kind)) return (taps.*(k->taps))[layer];
  return taps.features;
}

// Everything besides the bytes that decides what a teacher computes from its input.
std::string autocast_state() {
  std::string s = "autocast";
  if (at::autocast::is_cpu_enabled()) s += " cpu:" + std::string(c10::toString(at::autocast::get_autocast_cpu_dtype()));
  if (at::autocast::is_enabled()) s += " cuda:" + std::string(c10::toString(at::autocast::get_autocast_gpu_dtype()));
  return s;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

uint64_t folder_size(const std::string& dir) {
  uint64_t total = 0;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code fe;
    if (it->is_regular_file(fe)) {
      const auto n = it->file_size(fe);
      if (!fe) total += n;
    }
  }
  return total;
}

// Room for a safetensors header around one tensor (key, kind and layer in the metadata).
constexpr uint64_t kEntryOverhead = 512;

}  // namespace

TeacherCache::TeacherCache(std::string dir, uint64_t max_bytes) : dir_(std::move(dir)), max_(max_bytes) {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec || !fs::is_directory(dir_)) throw Error(dir_ + ": cannot create the teacher cache folder: " + ec.message());
  size_ = folder_size(dir_);
}

void TeacherCache::add_teacher(const Teacher& t) {
  const auto file = sha256_file(t.spec.checkpoint);
  Sha256 h;
  h.update("hybrid-distill teacher cache 1\n").update(file.data(), file.size());
  h.update(t.model->config().to_json()).update("\ndtype " + std::string(c10::toString(t.dtype)));
  teacher_keys_.push_back(h.hex());
  teachers_.push_back(t);
}

std::vector<TeacherCache::Entry> TeacherCache::entries(size_t ti, const torch::Tensor& input,
                                                       const model::TapSpec& spec) const {
  const auto x = input.detach().to(torch::kCPU).contiguous();
  Sha256 h;
  h.update(teacher_keys_.at(ti));
  h.update("\ninput " + std::string(c10::toString(x.scalar_type())) + " " + shape_text(x.sizes().vec()) + "\n");
  h.update(autocast_state() + "\n");
  h.update(x.data_ptr(), x.nbytes());
  const auto base = h.digest();
  std::vector<Entry> out;
  auto add = [&](const std::string& kind, int64_t layer) {
    Entry e{kind, layer, ""};
    e.key = Sha256().update(base.data(), base.size()).update(kind + " " + std::to_string(layer)).hex();
    out.push_back(std::move(e));
  };
  if (spec.features) add("features", -1);
  for (const auto& k : kLayerKinds)
    for (auto l : spec.*(k.spec)) add(k.name, l);
  return out;
}

std::string TeacherCache::path_of(const std::string& key) const {
  return (fs::path(dir_) / key.substr(0, 2) / (key + ".safetensors")).string();
}

void TeacherCache::warn_once(const std::string& what) {
  if (std::find(warned_.begin(), warned_.end(), what) != warned_.end()) return;
  warned_.push_back(what);
  std::cerr << "warning: teacher cache: " << what << "\n";
}

torch::Tensor TeacherCache::load(const Entry& e, const std::vector<int64_t>& shape, const Teacher& t) {
  const auto path = path_of(e.key);
  try {
    auto f = io::SafeTensorsFile::open(path);
    auto key = f.metadata().find("key");
    if (key == f.metadata().end() || key->second != e.key) throw Error(path + ": not the entry its name says");
    if (!f.contains("tap")) throw Error(path + ": no tensor 'tap'");
    const auto& info = f.info("tap");
    if (info.shape != shape)
      throw Error(path + ": shape " + shape_text(info.shape) + ", expected " + shape_text(shape));
    // A teacher's taps have its dtype; under autocast some are float32.
    const auto dt = io::parse_dtype(info.dtype);
    const bool autocast = at::autocast::is_cpu_enabled() || at::autocast::is_enabled();
    if (dt != t.dtype && !(autocast && dt == torch::kFloat))
      throw Error(path + ": dtype " + info.dtype + ", expected " + io::dtype_name(t.dtype));
    auto v = f.load("tap");
    stats_.bytes_read += f.file_size();
    return v;
  } catch (const Error& err) {
    ++stats_.damaged;
    warn_once(std::string(err.what()) + "; recomputing it");
    return {};
  }
}

void TeacherCache::store(const Entry& e, const torch::Tensor& value) {
  const auto v = value.detach().to(torch::kCPU).contiguous();
  const uint64_t need = v.nbytes() + kEntryOverhead;
  batch_bytes_ += need;
  if (full_) return;
  if (size_ + need > max_) {
    full_ = true;
    warn_once(dir_ + ": full (" + human_bytes(size_) + " of " + human_bytes(max_) +
              "); no more entries are written: raise --teacher-cache-gb or clear the folder");
    return;
  }
  const auto path = path_of(e.key);
  std::error_code ec;
  const auto old = fs::exists(path, ec) ? fs::file_size(path, ec) : 0;
  try {
    fs::create_directories(fs::path(path).parent_path());
    io::save_safetensors(path, {{"tap", v}}, {{"key", e.key}, {"kind", e.kind}, {"layer", std::to_string(e.layer)}});
  } catch (const std::exception& err) {
    full_ = true;
    warn_once(std::string(err.what()) + "; no more entries are written");
    return;
  }
  const auto written = fs::file_size(path, ec);
  if (ec) return;
  size_ = size_ - std::min<uint64_t>(old, size_) + written;
  stats_.bytes_written += written;
  ++stats_.entries_written;
}

model::Taps TeacherCache::taps(size_t ti, const torch::Tensor& input, const model::TapSpec& spec) {
  auto& t = teachers_.at(ti);
  const auto es = entries(ti, input, spec);
  const auto& c = t.model->config();
  const int64_t B = input.size(0);
  const int64_t N = (input.size(-2) / c.patch_size) * (input.size(-1) / c.patch_size) + c.num_prefix_tokens();

  // Load every stored tap; those absent or found damaged are computed and (re)written.
  model::Taps out;
  model::TapSpec missing;
  missing.features = false;
  std::vector<size_t> to_write;
  for (size_t i = 0; i < es.size(); ++i) {
    const auto& e = es[i];
    const auto* k = layer_kind(e.kind);
    std::error_code ec;
    if (fs::exists(path_of(e.key), ec)) {
      const std::vector<int64_t> shape = k && k->square ? std::vector<int64_t>{B, c.num_heads, N, N}
                                                        : std::vector<int64_t>{B, N, c.embed_dim};
      auto v = load(e, shape, t);
      if (v.defined()) {
        slot(out, e.kind, e.layer) = v.to(input.device());
        continue;
      }
    }
    to_write.push_back(i);
    if (k) (missing.*(k->spec)).insert(e.layer);
    else missing.features = true;
  }
  if (to_write.empty()) {
    ++stats_.hits;
    return out;
  }
  // The teacher runs only as deep as its missing taps need (features need every block).
  ++stats_.misses;
  if (to_write.size() < es.size()) ++stats_.partial;
  auto computed = t.model->forward_taps(input, missing);
  for (auto i : to_write) {
    auto& v = slot(out, es[i].kind, es[i].layer);
    v = slot(computed, es[i].kind, es[i].layer);
    store(es[i], v);
  }
  return out;
}

void TeacherCache::plan(int64_t batches, int64_t processes) {
  planned_ = batches;
  processes_ = std::max<int64_t>(1, processes);
}

void TeacherCache::end_batch() {
  ++batches_;
  const uint64_t per_batch = batch_bytes_;
  batch_bytes_ = 0;
  if (batches_ != 1 || planned_ <= 1) return;
  const double more = static_cast<double>(per_batch) * static_cast<double>(planned_ - 1) * processes_;
  if (static_cast<double>(size_) + more > static_cast<double>(max_))
    throw Error(dir_ + ": the teacher cache would outgrow its bound: it holds " + human_bytes(size_) +
                " and this run adds about " + human_bytes(per_batch) + " per batch x " +
                std::to_string(planned_ - 1) + " more batches" +
                (processes_ > 1 ? " x " + std::to_string(processes_) + " processes" : std::string()) + " = " +
                human_bytes(static_cast<uint64_t>(more)) + ", over the bound of " + human_bytes(max_) +
                "; raise --teacher-cache-gb, or clear the folder");
}

std::string TeacherCache::summary() const {
  return "teacher cache " + dir_ + ": " + std::to_string(stats_.hits) + " hits, " + std::to_string(stats_.misses) +
         " misses (teacher forwards skipped / run" +
         (stats_.partial ? ", " + std::to_string(stats_.partial) + " of them for the missing taps only" : std::string()) +
         "), " + human_bytes(stats_.bytes_read) + " read, " +
         human_bytes(stats_.bytes_written) + " written (" + std::to_string(stats_.entries_written) + " entries" +
         (stats_.damaged ? ", " + std::to_string(stats_.damaged) + " damaged, rewritten" : std::string()) + "); " +
         human_bytes(size_) + " of " + human_bytes(max_) + " used";
}

std::string TeacherCache::stats_json() const {
  nlohmann::json j = {{"dir", dir_},
                      {"hits", stats_.hits},
                      {"misses", stats_.misses},
                      {"partial", stats_.partial},
                      {"entries_written", stats_.entries_written},
                      {"damaged", stats_.damaged},
                      {"bytes_read", stats_.bytes_read},
                      {"bytes_written", stats_.bytes_written},
                      {"size_bytes", size_},
                      {"max_bytes", max_}};
  return j.dump();
}

}  // namespace hd::distill
