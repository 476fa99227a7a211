// `launch`: runs a command as N local processes of one data-parallel job, as torchrun does for
// one machine. Each process gets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and
// MASTER_PORT; the first one to fail brings the others down (SIGTERM, then SIGKILL after a grace
// period) and its exit status becomes the launcher's.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "app/commands.h"
#include "parallel/comm.h"
#include "util/error.h"

namespace hd::cli {

namespace {

std::vector<pid_t> g_children;
extern "C" void forward_signal(int sig) {
  for (pid_t p : g_children)
    if (p > 0) ::kill(p, sig);
}

std::string describe(int status) {
  if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("was killed by signal ") + std::to_string(WTERMSIG(status)) + " (" +
                                  strsignal(WTERMSIG(status)) + ")";
  return "ended";
}

int exit_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

}  // namespace

void add_launch(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "launch",
      "Run a command as N local processes of one data-parallel job: hybrid-distill launch -n 2 -- distill -r R.yaml");
  struct Opts {
    int nproc = 0, port = 0;
    double grace = 10;
    std::string addr = "127.0.0.1";
    std::vector<std::string> command;
  };
  auto o = std::make_shared<Opts>();
  sub->add_option("-n,--nproc", o->nproc, "processes")->required()->check(CLI::Range(1, 4096));
  sub->add_option("--port", o->port, "MASTER_PORT (0: a free port)")->check(CLI::Range(0, 65535));
  sub->add_option("--grace", o->grace, "seconds the other ranks get to stop after one fails, before SIGKILL");
  sub->add_option("command", o->command, "the hybrid-distill command each process runs (after --)");
  sub->footer("Everything after -- is the hybrid-distill command each process runs. The recipe's batch is the\n"
              "global batch: each process takes batch / N images of every step. LibTorch threads default to\n"
              "cores / N per process.");
  sub->callback([o] {
    std::vector<std::string> args = o->command;
    if (args.empty()) throw Error("launch: no command given (hybrid-distill launch -n N -- COMMAND ...)");
    if (args.front() == "launch") throw Error("launch: the command cannot itself be 'launch'");
    const int port = o->port > 0 ? o->port : parallel::free_loopback_port();

    std::vector<std::string> argv_s{"hybrid-distill"};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);

    std::fflush(stdout);
    std::fflush(stderr);
    g_children.assign(static_cast<size_t>(o->nproc), -1);
    auto old_int = std::signal(SIGINT, forward_signal);
    auto old_term = std::signal(SIGTERM, forward_signal);
    for (int r = 0; r < o->nproc; ++r) {
      pid_t pid = ::fork();
      if (pid < 0) {
        forward_signal(SIGTERM);
        throw Error(std::string("launch: fork failed: ") + std::strerror(errno));
      }
      if (pid == 0) {
        std::signal(SIGINT, SIG_DFL);
        std::signal(SIGTERM, SIG_DFL);
        ::setenv("RANK", std::to_string(r).c_str(), 1);
        ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
        ::setenv("WORLD_SIZE", std::to_string(o->nproc).c_str(), 1);
        ::setenv("LOCAL_WORLD_SIZE", std::to_string(o->nproc).c_str(), 1);
        ::setenv("MASTER_ADDR", o->addr.c_str(), 1);
        ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
        ::execv("/proc/self/exe", argv.data());
        std::fprintf(stderr, "hybrid-distill launch: cannot run /proc/self/exe: %s\n", std::strerror(errno));
        std::_Exit(127);
      }
      g_children[static_cast<size_t>(r)] = pid;
    }

    int result = 0, running = o->nproc;
    bool failed = false;
    auto deadline = std::chrono::steady_clock::time_point::max();
    while (running > 0) {
      int status = 0;
      pid_t pid = ::waitpid(-1, &status, failed ? WNOHANG : 0);
      if (pid < 0) {
        if (errno == EINTR) continue;
        break;
      }
      if (pid == 0) {  // after a failure: give the others the grace period, then kill them
        if (std::chrono::steady_clock::now() > deadline) forward_signal(SIGKILL);
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        continue;
      }
      int rank = -1;
      for (size_t r = 0; r < g_children.size(); ++r)
        if (g_children[r] == pid) {
          rank = static_cast<int>(r);
          g_children[r] = -1;
        }
      if (rank < 0) continue;
      --running;
      if (exit_code(status) != 0 && !failed) {
        failed = true;
        result = exit_code(status);
        if (running > 0) {
          std::fprintf(stderr, "hybrid-distill launch: rank %d %s; stopping the other %d process(es)\n", rank,
                       describe(status).c_str(), running);
          forward_signal(SIGTERM);
          deadline = std::chrono::steady_clock::now() +
                     std::chrono::milliseconds(static_cast<int64_t>(std::max(0.0, o->grace) * 1000));
        } else {
          std::fprintf(stderr, "hybrid-distill launch: rank %d %s\n", rank, describe(status).c_str());
        }
      }
    }
    std::signal(SIGINT, old_int);
    std::signal(SIGTERM, old_term);
    std::fflush(stdout);
    if (result != 0) std::exit(result);
  });
}

}  // namespace hd::cli
