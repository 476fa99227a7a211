#include "util/threads.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <thread>

#include <torch/torch.h>

namespace hd {

int set_threads(int n) {
  if (n <= 0) {
    n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    // Several processes of one job on this machine (torchrun and `hybrid-distill launch` set
    // LOCAL_WORLD_SIZE) share its cores instead of each taking all of them.
    if (const char* local = std::getenv("LOCAL_WORLD_SIZE")) {
      const int w = std::atoi(local);
      if (w > 1) n = std::max(1, n / w);
    }
  }
  torch::set_num_threads(n);
  return torch::get_num_threads();
}

void ensure_passive_openmp(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  ::setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  ::execv("/proc/self/exe", argv);
  // execv only returns on failure (no /proc, say): carry on with the spinning default.
}

}  // namespace hd
