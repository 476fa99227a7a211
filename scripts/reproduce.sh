#!/usr/bin/env bash
# The small-scale study: the paper's ablations (Tables 3, 5, 7, 8, 12(a), 13) and a Table 1-like
# comparison, several seeds each, on Fashion-MNIST with the shipped 12-block teachers
# (teachers/mae.safetensors, teachers/sup.safetensors; see teachers/README.md). Every run is
# evaluated on the dense task (`dense`: a linear probe on frozen patch tokens of 2x2 mosaics,
# mIoU), by k-NN and a linear probe, and (the Table 1 rows) by fine-tuning. Each finished run
# becomes a record, docs/results/<row>/seed<K>.json, and scripts/results_table.py builds the
# tables and verdicts of docs/RESULTS.md from the records alone.
#
# Every row is a paper recipe, configs/paper/<row>.yaml, run unchanged except for ONE uniform
# set of overrides, the same for every row (no per-row edits):
#   student.arch=vit_mini12_patch4_28        12 blocks as ViT-B, so the recipe's layer indices
#                                            (T'm at 9,10; masking at 0,4,8; direct at 11) hold;
#                                            a 7x7 grid of 4-px patches (49 patches + CLS)
#   teachers.NAME.arch=vit_mini12_patch4_28  and teachers.NAME.checkpoint=the shipped teacher:
#                                            NAME mae -> teachers/mae.safetensors; any other
#                                            (deit, clip, dino) -> teachers/sup.safetensors
#   data.dataset=fashion-mnist data.scale=[0.6,1.0] data.workers=2 data.seed=SEED
#   optim.lr=1.5e-3 optim.base_batch=256 optim.min_lr=1e-5 optim.warmup_epochs=0.2
#   train.batch=128 train.max_steps=STEPS×(recipe epochs/100) train.epochs=(enough for them)
#   train.seed=SEED train.log_every=20 train.checkpoint_every=100
# Targets, layers, α, norms, decoders, masking and the loss are the recipe's own. Seed K uses
# data seed K for every row, so the rows of one seed see the same augmented views: each teacher
# target is computed once per view and shared through the teacher-target cache
# (distill --teacher-cache OUT/teacher_cache), and rows are compared on the same data.
#
# Resumable and cumulative: a run whose record (docs/results) exists for the same setting is
# skipped, on any machine; every other run is a cached stage (scripts/stage.sh, keyed on the
# command, the binary and the input files), so an interrupted study continues where it stopped.
# Rows run in the order of `scripts/results_table.py --rows`, all seeds of a row before the next
# row, so a partial study still gives complete rows; the fine-tuning of the Table 1 rows, the
# costliest part, comes after every row has its other numbers.
#
#   bash scripts/reproduce.sh [--out DIR] [--seeds N] [--steps N] [--ft-steps N] [--threads N]
#                             [--rows a,b,...] [--no-cache] [--records DIR] [--retrain-teachers]
#                             [--update-docs]
#     --out DIR          output root (default runs/reproduce)
#     --seeds N          seeds per row (default 3)
#     --steps N          distillation steps of a 100-epoch recipe, batch 128 (default 300)
#     --ft-steps N       fine-tuning steps of the Table 1 rows, batch 128 (default 468, one epoch; 0: none)
#     --rows LIST        only these rows
#     --no-cache         no teacher-target cache (every run computes its teachers' targets)
#     --records DIR      where run records go (default docs/results for the default setting,
#                        OUT/records for any other --steps / --ft-steps)
#     --retrain-teachers train the two teachers from scratch first (scripts/train_teachers.sh)
#     --update-docs      rewrite the generated part of docs/RESULTS.md from the records, and its
#                        figures (docs/figures/study_*.png)
# Environment: HD_BIN (default: build/hybrid-distill).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${HD_BIN:-$ROOT/build/hybrid-distill}
OUT=runs/reproduce SEEDS=3 STEPS=300 FT_STEPS=468 THREADS=0 ONLY="" UPDATE_DOCS=0 CACHE=1 RECORDS="" RETRAIN=0
while (($#)); do
  case "$1" in
    --out) OUT=$2; shift ;;
    --seeds) SEEDS=$2; shift ;;
    --steps) STEPS=$2; shift ;;
    --ft-steps) FT_STEPS=$2; shift ;;
    --threads) THREADS=$2; shift ;;
    --rows) ONLY=$2; shift ;;
    --no-cache) CACHE=0 ;;
    --records) RECORDS=$2; shift ;;
    --retrain-teachers) RETRAIN=1 ;;
    --update-docs) UPDATE_DOCS=1 ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
    *) echo "reproduce: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -x "$BIN" ] || { echo "reproduce: $BIN not found; run scripts/setup.sh first" >&2; exit 1; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [ -z "$RECORDS" ]; then
  if ((STEPS == 300 && FT_STEPS == 468)); then RECORDS=$ROOT/docs/results; else RECORDS=$OUT/records; fi
fi
START=$SECONDS
COMMON=(-t "$THREADS")
# shellcheck source=scripts/stage.sh
source "$ROOT/scripts/stage.sh"
PY=/usr/bin/python3

SMALL=vit_mini12_patch4_28
if ((RETRAIN)); then bash "$ROOT/scripts/train_teachers.sh" --threads "$THREADS"; fi
MAE=$ROOT/teachers/mae.safetensors SUP=$ROOT/teachers/sup.safetensors
for f in "$MAE" "$SUP"; do
  [ -f "$f" ] || { echo "reproduce: $f not found (train it with scripts/train_teachers.sh)" >&2; exit 1; }
done
SETTING=(--setting "arch=$SMALL" --setting "steps=$STEPS" --setting "ft_steps=$FT_STEPS" --setting batch=128
         --setting "teachers=$(sha256sum "$MAE" | cut -c1-12)/$(sha256sum "$SUP" | cut -c1-12)")
CACHE_OPTS=()
# About 12 MB per batch of 128 for the hybrid rows (bf16 taps); the rows that share targets need
# some 50 GB in all (results_table.py's UNCACHED rows, whose targets serve one run, go without).
((CACHE)) && CACHE_OPTS=(--teacher-cache "$OUT/teacher_cache" --teacher-cache-gb 60)

# The uniform small-scale rule (see the header): the same overrides for every recipe.
small_scale() {  # RECIPE SEED -> sets SETS
  local recipe=$1 seed=$2 epochs steps t
  epochs=$(sed -n 's/^train:.*[{ ]epochs: \([0-9]*\).*/\1/p' "$recipe")
  steps=$((STEPS * ${epochs:-100} / 100))
  SETS=(--set "student.arch=$SMALL"
        --set data.dataset=fashion-mnist --set "data.scale=[0.6,1.0]" --set data.workers=2 --set "data.seed=$seed"
        --set optim.lr=1.5e-3 --set optim.base_batch=256 --set optim.min_lr=1e-5 --set optim.warmup_epochs=0.2
        --set train.batch=128 --set "train.max_steps=$steps" --set "train.epochs=$((steps / 468 + 1))"
        --set "train.seed=$seed" --set train.log_every=20 --set train.checkpoint_every=100)
  for t in $(sed -n 's/^  - name: \([A-Za-z0-9_]*\)$/\1/p' "$recipe"); do
    SETS+=(--set "teachers.$t.arch=$SMALL")
    if [ "$t" = mae ]; then SETS+=(--set "teachers.$t.checkpoint=$MAE"); else SETS+=(--set "teachers.$t.checkpoint=$SUP"); fi
  done
}

EVAL=(--train-limit 10000 --pool mean --feature-cache "$OUT/features" "${COMMON[@]}")
ANALYZE=(--data fashion-mnist --split test -n 512 --batch 64 --layers none "${COMMON[@]}")
# Teachers first: their own numbers (once per setting: a committed record is kept) and their
# diagnostics, the reference of every figure (always: the figures need them here).
for t in mae:$MAE sup:$SUP; do
  name=${t%%:*} ckpt=${t#*:}
  stage "teacher_$name/analyze" 0 "$BIN" analyze -c "$ckpt" "${ANALYZE[@]}"
  if $PY "$ROOT/scripts/study_record.py" "$RECORDS/teachers/$name.json" --check "${SETTING[@]}" \
       --need dense_miou --need knn --need probe; then
    echo "== teacher_$name: recorded in $RECORDS/teachers/$name.json, skipped"
    continue
  fi
  stage "teacher_$name/knn" 0 "$BIN" knn -c "$ckpt" "${EVAL[@]}"
  stage "teacher_$name/probe" 0 "$BIN" probe -c "$ckpt" "${EVAL[@]}"
  stage "teacher_$name/dense" 0 "$BIN" dense -c "$ckpt" "${COMMON[@]}"
  $PY "$ROOT/scripts/study_record.py" "$RECORDS/teachers/$name.json" --row "teacher_$name" --seed 0 "${SETTING[@]}" \
    --knn "$OUT/teacher_$name/knn" --probe "$OUT/teacher_$name/probe" --dense "$OUT/teacher_$name/dense" \
    --analyze "$OUT/teacher_$name/analyze"
done

# Pass 1: every row and seed: distillation, dense task, k-NN, probe (and the seed-0 diagnostics
# of the Table 1 rows). Pass 2: fine-tuning of the Table 1 rows, the costliest part, last.
# A run whose record already exists for this setting (from any machine) is skipped.
ROWS=$($PY "$ROOT/scripts/results_table.py" --rows)
distill_run() {  # NAME SEED CACHED -> STAGE_DIR of its distillation, SETS
  small_scale "$ROOT/configs/paper/$1.yaml" "$2"
  local cache=()
  [ -n "$3" ] && cache=("${CACHE_OPTS[@]}")
  stage "$1/seed$2/distill" 1 "$BIN" distill -r "$ROOT/configs/paper/$1.yaml" "${SETS[@]}" "${cache[@]}" "${COMMON[@]}"
}
for pass in 1 2; do
  while IFS='|' read -r name _label ft cached; do
    if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then continue; fi
    [ -f "$ROOT/configs/paper/$name.yaml" ] || { echo "reproduce: no recipe configs/paper/$name.yaml" >&2; exit 1; }
    ((pass == 1)) || { ((FT_STEPS)) && [ -n "$ft" ]; } || continue
    for ((seed = 0; seed < SEEDS; seed++)); do
      run=$name/seed$seed rec=$RECORDS/$name/seed$seed.json
      need=(--need dense_miou --need knn --need probe)
      ((pass == 2)) && need=(--need finetune)
      if $PY "$ROOT/scripts/study_record.py" "$rec" --check "${SETTING[@]}" "${need[@]}"; then
        echo "== $run: recorded in $rec, skipped"
        continue
      fi
      distill_run "$name" "$seed" "$cached"
      student=$STAGE_DIR/student.safetensors
      if ((pass == 2)); then
        # LP-FT from a probe head, without crops, label smoothing or stochastic depth: at one epoch
        # these regularisers cost more than they give (see docs/RESULTS.md, fine-tuning).
        stage "$run/finetune" 1 "$BIN" finetune -c "$student" --pool mean --head-init probe -e 1 --max-steps "$FT_STEPS" -b 128 --lr 1e-3 \
          --drop-path 0 --scale-min 1.0 --label-smoothing 0 --layer-decay 0.75 --warmup-epochs 0.1 --eval-limit 5000 -s "$seed" --checkpoint-every 100 "${COMMON[@]}"
        $PY "$ROOT/scripts/study_record.py" "$rec" --row "$name" --seed "$seed" "${SETTING[@]}" --update \
          --finetune "$OUT/$run/finetune"
        continue
      fi
      stage "$run/dense" 0 "$BIN" dense -c "$student" "${COMMON[@]}"
      stage "$run/knn" 0 "$BIN" knn -c "$student" "${EVAL[@]}"
      stage "$run/probe" 0 "$BIN" probe -c "$student" "${EVAL[@]}"
      extra=()
      if ((seed == 0)) && [ -n "$ft" ]; then
        stage "$run/analyze" 0 "$BIN" analyze -c "$student" "${ANALYZE[@]}"
        extra+=(--analyze "$OUT/$run/analyze")
      fi
      $PY "$ROOT/scripts/study_record.py" "$rec" --row "$name" --seed "$seed" --recipe "$ROOT/configs/paper/$name.yaml" \
        "${SETTING[@]}" --update --distill "$OUT/$run/distill" --knn "$OUT/$run/knn" --probe "$OUT/$run/probe" \
        --dense "$OUT/$run/dense" "${extra[@]}"
    done
  done <<<"$ROWS"
done

# Teachers and the seed-0 students of the Table 1 rows, overlaid.
DIAG=("$OUT/teacher_mae/analyze" "$OUT/teacher_sup/analyze")
LABELS="MAE teacher,supervised teacher"
for r in "table3_tc:student Tc only" "table3_tm:student Tm only" "table3_tc_tm_rel:hybrid student" \
         "table8_progressive_70:hybrid student (masked)"; do
  d=$OUT/${r%%:*}/seed0/analyze
  if [ -d "$d" ]; then DIAG+=("$d"); LABELS+=",${r#*:}"; fi
done
stage compare 0 "$BIN" compare "${DIAG[@]}" --labels "$LABELS"
COMPARE=$STAGE_DIR

echo "== total $((SECONDS - START)) s; records under $RECORDS"
if ((UPDATE_DOCS)); then
  $PY "$ROOT/scripts/results_table.py" --results "$RECORDS" --seeds "$SEEDS" --doc "$ROOT/docs/RESULTS.md"
  mkdir -p "$ROOT/docs/figures"
  for f in head_distance nmi; do cp "$COMPARE/$f.png" "$ROOT/docs/figures/study_$f.png"; done
  echo "updated docs/figures/study_{head_distance,nmi}.png"
else
  $PY "$ROOT/scripts/results_table.py" --results "$RECORDS" --seeds "$SEEDS"
fi
