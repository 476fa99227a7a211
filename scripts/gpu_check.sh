#!/usr/bin/env bash
# The CUDA path on a GPU machine, in one run: build against the LibTorch of the Python PyTorch
# install (Release, NCCL), the CUDA tests (tests/app/test_cuda.cpp) and the precision tests,
# then the ViT-B/16 224 hybrid-step benchmark in bf16 next to Python PyTorch. Every log and
# figure goes to $OUT (default: gpu-check/). Sized for a few minutes on one GPU with 16 cores.
#   bash scripts/gpu_check.sh
#   OUT=DIR      where logs and figures go
#   DEPS=DIR     a prefix with the build's non-LibTorch dependencies (yaml-cpp, nlohmann_json,
#                CLI11, GoogleTest, libpng, libturbojpeg, zlib headers and libraries), for a
#                machine without them installed; added to CMAKE_PREFIX_PATH
#   BATCH=N      batch of the ViT-B/16 benchmark (default 128)
# Exits non-zero when the build or a test fails; the benchmark's figures are in
# $OUT/bench_vit_base_patch16_224_bf16.txt (C++ and Python img/s, hybrid/single, % of the
# measured bf16 GEMM peak, Python's peak GPU memory).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
BATCH=${BATCH:-128}
status=0
log() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$OUT/summary.txt"; }

{ nvidia-smi || true; nproc; python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
  "devices", torch.cuda.device_count(), "cxx11 abi", torch._C._GLIBCXX_USE_CXX11_ABI)'; } > "$OUT/machine.txt" 2>&1
log "machine: $(head -c 2000 "$OUT/machine.txt" | grep -m1 -E 'H200|H100|A100|NVIDIA' || echo unknown)"

prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)') || { log "no Python torch"; exit 2; }
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
t0=$(date +%s)
if ! cmake -S . -B build-gpu "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DHD_NCCL=ON \
      -DCMAKE_PREFIX_PATH="$prefix${DEPS:+;$DEPS}" > "$OUT/configure.log" 2>&1; then
  log "configure failed (see configure.log; a missing dependency can be brought with DEPS=)"; exit 1
fi
if ! cmake --build build-gpu -j "$(nproc)" > "$OUT/build.log" 2>&1; then
  log "build failed (see build.log)"; tail -30 "$OUT/build.log" >> "$OUT/summary.txt"; exit 1
fi
log "built in $(( $(date +%s) - t0 )) s"

t0=$(date +%s)
ctest --test-dir build-gpu --output-on-failure -j 4 --timeout 300 -R 'Cuda\.|Precision\.|Cli\.|Parallel\.' \
  > "$OUT/ctest.log" 2>&1 || status=1
log "tests: $(grep -E 'tests passed|tests failed' "$OUT/ctest.log" | tail -1) in $(( $(date +%s) - t0 )) s"

for prec in bf16 fp32; do
  f="$OUT/bench_vit_base_patch16_224_$prec.txt"
  timeout 240 build-gpu/bench_distill --device cuda --arch vit_base_patch16_224 --batch "$BATCH" --precision "$prec" \
    --warmup 3 --iters 10 --rounds 2 > "$f" 2>&1 || status=1
  log "bench $prec: $(grep -E '^hybrid step' "$f" | head -1)"
  [ "$prec" = bf16 ] || continue
  # The benchmark's own model-FLOP figures against the H200's dense bf16 peak (989 TFLOP/s).
  grep -E 'GFLOP/s achieved|GEMM peak|peak' "$f" >> "$OUT/summary.txt"
done
exit $status
