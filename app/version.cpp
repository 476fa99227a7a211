// What this binary is: its version, the commit it was built from, the LibTorch it runs on and
// the devices that LibTorch sees (--version, and every result.json).
#include <torch/cuda.h>
#include <torch/version.h>

#include "app/commands.h"
#include "hd_git_version.h"

namespace hd::cli {

nlohmann::json build_info() {
  std::string devices = "cpu";
  if (const auto n = torch::cuda::device_count(); n > 0) devices += ", cuda x " + std::to_string(n);
  return {{"version", HD_VERSION}, {"commit", HD_GIT_COMMIT}, {"libtorch", TORCH_VERSION}, {"devices", devices}};
}

std::string version_text() {
  const auto b = build_info();
  return "hybrid-distill " + b["version"].get<std::string>() + " (commit " + b["commit"].get<std::string>() +
         ")\nLibTorch " + b["libtorch"].get<std::string>() + "\ndevices: " + b["devices"].get<std::string>();
}

}  // namespace hd::cli
