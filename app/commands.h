// The CLI is a thin layer over the library: each subcommand lives in its own cmd_*.cpp and only
// parses options, calls library functions and prints.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <c10/core/Device.h>

namespace hd::cli {

void add_presets(CLI::App& app);
void add_inspect(CLI::App& app);
void add_init(CLI::App& app);
void add_features(CLI::App& app);
void add_bench(CLI::App& app);
void add_data(CLI::App& app);
void add_distill(CLI::App& app);  // distill + dump-step
void add_train(CLI::App& app);
void add_analyze(CLI::App& app);
void add_compare(CLI::App& app);

// Options shared by several subcommands.
struct Runtime {
  int threads = 0;             // 0: all hardware threads
  std::string device = "cpu";  // cpu | cuda | cuda:N
};
void add_runtime_options(CLI::App* sub, Runtime& rt);
// Applies the thread count and resolves the device (hd::Error if CUDA is asked for but absent).
c10::Device apply_runtime(const Runtime& rt);

// "all", "" (none), or a comma list of indices and ranges ("0,3,8-11"); negative indices count
// from the end (-1 = last). Validated against `depth`; `what` names the option for messages.
std::vector<int64_t> parse_layers(const std::string& spec, int64_t depth, const std::string& what);

// Directory of the source tree's bench/ scripts (compiled in), for the Python reference runs.
std::string source_dir();

}  // namespace hd::cli
