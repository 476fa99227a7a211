// Multi-process data parallelism over c10d: rendezvous from the standard environment (torchrun,
// Slurm wrappers, `hybrid-distill launch`), a process group (Gloo on CPU, NCCL on CUDA when
// built with it), and the few collectives the trainer needs. c10d's types stay inside comm.cpp.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <c10/core/Device.h>
#include <torch/types.h>

namespace hd::parallel {

// The process's place in a job, from RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT.
struct Env {
  int64_t rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int port = 29500;
  bool distributed() const { return world_size > 1; }
};

// Reads the variables above. No WORLD_SIZE (or WORLD_SIZE=1): a single process. hd::Error naming
// the variable when one is malformed, out of range, or missing while WORLD_SIZE > 1.
Env env_from_environment();

// A TCP port on the loopback interface that is free right now (for a local job's MASTER_PORT).
int free_loopback_port();

// An asynchronous collective in flight (opaque; see Comm::wait).
struct Pending;

class Comm {
 public:
  // Joins the job: a TCPStore rendezvous at MASTER_ADDR:MASTER_PORT (rank 0 hosts it), then a
  // Gloo process group for CPU tensors or NCCL for CUDA ones. Every collective, and the
  // rendezvous itself, gives up after `timeout` with an hd::Error (a rank that died or never
  // came makes the others fail, not hang).
  static std::shared_ptr<Comm> join(const Env& env, const c10::Device& device, std::chrono::milliseconds timeout);
  ~Comm();
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;

  int64_t rank() const { return env_.rank; }
  int64_t size() const { return env_.world_size; }
  bool is_main() const { return env_.rank == 0; }

  // Collectives on contiguous tensors of the group's device, in place; `what` names the
  // operation in error messages. Every rank must issue the same collectives in the same order.
  void broadcast(std::vector<torch::Tensor>& tensors, int64_t root, const std::string& what);
  void allreduce_sum(torch::Tensor& t, const std::string& what);
  std::shared_ptr<Pending> allreduce_sum_async(torch::Tensor& t);
  void wait(const std::shared_ptr<Pending>& p, const std::string& what);

 private:
  struct Impl;
  Comm(Env env, c10::Device device, std::chrono::milliseconds timeout, std::unique_ptr<Impl> impl);
  [[noreturn]] void fail(const std::string& what, const std::exception& e) const;
  Env env_;
  c10::Device device_;
  std::chrono::milliseconds timeout_;
  std::unique_ptr<Impl> impl_;
};

// Averages gradients across the ranks during backward, as DistributedDataParallel does: the
// parameters are grouped into buckets of about `bucket_bytes` (in reverse registration order,
// roughly the order backward produces their gradients); a hook on each parameter copies its
// gradient into its bucket, and a full bucket starts its all-reduce while backward goes on.
// Buckets are launched strictly in index order, so every rank issues the same sequence.
//   reducer.begin(); loss.backward(); reducer.finish();  // p.grad() = mean over ranks
// A parameter no rank produced a gradient for keeps an undefined grad (as without the reducer).
class GradReducer {
 public:
  GradReducer(std::shared_ptr<Comm> comm, std::vector<torch::Tensor> params, int64_t bucket_bytes = 25 << 20);
  ~GradReducer();
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  void begin();
  void finish();
  size_t num_buckets() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
  std::vector<torch::Tensor> params_;
  std::vector<unsigned> hooks_;
};

}  // namespace hd::parallel
