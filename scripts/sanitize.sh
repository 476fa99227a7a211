#!/usr/bin/env bash
# Builds the project with AddressSanitizer + UndefinedBehaviorSanitizer (-DHD_SANITIZE=ON) into
# build-asan/ and runs the test suite there.
#   bash scripts/sanitize.sh [TEST...]    e.g. bash scripts/sanitize.sh test_io test_data
# With TEST names only those binaries are built and run (ctest -R); default: all of them.
#   BUILD_DIR (default build-asan), JOBS (build jobs, default 1)
# LibTorch is not instrumented. Run-time options, kept minimal:
#   detect_leaks=0            LibTorch/OpenBLAS keep process-lifetime allocations, reported as
#                             leaks at exit; not the project's.
#   alloc_dealloc_mismatch=0  LibTorch frees some buffers it allocated in inlined header code
#                             with a different allocator family than ASan sees; not ours.
#   scripts/ubsan.supp        UBSan reports inside LibTorch's headers (c10) are suppressed.
# Any report in project code fails the run (halt_on_error=1).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build-asan}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DHD_SANITIZE=ON >/dev/null
# Set for the build too: test discovery runs the test binaries.
export ASAN_OPTIONS=detect_leaks=0:alloc_dealloc_mismatch=0:halt_on_error=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:suppressions=$PWD/scripts/ubsan.supp
export OMP_WAIT_POLICY=PASSIVE
ninja -C "$BUILD_DIR" -j "${JOBS:-1}" "$@"
regex=""
for t in "$@"; do  # ctest names tests Suite.Case: select the suites of the named binaries
  regex+="${regex:+|}$("$BUILD_DIR/$t" --gtest_list_tests | grep -v '^ ' | tr -d '.' | paste -sd'|')"
done
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "${CTEST_JOBS:-2}" ${regex:+-R "^(${regex})\\."}
