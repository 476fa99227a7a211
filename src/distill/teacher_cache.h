// A folder of frozen teachers' outputs, keyed by content, so that distillation runs sharing
// teachers and views (ablation rows) compute each teacher forward once.
//
// One safetensors file per (teacher, input batch, tap): DIR/<2 hex>/<64 hex>.safetensors, the
// name the SHA-256 of the teacher (checkpoint file content, architecture, dtype), the input
// exactly as the teacher gets it (dtype, shape, bytes), the autocast state, and the tap (kind and
// layer). A teacher whose every tap for a batch is present is not run; otherwise the present taps
// are loaded, the teacher runs only as deep as the missing ones need, and those are written
// (atomically: processes may share the folder).
// A damaged entry is reported once on stderr and rewritten. The folder's size is bounded (each
// process counts the folder as it found it plus its own writes). One object serves the teachers
// of one distiller, in their order (HybridDistillerImpl::set_teacher_cache).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "distill/hybrid.h"

namespace hd::distill {

struct TeacherCacheStats {
  int64_t hits = 0;             // teacher forwards skipped: every tap loaded
  int64_t misses = 0;           // teacher forwards run
  int64_t partial = 0;          // of those, run for the missing taps only (the rest loaded)
  int64_t entries_written = 0;
  int64_t damaged = 0;          // entries that failed validation and were recomputed
  uint64_t bytes_read = 0, bytes_written = 0;
};

class TeacherCache {
 public:
  // Opens `dir` (created if absent) and sums the size of what it holds; it is never written
  // past `max_bytes`.
  TeacherCache(std::string dir, uint64_t max_bytes);

  // Appends a teacher (its index is the count before): hashes its checkpoint file once.
  void add_teacher(const Teacher& t);

  // What teacher `ti`'s forward_taps(input, spec) returns: loaded when the folder holds every
  // tap, else the stored taps loaded and the missing ones computed (and stored). Tensors come
  // back on input's device.
  model::Taps taps(size_t ti, const torch::Tensor& input, const model::TapSpec& spec);

  // The batches this run still brings, per process, and the processes writing at once: after
  // the first batch, a run whose growth would take the folder past its bound is refused.
  void plan(int64_t batches, int64_t processes = 1);
  // Ends a batch (every teacher done); hd::Error naming the folder, the estimate and the bound
  // after the first one if the plan does not fit.
  void end_batch();

  const std::string& dir() const { return dir_; }
  uint64_t size_bytes() const { return size_; }
  uint64_t max_bytes() const { return max_; }
  const TeacherCacheStats& stats() const { return stats_; }
  // "teacher cache DIR: H hits, M misses, ... read, ... written; ... of ... used".
  std::string summary() const;
  // The counters as one JSON object.
  std::string stats_json() const;

 private:
  struct Entry {
    std::string kind;  // features, block_input, block, msa, relation, attn
    int64_t layer = -1;
    std::string key;   // hex SHA-256
  };
  std::vector<Entry> entries(size_t ti, const torch::Tensor& input, const model::TapSpec& spec) const;
  std::string path_of(const std::string& key) const;
  // The stored tap, or an undefined tensor (with a one-time warning if the file is damaged).
  torch::Tensor load(const Entry& e, const std::vector<int64_t>& shape, const Teacher& t);
  void store(const Entry& e, const torch::Tensor& value);
  void warn_once(const std::string& what);

  std::string dir_;
  uint64_t max_ = 0;
  uint64_t size_ = 0;
  std::vector<Teacher> teachers_;
  std::vector<std::string> teacher_keys_;
  TeacherCacheStats stats_;
  int64_t batches_ = 0, planned_ = 0, processes_ = 1;
  uint64_t batch_bytes_ = 0;  // bytes the current batch's missing taps need
  bool full_ = false;         // stopped writing (bound reached or a write failed)
  std::vector<std::string> warned_;
};

}  // namespace hd::distill
