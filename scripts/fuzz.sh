#!/usr/bin/env bash
# Builds the libFuzzer harnesses (fuzz/fuzz_<parser>.cpp) with clang, AddressSanitizer and
# UndefinedBehaviorSanitizer into build-fuzz/, and runs each one on its seed corpus.
#   bash scripts/fuzz.sh [SECONDS] [PARSER...]     (default: 600 s each; all parsers)
#   FUZZ_JOBS=2   run that many fuzzers at the same time (default: 1)
#   BUILD_DIR     build folder (default: build-fuzz); JOBS: build jobs (default: 1)
# New inputs found go to build-fuzz/corpus/<parser>/ (the committed seeds in fuzz/corpus/ stay
# as they are); crashes, hangs and out-of-memory inputs to build-fuzz/artifacts/<parser>/, and
# each fuzzer's log to build-fuzz/logs/<parser>.log. Exits non-zero if any fuzzer failed.
# Needs clang and its libFuzzer runtime (Debian 12: clang libclang-rt-14-dev), installed here if
# missing; this is not part of the normal build (scripts/setup.sh) or of the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${1:-600}
shift || true
PARSERS=("$@")
if ((${#PARSERS[@]} == 0)); then
  PARSERS=()
  for f in fuzz/fuzz_*.cpp; do n=$(basename "$f" .cpp); PARSERS+=("${n#fuzz_}"); done
fi
BUILD_DIR=${BUILD_DIR:-build-fuzz}
FUZZ_JOBS=${FUZZ_JOBS:-1}

if ! command -v clang++ >/dev/null || ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends clang libclang-rt-14-dev
fi

CXX=clang++ cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DHD_FUZZ=ON -DHD_BUILD_TESTS=OFF >/dev/null
ninja -C "$BUILD_DIR" -j "${JOBS:-1}" "${PARSERS[@]/#/fuzz_}"

# Input size caps: seeds are tiny; room enough for a few tensors / rows / a short recipe.
declare -A MAX_LEN=([safetensors]=4096 [idx]=4096 [image]=8192 [recipe]=4096 [checkpoint]=8192 [tar]=16384)
run_one() {
  local p=$1 corpus="$BUILD_DIR/corpus/$1" art="$BUILD_DIR/artifacts/$1/"
  mkdir -p "$corpus" "$art" "$BUILD_DIR/logs"
  # detect_leaks=0: LibTorch keeps process-lifetime allocations (not instrumented, not ours).
  # One OpenMP thread, not spinning: inputs are tiny, and parallel fuzzers share the cores.
  OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE \
  ASAN_OPTIONS=detect_leaks=0:alloc_dealloc_mismatch=0 UBSAN_OPTIONS=print_stacktrace=1 \
    "$BUILD_DIR/fuzz_$p" "$corpus" "fuzz/corpus/$p" -max_total_time="$SECONDS_EACH" \
    -rss_limit_mb=2048 -timeout=10 -max_len="${MAX_LEN[$p]:-4096}" -print_final_stats=1 \
    -artifact_prefix="$art" >"$BUILD_DIR/logs/$p.log" 2>&1
}

status=0
pids=()
names=()
for p in "${PARSERS[@]}"; do
  run_one "$p" &
  pids+=($!)
  names+=("$p")
  if ((${#pids[@]} >= FUZZ_JOBS)); then
    wait "${pids[0]}" || { echo "fuzz_${names[0]}: FAILED (see $BUILD_DIR/logs/${names[0]}.log)"; status=1; }
    pids=("${pids[@]:1}")
    names=("${names[@]:1}")
  fi
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { echo "fuzz_${names[$i]}: FAILED (see $BUILD_DIR/logs/${names[$i]}.log)"; status=1; }
done
for p in "${PARSERS[@]}"; do
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$BUILD_DIR/logs/$p.log" | grep -o '[0-9]*$' || echo "?")
  echo "fuzz_$p: ${runs} executions in ${SECONDS_EACH} s; artifacts: $(ls "$BUILD_DIR/artifacts/$p" | wc -l)"
done
exit $status
