#!/usr/bin/env bash
# Installs every Debian 12 package hybrid-distill needs, then configures and builds it.
# Idempotent: re-running only rebuilds what changed.
#   BUILD_DIR   build folder (default: build)
#   BUILD_TYPE  CMake build type (default: Release)
#   CMAKE_ARGS  extra CMake arguments, e.g. -DCMAKE_PREFIX_PATH=/opt/libtorch for LibTorch 2.x
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libtorch-dev libopenblas0-pthread          # LibTorch 1.13 (CPU) + a fast BLAS for it
  libgloo-dev                                # headers of the Gloo inside LibTorch's c10d (multi-process)
  libgtest-dev libcli11-dev nlohmann-json3-dev libyaml-cpp-dev
  zlib1g-dev libpng-dev libturbojpeg0-dev libjpeg-dev
  dataset-fashion-mnist                      # the embedded default data set
  gnuplot-nox                                # figures of `analyze` / `compare` (pngcairo, svg)
  python3 python3-torch python3-torchvision  # independent reference for parity tests/benchmarks
  python3-scipy                              # significance tests of the study tables (scripts/results_table.py)
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Debian's reference BLAS is ~15x slower than OpenBLAS; make sure LibTorch gets OpenBLAS.
blas=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3
if [ -e "$blas" ] && command -v update-alternatives >/dev/null; then
  cur=$(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 || true)
  if [ "$cur" != "$(readlink -f $blas)" ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO update-alternatives --set libblas.so.3-x86_64-linux-gnu "$blas" || true
  fi
fi

BUILD_DIR=${BUILD_DIR:-build}
BUILD_TYPE=${BUILD_TYPE:-Release}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE="$BUILD_TYPE" ${CMAKE_ARGS:-} >/dev/null
# Each compiler process with LibTorch headers needs ~1.5 GiB; two jobs fit every machine we target.
cmake --build "$BUILD_DIR" -j "${JOBS:-$(nproc)}"
echo "setup: built $BUILD_DIR/hybrid-distill"
