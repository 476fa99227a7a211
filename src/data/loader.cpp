#include "data/loader.h"

#include <dlfcn.h>

#include <iostream>
#include <numeric>

#include <torch/torch.h>

#include "data/decode_transform.h"
#include "util/error.h"

namespace hd::data {

namespace {

// Domain-separation constants, so that the permutation stream and the per-sample streams never
// coincide even for equal (seed, epoch, index) inputs.
constexpr uint64_t kPermutationSalt = 0x7065726d75746531ULL;  // "permute1"
constexpr uint64_t kSampleSalt = 0x73616d706c65726eULL;       // "samplern"

// Restricts OpenMP parallel regions started from the calling thread to one thread.
//
// LibTorch's CPU kernels parallelise with OpenMP once a tensor exceeds ~32K elements (a 224x224
// RGB image does), using a team sized by the *calling thread's* OpenMP setting. Left alone, every
// loader worker would start its own full-size team: workers x cores threads. at::set_num_threads
// cannot be used here because it changes the process-wide count the trainer relies on, whereas
// omp_set_num_threads only sets the calling thread's value. We find the function at run time in
// whatever OpenMP runtime LibTorch loaded (libgomp for Debian's and the official builds), so this
// library needs no OpenMP compile flags; without OpenMP it does nothing (nothing to limit).
//
// ATen re-applies the global count to a thread the first time that thread runs a parallel kernel
// (at::internal::lazy_init_num_threads, a per-thread flag). Workers therefore run that
// initialisation themselves before limiting (verified with 1.13: no OpenMP threads are created by
// workers afterwards), and re-limit before every sample in case a LibTorch build keeps a
// separate copy of that flag. (That initialisation also makes LibTorch 1.13 re-create its global
// pthreadpool, used only by XNNPACK/QNNPACK, once per new thread: a brief, harmless transient.)
//
// Only loader workers call it: in synchronous mode (num_workers == 0) batches are built on the
// caller's thread, whose parallelism must stay as the trainer configured it.
thread_local bool t_is_loader_worker = false;

void limit_openmp_to_this_thread() {
  if (!t_is_loader_worker) return;
  using SetFn = void (*)(int);
  static const SetFn set_num_threads = reinterpret_cast<SetFn>(dlsym(RTLD_DEFAULT, "omp_set_num_threads"));
  if (set_num_threads) set_num_threads(1);
}

}  // namespace

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

uint64_t sample_seed(uint64_t seed, int64_t epoch, int64_t index) {
  uint64_t h = splitmix64(seed ^ kSampleSalt);
  h = splitmix64(h ^ static_cast<uint64_t>(epoch));
  return splitmix64(h ^ static_cast<uint64_t>(index));
}

std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), int64_t{0});
  std::mt19937_64 rng(splitmix64(splitmix64(seed ^ kPermutationSalt) ^ static_cast<uint64_t>(epoch)));
  for (int64_t i = n - 1; i > 0; --i) std::swap(perm[i], perm[uniform_int(rng, i + 1)]);
  return perm;
}

DataLoader::DataLoader(std::shared_ptr<Dataset> dataset, LoaderConfig cfg)
    : dataset_(std::move(dataset)), cfg_(std::move(cfg)) {
  if (!dataset_) throw Error("DataLoader: no data set");
  const std::string who = "data loader for " + dataset_->name() + ": ";
  if (dataset_->size() == 0) throw Error(who + "the data set is empty");
  if (cfg_.batch_size < 1) throw Error(who + "batch_size must be >= 1");
  if (cfg_.num_workers < 0) throw Error(who + "num_workers must be >= 0");
  if (cfg_.prefetch < 1) throw Error(who + "prefetch must be >= 1");
  if (cfg_.world_size < 1 || cfg_.rank < 0 || cfg_.rank >= cfg_.world_size)
    throw Error(who + "need 0 <= rank < world_size (got rank " + std::to_string(cfg_.rank) + ", world_size " +
                std::to_string(cfg_.world_size) + ")");
  validate(cfg_.transform);  // fail here, in the caller's thread, not in a worker

  const auto n = static_cast<int64_t>(dataset_->size());
  samples_per_rank_ = (n + cfg_.world_size - 1) / cfg_.world_size;
  // With drop_last only whole global batches (batch_size x world_size images, none of them
  // padding) count, so the epoch has as many steps, made of the same images, for any world size
  // with the same global batch.
  batches_per_epoch_ = cfg_.drop_last ? n / (cfg_.batch_size * cfg_.world_size)
                                      : (samples_per_rank_ + cfg_.batch_size - 1) / cfg_.batch_size;
}

DataLoader::~DataLoader() { stop_workers(); }

void DataLoader::stop_workers() noexcept {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (auto& t : workers_)
    if (t.joinable()) t.join();
  workers_.clear();
}

void DataLoader::start_epoch(int64_t epoch, int64_t start_batch) {
  if (start_batch < 0 || start_batch > batches_per_epoch_)
    throw Error("data loader for " + dataset_->name() + ": start_batch " + std::to_string(start_batch) +
                " out of range [0, " + std::to_string(batches_per_epoch_) + "]");
  stop_workers();

  const auto n = static_cast<int64_t>(dataset_->size());
  std::vector<int64_t> order;
  if (cfg_.shuffle) {
    order = dataset_->shuffled_order(cfg_.seed, epoch);
    if (order.empty()) order = epoch_permutation(n, cfg_.seed, epoch);
    if (static_cast<int64_t>(order.size()) != n)
      throw Error("data loader for " + dataset_->name() + ": the data set's epoch order has " +
                  std::to_string(order.size()) + " samples, not " + std::to_string(n));
  } else {
    order.resize(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), int64_t{0});
  }
  // Pad to world_size * samples_per_rank by wrapping around (repeatedly if the padding exceeds
  // n, as DistributedSampler), then take this rank's stride.
  rank_indices_.clear();
  rank_indices_.reserve(static_cast<size_t>(samples_per_rank_));
  for (int64_t k = cfg_.rank; k < samples_per_rank_ * cfg_.world_size; k += cfg_.world_size)
    rank_indices_.push_back(order[static_cast<size_t>(k % n)]);

  epoch_ = epoch;
  started_ = true;
  ready_.clear();
  next_claim_ = next_deliver_ = start_batch;
  stop_ = false;
  for (int w = 0; w < cfg_.num_workers && start_batch < batches_per_epoch_; ++w)
    workers_.emplace_back([this] { worker_loop(); });
}

Batch DataLoader::build_batch(int64_t b) {
  limit_openmp_to_this_thread();
  const int64_t begin = b * cfg_.batch_size;
  const int64_t end = std::min<int64_t>(begin + cfg_.batch_size, samples_per_rank_);
  const int64_t count = end - begin;
  const TransformConfig& tc = cfg_.transform;

  Batch batch;
  batch.index = b;
  torch::Tensor images = torch::empty({count, tc.channels, tc.size, tc.size}, torch::kFloat);
  std::vector<int64_t> labels, indices;
  labels.reserve(static_cast<size_t>(count));
  indices.reserve(static_cast<size_t>(count));

  for (int64_t pos = begin; pos < end; ++pos) {
    if (stop_.load(std::memory_order_relaxed)) return batch;  // abandoned; nobody will read it
    const int64_t idx = rank_indices_[static_cast<size_t>(pos)];
    const auto uidx = static_cast<size_t>(idx);
    std::mt19937_64 rng(sample_seed(cfg_.seed, epoch_, idx));
    torch::Tensor slot = images[static_cast<int64_t>(labels.size())], raw;
    bool written = false;
    try {
      // Sources holding encoded files are decoded and transformed in one step, into the batch:
      // for JPEGs only the part of the image the crop needs, at a reduced DCT scale where the
      // crop allows (decode_transform.h).
      std::optional<std::vector<uint8_t>> bytes = dataset_->encoded(uidx);
      if (bytes) {
        limit_openmp_to_this_thread();
        decode_transform(bytes->data(), bytes->size(), dataset_->source(uidx), tc, rng, slot);
        written = true;
      } else {
        raw = dataset_->image(uidx);
      }
    } catch (const std::exception& e) {
      // Data-set errors already name the file; they propagate unchanged unless skipping.
      if (!cfg_.skip_bad) throw;
      ++batch.skipped;
      const int shown = warnings_.fetch_add(1);
      if (shown < 10)
        std::cerr << "warning: skipping sample " << idx << ": " << e.what() << "\n";
      else if (shown == 10)
        std::cerr << "warning: further skipped samples of " << dataset_->name() << " are not reported\n";
      continue;
    }
    if (!written) {
      limit_openmp_to_this_thread();
      try {
        slot.copy_(transform_image(raw, tc, rng));
      } catch (const std::exception& e) {
        // Transform failures do not name the file themselves; they are never skipped because they
        // reveal a configuration problem that would hit every sample.
        throw Error(dataset_->source(uidx) + ": " + e.what());
      }
    }
    labels.push_back(dataset_->label(uidx));
    indices.push_back(idx);
  }
  const auto kept = static_cast<int64_t>(labels.size());
  batch.images = kept == count ? images : images.narrow(0, 0, kept).clone();
  batch.labels = torch::tensor(labels, torch::kInt64);
  batch.indices = torch::tensor(indices, torch::kInt64);
  if (cfg_.pin_memory) {
    batch.images = batch.images.pin_memory();
    batch.labels = batch.labels.pin_memory();
  }
  return batch;
}

void DataLoader::worker_loop() {
  t_is_loader_worker = true;
  at::internal::lazy_init_num_threads();  // so that LibTorch does not undo the limit later
  limit_openmp_to_this_thread();
  for (;;) {
    int64_t b;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      // Claim the next batch only while the window [next_deliver_, next_deliver_ + prefetch)
      // has room: this bounds memory to `prefetch` batches however slow the consumer is.
      work_cv_.wait(lock, [this] {
        return stop_ || next_claim_ >= batches_per_epoch_ || next_claim_ < next_deliver_ + cfg_.prefetch;
      });
      if (stop_ || next_claim_ >= batches_per_epoch_) return;
      b = next_claim_++;
    }
    Slot slot;
    try {
      slot.batch = build_batch(b);
    } catch (...) {
      // Any exception (hd::Error, c10::Error, bad_alloc) travels to next() untouched.
      slot.error = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stop_) return;
      ready_.emplace(b, std::move(slot));
    }
    ready_cv_.notify_one();
  }
}

bool DataLoader::next(Batch& out) {
  if (!started_) throw std::logic_error("DataLoader::next() called before start_epoch()");
  for (;;) {
    if (next_deliver_ >= batches_per_epoch_) {
      stop_workers();  // all claimed and delivered: the workers have exited or are about to
      return false;
    }
    Slot slot;
    if (cfg_.num_workers == 0) {
      // Synchronous mode (num_workers == 0).
      try {
        slot.batch = build_batch(next_deliver_);
      } catch (...) {
        slot.error = std::current_exception();
      }
      ++next_deliver_;
    } else {
      std::unique_lock<std::mutex> lock(mutex_);
      ready_cv_.wait(lock, [this] { return ready_.count(next_deliver_) != 0; });
      auto it = ready_.find(next_deliver_);
      slot = std::move(it->second);
      ready_.erase(it);
      ++next_deliver_;
      lock.unlock();
      work_cv_.notify_all();  // the window moved: workers may claim more
    }
    if (slot.error) {
      stop_workers();
      next_deliver_ = batches_per_epoch_;
      std::rethrow_exception(slot.error);
    }
    skipped_total_ += slot.batch.skipped;
    if (slot.batch.labels.size(0) == 0) continue;  // every sample of this batch was skipped
    out = std::move(slot.batch);
    return true;
  }
}

}  // namespace hd::data
