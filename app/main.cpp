// hybrid-distill: command-line entry point.
#include <iostream>
#include <string>

#include <c10/util/Exception.h>

#include "app/commands.h"
#include "parallel/comm.h"
#include "util/error.h"
#include "util/threads.h"

int main(int argc, char** argv) {
  hd::ensure_passive_openmp(argv);
  hd::cli::set_command_line(argc, argv);
  CLI::App app{"hybrid-distill " HD_VERSION
               " - Hybrid Distillation of Vision Transformers from a masked-image-modelling teacher "
               "and a supervised/contrastive teacher (LibTorch)."};
  app.require_subcommand(1);
  app.option_defaults()->always_capture_default();
  app.set_version_flag("--version", [] { return hd::cli::version_text(); },
                       "Print the version, the commit built from, LibTorch's version and the devices, and exit");
  hd::cli::add_presets(app);
  hd::cli::add_inspect(app);
  hd::cli::add_init(app);
  hd::cli::add_export(app);
  hd::cli::add_features(app);
  hd::cli::add_data(app);
  hd::cli::add_distill(app);
  hd::cli::add_train(app);
  hd::cli::add_pretrain(app);
  hd::cli::add_eval(app);
  hd::cli::add_analyze(app);
  hd::cli::add_compare(app);
  hd::cli::add_bench(app);
  hd::cli::add_launch(app);
  // In a multi-process job every message says which process wrote it.
  std::string who = "hybrid-distill";
  try {
    if (const auto env = hd::parallel::env_from_environment(); env.distributed())
      who += "[rank " + std::to_string(env.rank) + "]";
  } catch (const hd::Error&) {
    // Malformed variables: the command itself reports them, if it is a multi-process one.
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const hd::Error& e) {
    std::cerr << who << ": error: " << e.what() << "\n";
    return 1;
  } catch (const c10::Error& e) {
    std::cerr << who << ": error: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << who << ": error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
