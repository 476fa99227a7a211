// libFuzzer harness: the published-checkpoint reader (torch.save zip archives, legacy pickles
// and torch.jit.save archives through the project's restricted unpickler; safetensors by the same
// entry point) and the timm-layout conversion after it; then every tensor the pickle names, also
// outside the state dict the reader picked. Input: the file's bytes. Anything but a clean
// hd::Error (naming the file) is a failure.
#include <cstdint>

#include <torch/torch.h>

#include "fuzz/fuzz_util.h"
#include "io/torch_file.h"
#include "model/interop.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = hd::fuzz::write_input("in.pth", data, size);
  hd::fuzz::expect_only_hd_errors("checkpoint", [&] {
    auto file = hd::model::read_checkpoint_file(path);
    for (const auto& [name, t] : file.tensors)
      if (!t.defined()) std::abort();
    auto conv = hd::model::to_timm_layout(std::move(file.tensors), path);
    for (const auto& [name, t] : conv.tensors)
      if (!t.defined() || name.empty()) std::abort();
  });
  hd::fuzz::expect_only_hd_errors("checkpoint", [&] {
    if (hd::model::checkpoint_format(path) == "safetensors") return;
    auto file = hd::io::TorchFile::open(path);
    for (const auto& v : file.document().values())
      if (v->kind == hd::io::pickle::Kind::Tensor) {
        try {
          auto t = file.tensor(*v);
          if (t.defined() && t.numel() > 0) (void)t.sum().item<double>();  // touches every element
        } catch (const hd::Error&) {
        }
      }
  });
  return 0;
}
