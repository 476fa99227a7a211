#include "train/precision.h"

#include <fstream>
#include <sstream>

#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include "util/error.h"

// LibTorch 2.4 replaced the per-device autocast setters by ones taking the device type.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
#define HD_AUTOCAST_BY_TYPE 1
#endif

namespace hd::train {

std::string to_string(Precision p) { return p == Precision::BF16 ? "bf16" : "fp32"; }

c10::ScalarType inference_dtype(Precision p) { return p == Precision::BF16 ? c10::kBFloat16 : c10::kFloat; }

void disable_tf32() {
  at::globalContext().setAllowTF32CuDNN(false);
  at::globalContext().setAllowTF32CuBLAS(false);
}

bool cpu_has_native_bf16() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line);
    for (std::string w; words >> w;)
      if (w == "avx512_bf16" || w == "amx_bf16") return true;
    return false;
  }
  return false;
}

Precision parse_precision(const std::string& text, const c10::Device& device) {
  if (text == "fp32") return Precision::FP32;
  if (text == "bf16") return Precision::BF16;
  if (text == "auto") return device.is_cuda() || cpu_has_native_bf16() ? Precision::BF16 : Precision::FP32;
  throw Error("--precision '" + text + "': use fp32, bf16 or auto");
}

AutocastScope::AutocastScope(const c10::Device& device, bool enabled) : enabled_(enabled), cuda_(device.is_cuda()) {
  if (!enabled_) return;
#ifdef HD_AUTOCAST_BY_TYPE
  const auto type = cuda_ ? at::kCUDA : at::kCPU;
  prev_enabled_ = at::autocast::is_autocast_enabled(type);
  prev_dtype_ = static_cast<int>(at::autocast::get_autocast_dtype(type));
  at::autocast::set_autocast_dtype(type, at::kBFloat16);
  at::autocast::set_autocast_enabled(type, true);
#else
  if (cuda_) {
    prev_enabled_ = at::autocast::is_enabled();
    prev_dtype_ = static_cast<int>(at::autocast::get_autocast_gpu_dtype());
    at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
    at::autocast::set_enabled(true);
  } else {
    prev_enabled_ = at::autocast::is_cpu_enabled();
    prev_dtype_ = static_cast<int>(at::autocast::get_autocast_cpu_dtype());
    at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
    at::autocast::set_cpu_enabled(true);
  }
#endif
  at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
  if (!enabled_) return;
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  const auto dtype = static_cast<at::ScalarType>(prev_dtype_);
#ifdef HD_AUTOCAST_BY_TYPE
  const auto type = cuda_ ? at::kCUDA : at::kCPU;
  at::autocast::set_autocast_enabled(type, prev_enabled_);
  at::autocast::set_autocast_dtype(type, dtype);
#else
  if (cuda_) {
    at::autocast::set_enabled(prev_enabled_);
    at::autocast::set_autocast_gpu_dtype(dtype);
  } else {
    at::autocast::set_cpu_enabled(prev_enabled_);
    at::autocast::set_autocast_cpu_dtype(dtype);
  }
#endif
}

}  // namespace hd::train
