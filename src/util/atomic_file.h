// Atomic file writes: a reader sees the old file or the new one, never a part.
#pragma once

#include <cstdio>
#include <functional>
#include <string>

namespace hd {

// Writes a file atomically: `write` fills a temporary file next to `path`, which is then
// flushed, fsync'ed and renamed over `path` (and the directory fsync'ed). If anything fails
// (full disk, killed process) the previous content of `path` is left untouched and the
// temporary is removed; the error names `path`.
void atomic_write_file(const std::string& path, const std::function<void(std::FILE*)>& write);

}  // namespace hd
