#include "parallel/comm.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include <torch/torch.h>
#include <torch/version.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>
#ifdef HD_WITH_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef HD_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "util/error.h"
#include "util/parse.h"

namespace hd::parallel {

namespace {

// LibTorch 2.x splits the process group into a front (ProcessGroup) and per-device backends
// (ProcessGroupGloo and ProcessGroupNCCL derive from Backend); in 1.13 they are process groups.
#if TORCH_VERSION_MAJOR >= 2
using Group = c10d::Backend;
#else
using Group = c10d::ProcessGroup;
#endif

// An integer environment variable in [lo, hi]; `fallback` when unset.
int64_t env_int(const char* name, int64_t fallback, int64_t lo, int64_t hi) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  std::string s(v);
  auto parsed = parse_int(s);
  if (!parsed) throw Error("environment variable " + std::string(name) + "='" + s + "' is not an integer");
  const int64_t x = *parsed;
  if (x < lo || x > hi)
    throw Error("environment variable " + std::string(name) + "=" + s + " is out of range [" + std::to_string(lo) +
                ", " + std::to_string(hi) + "]");
  return x;
}

std::string seconds_text(std::chrono::milliseconds t) { return std::to_string(t.count() / 1000.0).substr(0, 6) + " s"; }

// An exception's message without c10's backtrace.
std::string short_message(const std::exception& e) {
  std::string msg = e.what();
  if (auto nl = msg.find("\nException raised from"); nl != std::string::npos) msg.resize(nl);
  return msg;
}

std::string who(const Env& env) {
  return "rank " + std::to_string(env.rank) + " of " + std::to_string(env.world_size) + ": ";
}

}  // namespace

Env env_from_environment() {
  Env e;
  e.world_size = env_int("WORLD_SIZE", 1, 1, 1 << 20);
  if (e.world_size == 1) return e;
  if (!std::getenv("RANK")) throw Error("WORLD_SIZE=" + std::to_string(e.world_size) + " but RANK is not set");
  e.rank = env_int("RANK", 0, 0, e.world_size - 1);
  e.local_rank = env_int("LOCAL_RANK", e.rank, 0, e.world_size - 1);
  const char* addr = std::getenv("MASTER_ADDR");
  if (!addr || !*addr) throw Error("WORLD_SIZE=" + std::to_string(e.world_size) + " but MASTER_ADDR is not set");
  e.master_addr = addr;
  if (!std::getenv("MASTER_PORT")) throw Error("WORLD_SIZE=" + std::to_string(e.world_size) + " but MASTER_PORT is not set");
  e.port = static_cast<int>(env_int("MASTER_PORT", 29500, 1, 65535));
  return e;
}

int free_loopback_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw Error(std::string("cannot open a socket: ") + std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    const std::string why = std::strerror(errno);
    ::close(fd);
    throw Error("cannot find a free port on 127.0.0.1: " + why);
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

struct Pending {
  c10::intrusive_ptr<c10d::Work> work;
};

struct Comm::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<Group> group;
};

Comm::Comm(Env env, c10::Device device, std::chrono::milliseconds timeout, std::unique_ptr<Impl> impl)
    : env_(std::move(env)), device_(device), timeout_(timeout), impl_(std::move(impl)) {}

Comm::~Comm() = default;

void Comm::fail(const std::string& what, const std::exception& e) const {
  throw Error(who(env_) + what + " failed (another rank exited, or none answered within " + seconds_text(timeout_) +
              "): " + short_message(e));
}

std::shared_ptr<Comm> Comm::join(const Env& env, const c10::Device& device, std::chrono::milliseconds timeout) {
  auto rendezvous_failed = [&](const std::string& detail) {
    return Error(who(env) + "rendezvous at " + env.master_addr + ":" + std::to_string(env.port) +
                 " (MASTER_ADDR:MASTER_PORT) failed within " + seconds_text(timeout) + detail);
  };
  auto impl = std::make_unique<Impl>();
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(env.port);
    so.isServer = env.rank == 0;
    so.numWorkers = static_cast<std::size_t>(env.world_size);
    so.waitWorkers = true;
    so.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
    impl->store = c10::make_intrusive<c10d::PrefixStore>("hybrid-distill", tcp);
  } catch (const std::exception& e) {
    throw rendezvous_failed(": " + short_message(e));
  }
  try {
    if (device.is_cuda()) {
#ifdef HD_WITH_NCCL
      auto o = c10d::ProcessGroupNCCL::Options::create();
      o->timeout = timeout;
      impl->group = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl->store, static_cast<int>(env.rank),
                                                               static_cast<int>(env.world_size), o);
#else
      throw Error("data parallel on CUDA needs NCCL: configure with -DHD_NCCL=ON against a CUDA LibTorch");
#endif
    } else {
#ifdef HD_WITH_GLOO
      auto o = c10d::ProcessGroupGloo::Options::create(timeout);
      if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname)
        o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      else if (env.master_addr == "localhost" || env.master_addr.rfind("127.", 0) == 0)
        o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));  // one machine
      else
        o->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      o->threads = 2;
      impl->group = c10::make_intrusive<c10d::ProcessGroupGloo>(impl->store, static_cast<int>(env.rank),
                                                               static_cast<int>(env.world_size), o);
#else
      throw Error("data parallel on CPU needs Gloo: this build has no Gloo headers (Debian: libgloo-dev)");
#endif
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw rendezvous_failed(" while connecting the process group: " + short_message(e));
  }
  return std::shared_ptr<Comm>(new Comm(env, device, timeout, std::move(impl)));
}

void Comm::broadcast(std::vector<torch::Tensor>& tensors, int64_t root, const std::string& what) {
  // One collective per dtype over a flat copy (c10d's broadcast takes one tensor per process).
  std::map<c10::ScalarType, std::vector<size_t>> by_type;
  for (size_t i = 0; i < tensors.size(); ++i) by_type[tensors[i].scalar_type()].push_back(i);
  torch::NoGradGuard ng;
  for (auto& [type, idx] : by_type) {
    std::vector<torch::Tensor> flat_parts;
    for (auto i : idx) flat_parts.push_back(tensors[i].detach().reshape({-1}).to(device_));
    std::vector<torch::Tensor> buf{torch::cat(flat_parts)};
    try {
      c10d::BroadcastOptions o;
      o.rootRank = root;
      o.timeout = timeout_;
      impl_->group->broadcast(buf, o)->wait(timeout_);
    } catch (const std::exception& e) {
      fail(what, e);
    }
    int64_t off = 0;
    for (auto i : idx) {
      auto& t = tensors[i];
      const int64_t n = t.numel();
      t.detach().copy_(buf[0].narrow(0, off, n).view(t.sizes()));
      off += n;
    }
  }
}

void Comm::allreduce_sum(torch::Tensor& t, const std::string& what) { wait(allreduce_sum_async(t), what); }

std::shared_ptr<Pending> Comm::allreduce_sum_async(torch::Tensor& t) {
  std::vector<torch::Tensor> v{t};
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::SUM;
  o.timeout = timeout_;
  auto p = std::make_shared<Pending>();
  try {
    p->work = impl_->group->allreduce(v, o);
  } catch (const std::exception& e) {
    fail("all-reduce", e);
  }
  return p;
}

void Comm::wait(const std::shared_ptr<Pending>& p, const std::string& what) {
  try {
    p->work->wait(timeout_);
  } catch (const std::exception& e) {
    fail(what, e);
  }
}

// --- GradReducer ---------------------------------------------------------------------------

struct GradReducer::State {
  std::shared_ptr<Comm> comm;
  struct Bucket {
    std::vector<size_t> params;  // indices into Slots, in bucket order
    torch::Tensor flat;
    int64_t waiting = 0;         // gradients still to arrive
    std::shared_ptr<Pending> pending;
  };
  struct Slot {
    size_t bucket = 0;
    int64_t offset = 0, numel = 0;
    bool ready = false;
  };
  std::vector<Bucket> buckets;
  std::vector<Slot> slots;
  size_t next_launch = 0;
  bool armed = false;
  std::mutex mutex;

  void launch_ready() {  // mutex held
    while (next_launch < buckets.size() && buckets[next_launch].waiting == 0) {
      auto& b = buckets[next_launch];
      b.pending = comm->allreduce_sum_async(b.flat);
      ++next_launch;
    }
  }

  void on_grad(size_t i, const torch::Tensor& g) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!armed) return;
    auto& s = slots[i];
    auto& b = buckets[s.bucket];
    torch::NoGradGuard ng;
    if (s.ready) {  // a second gradient for the same parameter in one backward: accumulate
      b.flat.narrow(0, s.offset, s.numel).add_(g.reshape({-1}));
      return;
    }
    b.flat.narrow(0, s.offset, s.numel).copy_(g.reshape({-1}));
    s.ready = true;
    --b.waiting;
    launch_ready();
  }
};

GradReducer::GradReducer(std::shared_ptr<Comm> comm, std::vector<torch::Tensor> params, int64_t bucket_bytes)
    : state_(std::make_shared<State>()), params_(std::move(params)) {
  state_->comm = std::move(comm);
  state_->slots.resize(params_.size());
  // Reverse registration order: the last layers' gradients come first in backward. A bucket is
  // closed once it holds bucket_bytes or the dtype changes; its flat buffer is allocated after.
  std::vector<torch::TensorOptions> options;
  std::vector<int64_t> sizes;
  for (size_t k = params_.size(); k-- > 0;) {
    const auto& p = params_[k];
    if (sizes.empty() || sizes.back() * static_cast<int64_t>(options.back().dtype().itemsize()) >= bucket_bytes ||
        options.back().dtype() != p.dtype()) {
      state_->buckets.emplace_back();
      options.push_back(p.options().requires_grad(false));
      sizes.push_back(0);
    }
    auto& s = state_->slots[k];
    s.bucket = state_->buckets.size() - 1;
    s.offset = sizes.back();
    s.numel = p.numel();
    state_->buckets.back().params.push_back(k);
    sizes.back() += s.numel;
  }
  for (size_t b = 0; b < state_->buckets.size(); ++b) state_->buckets[b].flat = torch::empty({sizes[b]}, options[b]);
  std::weak_ptr<State> weak = state_;
  for (size_t k = 0; k < params_.size(); ++k)
    hooks_.push_back(params_[k].register_hook([weak, k](torch::Tensor g) {
      if (auto s = weak.lock()) s->on_grad(k, g);
    }));
}

GradReducer::~GradReducer() {
  for (size_t k = 0; k < params_.size(); ++k) params_[k].remove_hook(hooks_[k]);
}

size_t GradReducer::num_buckets() const { return state_->buckets.size(); }

void GradReducer::begin() {
  std::lock_guard<std::mutex> lock(state_->mutex);
  for (auto& b : state_->buckets) {
    b.waiting = static_cast<int64_t>(b.params.size());
    b.pending.reset();
  }
  for (auto& s : state_->slots) s.ready = false;
  state_->next_launch = 0;
  state_->armed = true;
}

void GradReducer::finish() {
  auto& st = *state_;
  {
    std::lock_guard<std::mutex> lock(st.mutex);
    st.armed = false;
    // Parameters backward did not reach on this rank contribute zeros; launch what is left.
    torch::NoGradGuard ng;
    for (size_t k = 0; k < st.slots.size(); ++k) {
      auto& s = st.slots[k];
      if (s.ready) continue;
      st.buckets[s.bucket].flat.narrow(0, s.offset, s.numel).zero_();
      s.ready = true;
      --st.buckets[s.bucket].waiting;
    }
    st.launch_ready();
  }
  const double inv = 1.0 / static_cast<double>(st.comm->size());
  torch::NoGradGuard ng;
  for (auto& b : st.buckets) {
    st.comm->wait(b.pending, "gradient all-reduce");
    b.flat.mul_(inv);
    for (auto k : b.params) {
      auto& p = params_[k];
      const auto& s = st.slots[k];
      auto avg = b.flat.narrow(0, s.offset, s.numel).view(p.sizes());
      if (p.grad().defined()) {
        p.mutable_grad().copy_(avg);
      } else if (avg.count_nonzero().item<int64_t>() != 0) {
        p.mutable_grad() = avg.clone();  // another rank reached this parameter
      }
    }
  }
}

}  // namespace hd::parallel
