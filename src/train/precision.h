// Numeric precision of a run: fp32 throughout, or bf16 autocast for the trained model's forward
// (matrix products and attention in bfloat16, reductions and normalisations kept in float32 by
// LibTorch's autocast lists) with float32 master weights, gradients and optimiser state.
#pragma once

#include <string>

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

namespace hd::train {

enum class Precision { FP32, BF16 };

std::string to_string(Precision p);

// Whether this CPU has native bfloat16 dot products (AVX512-BF16 or AMX-BF16); without them
// LibTorch emulates bf16 GEMMs and they are several times slower than fp32.
bool cpu_has_native_bf16();

// "fp32", "bf16" or "auto" (bf16 on CUDA and on CPUs with native bf16, fp32 otherwise).
// hd::Error naming the option for anything else.
Precision parse_precision(const std::string& text, const c10::Device& device);

// The dtype frozen teachers (and other inference-only models) hold their weights in: bf16 runs
// keep teachers entirely in bf16 (their targets are compared in fp32), fp32 runs in fp32.
c10::ScalarType inference_dtype(Precision p);

// fp32 that is fp32 on CUDA too: cuDNN convolutions and cuBLAS matrix products without TF32
// (LibTorch, like PyTorch, lets cuDNN use TF32 by default). For the commands whose output is
// compared with other implementations (features, dump-step); no effect on the CPU.
void disable_tf32();

// Autocast to bf16 on `device` for the scope's lifetime (nothing when !enabled); the cast cache
// is cleared on exit, as torch.autocast does.
class AutocastScope {
 public:
  AutocastScope(const c10::Device& device, bool enabled);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool enabled_, cuda_, prev_enabled_ = false;
  int prev_dtype_ = 0;
};

}  // namespace hd::train
