#!/usr/bin/env bash
# The main job on the embedded default (Fashion-MNIST from Debian's dataset-fashion-mnist):
# sets up (packages + build), then checks the data pipeline against the default student and
# benchmarks the default and a ViT-S/16 model against the Python PyTorch reference.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BIN=build/hybrid-distill
$BIN presets
$BIN data --data fashion-mnist --split train --arch vit_tiny_patch4_28 --batch 256 --batches 30
$BIN bench --arch vit_tiny_patch4_28,vit_small_patch16_224 --batch 64
