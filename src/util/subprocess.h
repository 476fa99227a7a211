// Running a helper program (the Python references of the benchmarks) and reading its result.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace hd {

// Runs `command` through the shell and parses the last non-empty line of its standard output as
// JSON (the result line; anything printed before it is ignored). Returns null if the command
// could not be started or that line is not JSON; the whole output then goes to stderr, headed
// by `what`, so that a failing reference explains itself.
nlohmann::json json_result_of(const std::string& command, const std::string& what);

}  // namespace hd
