// The one exception type of user-facing failures.
#pragma once

#include <stdexcept>

namespace hd {

// Every user-facing failure (bad file, bad option, bad config) is an hd::Error whose message
// names the offending file / key and what is wrong. main() prints it and exits non-zero.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace hd
