#include <torch/torch.h>

#include "app/commands.h"
#include "util/common.h"

namespace hd::cli {

void add_runtime_options(CLI::App* sub, Runtime& rt) {
  sub->add_option("-t,--threads", rt.threads, "CPU threads for LibTorch (0 = all cores)");
  sub->add_option("--device", rt.device, "cpu, cuda or cuda:N");
}

c10::Device apply_runtime(const Runtime& rt) {
  set_threads(rt.threads);
  c10::Device dev(c10::kCPU);
  try {
    dev = c10::Device(rt.device);
  } catch (const std::exception&) {
    throw Error("--device '" + rt.device + "' is not a device (use cpu, cuda or cuda:N)");
  }
  if (dev.is_cuda() && !torch::cuda::is_available())
    throw Error("--device " + rt.device + ": this build of LibTorch has no usable CUDA device");
  return dev;
}

std::vector<int64_t> parse_layers(const std::string& spec, int64_t depth, const std::string& what) {
  std::vector<int64_t> out;
  if (spec.empty() || spec == "none") return out;
  if (spec == "all") {
    for (int64_t i = 0; i < depth; ++i) out.push_back(i);
    return out;
  }
  auto parse_one = [&](const std::string& s) -> int64_t {
    size_t pos = 0;
    int64_t v = 0;
    try {
      v = std::stoll(s, &pos);
    } catch (const std::exception&) {
      pos = 0;
    }
    if (pos == 0 || pos != s.size()) throw Error(what + ": '" + s + "' is not a layer index");
    if (v < 0) v += depth;
    if (v < 0 || v >= depth)
      throw Error(what + ": layer " + s + " is out of range for a " + std::to_string(depth) + "-block model");
    return v;
  };
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) {
    auto dash = item.find('-', 1);  // a leading '-' is a negative index, not a range
    if (dash != std::string::npos) {
      int64_t a = parse_one(item.substr(0, dash)), b = parse_one(item.substr(dash + 1));
      if (b < a) throw Error(what + ": range '" + item + "' is empty");
      for (int64_t i = a; i <= b; ++i) out.push_back(i);
    } else {
      out.push_back(parse_one(item));
    }
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

std::string source_dir() { return HD_SOURCE_DIR; }

}  // namespace hd::cli
