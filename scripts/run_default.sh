#!/usr/bin/env bash
# The main job on the embedded default (Fashion-MNIST from Debian's dataset-fashion-mnist): sets
# up (packages + build), then runs the whole pipeline (scripts/pipeline.sh): a MIM teacher and a
# supervised teacher from scratch, a hybrid student and a single-teacher student, k-NN and
# linear-probe evaluation, and a table of the results. Arguments go to scripts/pipeline.sh
# (--long: the longer, better-scoring schedule).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/pipeline.sh "$@"
