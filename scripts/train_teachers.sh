#!/usr/bin/env bash
# Trains the small-scale study's two teachers from scratch on Fashion-MNIST (12-block
# vit_mini12_patch4_28: a 7x7 grid of 4-px patches) and installs them as teachers/mae.safetensors
# and teachers/sup.safetensors, the files scripts/reproduce.sh and scripts/pipeline.sh use:
#   MIM teacher         pretrain-mae, MAE_EPOCHS epochs (75% masking, normalised-pixel loss)
#   supervised teacher  train, SUP_EPOCHS epochs (DeiT-style: label smoothing, crop + flip)
# Training runs one epoch at a time (--stop-after, then --resume), and after every epoch the
# encoder's k-NN top-1 (k = 20, 10,000 training images, the 10,000 test images) is appended to
# teachers/curve_{mae,sup}.tsv, so the curve shows whether the teacher has plateaued.
# Resumable: run it again and it continues where it stopped.
#
#   bash scripts/train_teachers.sh [--out DIR] [--threads N] [--mae-epochs N] [--sup-epochs N]
#                                  [--only mae|sup] [--no-install]
#     --out DIR       run folders (default runs/teachers)
#     --no-install    leave teachers/ as it is (train and measure only)
# Environment: HD_BIN (default: build/hybrid-distill).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${HD_BIN:-$ROOT/build/hybrid-distill}
OUT=runs/teachers THREADS=0 MAE_EPOCHS=8 SUP_EPOCHS=5 ONLY="" INSTALL=1
while (($#)); do
  case "$1" in
    --out) OUT=$2; shift ;;
    --threads) THREADS=$2; shift ;;
    --mae-epochs) MAE_EPOCHS=$2; shift ;;
    --sup-epochs) SUP_EPOCHS=$2; shift ;;
    --only) ONLY=$2; shift ;;
    --no-install) INSTALL=0 ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
    *) echo "train_teachers: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -x "$BIN" ] || { echo "train_teachers: $BIN not found; run scripts/setup.sh first" >&2; exit 1; }
ARCH=vit_mini12_patch4_28
BATCH=128
STEPS_PER_EPOCH=$((60000 / BATCH))
mkdir -p "$OUT" "$ROOT/teachers"

# The exact commands (also written to teachers/README.md by hand).
MAE_CMD=(pretrain-mae -a "$ARCH" -b "$BATCH" -e "$MAE_EPOCHS" --lr 1.5e-3 --warmup-epochs 1 -s 0)
SUP_CMD=(train -a "$ARCH" -b "$BATCH" -e "$SUP_EPOCHS" --lr 1e-3 --warmup-epochs 1 --scale-min 0.5 --drop-path 0.05
         --eval-split test --eval-limit 5000 -s 0)

# encoder_of RUN PREFIX DEST: the model weights of RUN's latest checkpoint (tensors under PREFIX,
# prefix stripped; the MAE decoder and mask token left out) as a plain safetensors file, for k-NN
# of an unfinished run.
encoder_of() {
  /usr/bin/python3 "$ROOT/scripts/safetensors_tool.py" extract "$1/checkpoint.safetensors" "$2" "$3" \
    --drop decoder --drop mask_token
}

# teacher NAME PREFIX CMD...: trains epoch by epoch, measuring k-NN after each.
teacher() {
  local name=$1 prefix=$2
  shift 2
  local run=$OUT/$name curve=$ROOT/teachers/curve_$name.tsv epochs
  epochs=$( [ "$name" = mae ] && echo "$MAE_EPOCHS" || echo "$SUP_EPOCHS")
  mkdir -p "$run"
  [ -f "$curve" ] || printf 'epoch\tstep\tknn_top1\tseconds\n' > "$curve"
  for ((e = 1; e <= epochs; e++)); do
    if grep -q "^$e	" "$curve"; then continue; fi
    local resume=() t0=$SECONDS
    [ -f "$run/checkpoint.safetensors" ] && resume=(--resume)
    echo "== teacher $name: epoch $e of $epochs"
    local stop=()
    ((e < epochs)) && stop=(--stop-after $((e * STEPS_PER_EPOCH)))
    "$BIN" "$@" -t "$THREADS" --checkpoint-every "$STEPS_PER_EPOCH" --log-every 100 \
      "${stop[@]}" -o "$run" "${resume[@]}" 2>&1 | tail -n 3
    local model=$run/model.safetensors
    if ((e < epochs)) || [ ! -f "$model" ]; then
      encoder_of "$run" "$prefix" "$run/epoch_model.safetensors"
      model=$run/epoch_model.safetensors
    fi
    local res=$run/knn_epoch$e
    "$BIN" knn -c "$model" -a "$ARCH" --train-limit 10000 --pool mean -t "$THREADS" -q -o "$res" >/dev/null
    local top1
    top1=$(/usr/bin/python3 -c "import json,sys; print(round(100*json.load(open(sys.argv[1]))['top1'],2))" "$res/result.json")
    printf '%d\t%d\t%s\t%d\n' "$e" $((e * STEPS_PER_EPOCH)) "$top1" $((SECONDS - t0)) >> "$curve"
    echo "== teacher $name: epoch $e k-NN $top1%"
  done
  if ((INSTALL)); then
    [ -f "$run/model.safetensors" ] || { echo "train_teachers: $run has no model.safetensors" >&2; exit 1; }
    # The model file with its provenance added to the safetensors metadata: the command and the
    # final k-NN top-1 (weights and every other entry unchanged).
    /usr/bin/python3 "$ROOT/scripts/safetensors_tool.py" annotate "$run/model.safetensors" \
      "$ROOT/teachers/$name.safetensors.tmp" "hybrid_distill.command=hybrid-distill $*" \
      "hybrid_distill.knn_top1=$(tail -n 1 "$curve" | cut -f3)"
    mv "$ROOT/teachers/$name.safetensors.tmp" "$ROOT/teachers/$name.safetensors"
    echo "== installed teachers/$name.safetensors"
  fi
}

[ -z "$ONLY" ] || [ "$ONLY" = mae ] && teacher mae model.encoder. "${MAE_CMD[@]}"
[ -z "$ONLY" ] || [ "$ONLY" = sup ] && teacher sup model. "${SUP_CMD[@]}"
echo "== teachers done"
