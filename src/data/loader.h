// Multi-threaded, deterministic batch loader.
//
// Determinism: the epoch's sample order depends only on (seed, epoch); the augmentation of a sample
// only on (seed, epoch, dataset index). Batches are delivered strictly in order, so the stream of
// batches is identical for any num_workers / prefetch, and a run resumed with
// start_epoch(epoch, k) sees exactly batches k, k+1, ... of the uninterrupted epoch.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <torch/types.h>

#include "data/dataset.h"
#include "data/transforms.h"

namespace hd::data {

struct LoaderConfig {
  int64_t batch_size = 64;
  bool shuffle = true;
  bool drop_last = true;  // drop the final incomplete batch of each epoch
  // Worker threads building batches. 0 builds each batch synchronously inside next() (debugging).
  int num_workers = 2;
  int prefetch = 4;  // batches in flight (being built or ready) ahead of the consumer; >= 1
  uint64_t seed = 0;
  // false: an unreadable sample aborts with its path; true: it is dropped from its batch, counted
  // (Batch::skipped, skipped_total()) and reported on stderr (the first 10).
  bool skip_bad = false;
  // Sharding like torch.utils.data.DistributedSampler: the epoch permutation is padded by
  // wrapping around to a multiple of world_size and rank r takes positions r, r+W, r+2W, ...
  // so every rank gets the same number of samples (and of batches).
  // With drop_last, batch k of every rank together are positions [k*B*W, (k+1)*B*W) of the
  // epoch permutation: exactly the k-th batch of one process with batch B*W.
  int64_t rank = 0, world_size = 1;
  // Batches in page-locked memory, so that copies to a GPU can be asynchronous (CUDA builds).
  bool pin_memory = false;
  TransformConfig transform;
};

struct Batch {
  torch::Tensor images;   // float32 [B,C,H,W]
  torch::Tensor labels;   // int64 [B]
  torch::Tensor indices;  // int64 [B] dataset indices
  int64_t skipped = 0;    // samples of this batch dropped because they could not be read (skip_bad)
  int64_t index = 0;      // batch index in the epoch
};

// splitmix64 finaliser: a fast, well-mixed 64-bit hash; the seeding primitive used below.
uint64_t splitmix64(uint64_t x);

// Seed of the augmentation RNG of one sample.
uint64_t sample_seed(uint64_t seed, int64_t epoch, int64_t index);

// The epoch's sample order over [0, n): a Fisher-Yates shuffle driven by (seed, epoch).
std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int64_t epoch);

// Usage:
//   DataLoader loader(dataset, cfg);
//   for (int64_t epoch = 0; ...; ++epoch) {
//     loader.start_epoch(epoch);
//     for (Batch b; loader.next(b);) train_step(b);
//   }
// Not thread-safe itself: one thread drives start_epoch() / next().
//
// Threads: each worker builds whole batches (read + decode + transform every sample) and parks
// them, by batch index, in a window of at most `prefetch` batches; next() hands them out in
// order. Workers limit LibTorch's OpenMP parallelism to one thread for themselves only (through
// omp_set_num_threads, which is per calling thread), so num_workers workers use num_workers
// cores and never multiply with the trainer's intra-op thread count.
class DataLoader {
 public:
  // Throws hd::Error for an empty data set or an invalid configuration.
  DataLoader(std::shared_ptr<Dataset> dataset, LoaderConfig cfg);
  ~DataLoader();  // stops and joins the workers (abandoning any unfinished epoch)
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // (Re)starts loading: batches start_batch .. batches_per_epoch()-1 of `epoch`. Abandons any
  // epoch in progress. 0 <= start_batch <= batches_per_epoch().
  void start_epoch(int64_t epoch, int64_t start_batch = 0);

  // The next batch of the epoch; false once the epoch is exhausted. A failure while building a
  // batch (unreadable file without skip_bad, bad transform) is re-thrown here, unchanged, when
  // that batch's turn comes; the epoch then ends (next() returns false until start_epoch()).
  // A batch whose samples were all skipped is not returned (its index is simply absent).
  bool next(Batch& out);

  int64_t batches_per_epoch() const { return batches_per_epoch_; }
  // Samples of this rank per epoch (after DistributedSampler-style padding).
  int64_t samples_per_epoch() const { return samples_per_rank_; }
  // Samples skipped (skip_bad) in all batches returned so far, over all epochs.
  int64_t skipped_total() const { return skipped_total_; }
  const LoaderConfig& config() const { return cfg_; }
  const Dataset& dataset() const { return *dataset_; }

 private:
  struct Slot {
    Batch batch;
    std::exception_ptr error;
  };

  Batch build_batch(int64_t b);  // throws; runs in workers (or in next() without workers)
  void worker_loop();
  void stop_workers() noexcept;

  std::shared_ptr<Dataset> dataset_;
  LoaderConfig cfg_;
  int64_t samples_per_rank_ = 0;
  int64_t batches_per_epoch_ = 0;
  int64_t skipped_total_ = 0;

  // Per-epoch state, written by start_epoch() before workers start, read-only while they run.
  int64_t epoch_ = 0;
  std::vector<int64_t> rank_indices_;  // this rank's dataset indices in epoch order
  bool started_ = false;

  // Shared with the workers, guarded by mutex_.
  std::mutex mutex_;
  std::condition_variable work_cv_;   // workers wait for window space / stop
  std::condition_variable ready_cv_;  // next() waits for its batch
  int64_t next_claim_ = 0;            // next batch index a worker will build
  int64_t next_deliver_ = 0;          // next batch index next() returns
  std::map<int64_t, Slot> ready_;     // finished batches waiting for their turn
  std::atomic<bool> stop_{false};     // also polled between samples to abandon work quickly
  std::atomic<int> warnings_{0};      // skip_bad messages printed so far
  std::vector<std::thread> workers_;
};

}  // namespace hd::data
