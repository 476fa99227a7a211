// Thread setup of the process: LibTorch's intra-op pool and OpenMP's wait policy.
#pragma once

namespace hd {

// Sets LibTorch's intra-op thread count (Debian's LibTorch defaults to 1 thread).
// n <= 0 means "all hardware threads" (divided among LOCAL_WORLD_SIZE processes). Returns the count in effect.
int set_threads(int n);

// LibTorch's OpenMP threads spin between parallel regions by default, and Debian's OpenBLAS runs
// its own pthreads for every matrix product: on a small machine the two pools fight for the
// cores and a training step runs 2-4x slower (measured on 2 cores). libgomp reads
// OMP_WAIT_POLICY only when it is loaded, so if the variable is unset this sets it to PASSIVE and
// re-executes the program (same arguments) once. A user's own setting is left alone. Returns
// only if no re-execution happened.
void ensure_passive_openmp(char** argv);

}  // namespace hd
