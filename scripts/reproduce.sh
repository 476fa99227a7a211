#!/usr/bin/env bash
# The paper's ablations (Tables 3, 5, 7, 8, 12(a)) at small scale on Fashion-MNIST, several seeds
# each, then k-NN, linear-probe and fine-tuning accuracy of every student, attention diagnostics
# of teachers and hybrid students, and the tables of docs/RESULTS.md (mean ± std over seeds).
#
# Every row is a paper recipe, configs/paper/<row>.yaml, run unchanged except for ONE uniform
# set of overrides, the same for every row (no per-row edits):
#   student.arch=vit_mini12_patch7_28        12 blocks as ViT-B, so the recipe's layer indices
#                                            (T'm at 9,10; masking at 0,4,8; direct at 11) hold
#   teachers.NAME.arch=vit_mini12_patch7_28  and teachers.NAME.checkpoint=the small teacher:
#                                            NAME mae -> the MAE teacher (pretrain-mae); any other
#                                            (deit, clip, dino) -> the supervised teacher (train)
#   data.dataset=fashion-mnist data.scale=[0.6,1.0] data.workers=2
#   optim.lr=1.5e-3 optim.base_batch=256 optim.min_lr=1e-5 optim.warmup_epochs=0.2
#   train.batch=128 train.max_steps=STEPS×(recipe epochs/100) train.epochs=(enough for them)
#   train.seed=SEED train.log_every=20 train.checkpoint_every=100
# Targets, layers, α, norms, decoders, masking and the loss are the recipe's own. A 4×4 grid of
# 7 px patches has 16 patches: progressive 70%³ keeps 16 -> 11 -> 7 -> 4.
#
# Resumable: every run is a cached stage (see scripts/stage.sh, keyed on the command, the binary
# and the input files); run the script again and it continues where it stopped, skipping
# finished runs. Rows run in the order below, all seeds of a row before the next row, so a
# partial run still gives complete rows.
#
#   bash scripts/reproduce.sh [--out DIR] [--seeds N] [--steps N] [--ft-steps N] [--threads N]
#                             [--rows a,b,...] [--update-docs]
#     --out DIR       output root (default runs/reproduce)
#     --seeds N       seeds per row (default 3)
#     --steps N       distillation steps of a 100-epoch recipe, batch 128 (default 234, half an epoch)
#     --ft-steps N    fine-tuning steps per student, batch 128 (default 234; 0: no fine-tuning)
#     --rows LIST     only these rows (recipe names below)
#     --update-docs   rewrite the generated part of docs/RESULTS.md from the results, and its
#                     figures (docs/figures/reproduce_*.png)
# Environment: HD_BIN (default: build/hybrid-distill).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${HD_BIN:-$ROOT/build/hybrid-distill}
OUT=runs/reproduce SEEDS=3 STEPS=234 FT_STEPS=234 THREADS=0 ONLY="" UPDATE_DOCS=0
while (($#)); do
  case "$1" in
    --out) OUT=$2; shift ;;
    --seeds) SEEDS=$2; shift ;;
    --steps) STEPS=$2; shift ;;
    --ft-steps) FT_STEPS=$2; shift ;;
    --threads) THREADS=$2; shift ;;
    --rows) ONLY=$2; shift ;;
    --update-docs) UPDATE_DOCS=1 ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
    *) echo "reproduce: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -x "$BIN" ] || { echo "reproduce: $BIN not found; run scripts/setup.sh first" >&2; exit 1; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
START=$SECONDS
COMMON=(-t "$THREADS")
# shellcheck source=scripts/stage.sh
source "$ROOT/scripts/stage.sh"

# Teachers: the embedded default's schedule (scripts/pipeline.sh), at the paper's depth.
SMALL=vit_mini12_patch7_28
TEACHER_ARCH=$SMALL
MAE_OPTS=("${QUICK_MAE_OPTS[@]}")
SUP_OPTS=("${QUICK_SUP_OPTS[@]}")
train_teachers

# The uniform small-scale rule (see the header): the same overrides for every recipe.
small_scale() {  # RECIPE SEED -> sets SETS
  local recipe=$1 seed=$2 epochs steps t
  epochs=$(sed -n 's/^train:.*[{ ]epochs: \([0-9]*\).*/\1/p' "$recipe")
  steps=$((STEPS * ${epochs:-100} / 100))
  SETS=(--set "student.arch=$SMALL"
        --set data.dataset=fashion-mnist --set "data.scale=[0.6,1.0]" --set data.workers=2
        --set optim.lr=1.5e-3 --set optim.base_batch=256 --set optim.min_lr=1e-5 --set optim.warmup_epochs=0.2
        --set train.batch=128 --set "train.max_steps=$steps" --set "train.epochs=$((steps / 468 + 1))"
        --set "train.seed=$seed" --set train.log_every=20 --set train.checkpoint_every=100)
  for t in $(sed -n 's/^  - name: \([A-Za-z0-9_]*\)$/\1/p' "$recipe"); do
    SETS+=(--set "teachers.$t.arch=$SMALL")
    if [ "$t" = mae ]; then SETS+=(--set "teachers.$t.checkpoint=$MAE"); else SETS+=(--set "teachers.$t.checkpoint=$SUP"); fi
  done
}

# name|table|label: the recipe configs/paper/<name>.yaml. Rows whose recipe is identical to
# another table's (the no-masking hybrid is Table 3's Tc + T'm, Table 5's R, Table 7's {10,11},
# Table 8's none and Table 12's α = 1; Table 3's Tc is Table 12's α = 0) run once.
ROWS=(
  "table3_tc_tm_rel|3|Tc + T'm (hybrid, no masking)"
  "table3_tc|3|Tc (supervised features only)"
  "table3_tm|3|Tm (MAE features only)"
  "table8_progressive_70|8|progressive 70%³ (25%, 4 of 16)"
  "table8_random|8|random 35% (5 of 16)"
  "table5_block|5|T'm = block outputs"
  "table5_msa|5|T'm = attention (MSA) outputs"
  "table5_naive|5|both teachers' features at the last layer"
  "table7_layers_11|7|{11}"
  "table7_layers_1-2-3|7|{1, 2, 3}"
  "table7_layers_1-11|7|1-11"
  "table3_tc_tc_rel|3|Tc + T'c (both from the supervised teacher)"
  "table3_tm_tm_rel|3|Tm + T'm (both from the MAE teacher)"
  "table12a_alpha_0.1|12|α = 0.1"
  "table12a_alpha_0.3|12|α = 0.3"
  "table12a_alpha_0.7|12|α = 0.7"
  "table8_direct|8|direct 35% (5 of 16)"
  "table8_progressive_50|8|progressive 50%³ (12%, 2 of 16)"
  "table8_progressive_90|8|progressive 90%³ (62%, 10 of 16)"
  "table7_layers_5-6-7|7|{5, 6, 7}"
  "table7_layers_9-10-11|7|{9, 10, 11}"
  "table12a_alpha_0.5|12|α = 0.5"
)

EVAL=(--train-limit 10000 --pool mean --feature-cache "$OUT/features" "${COMMON[@]}")
for row in "${ROWS[@]}"; do
  IFS='|' read -r name table label <<<"$row"
  if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then continue; fi
  recipe=$ROOT/configs/paper/$name.yaml
  [ -f "$recipe" ] || { echo "reproduce: no recipe $recipe" >&2; exit 1; }
  for ((seed = 0; seed < SEEDS; seed++)); do
    run=$name/seed$seed
    small_scale "$recipe" "$seed"
    stage "$run/distill" 1 "$BIN" distill -r "$recipe" "${SETS[@]}" "${COMMON[@]}"
    student=$STAGE_DIR/student.safetensors
    stage "$run/knn" 0 "$BIN" knn -c "$student" "${EVAL[@]}"
    stage "$run/probe" 0 "$BIN" probe -c "$student" "${EVAL[@]}"
    if ((FT_STEPS)); then
      stage "$run/finetune" 1 "$BIN" finetune -c "$student" -e 1 --max-steps "$FT_STEPS" -b 128 --lr 1e-3 \
        --layer-decay 0.75 --warmup-epochs 0.05 --eval-limit 5000 -s "$seed" --checkpoint-every 100 "${COMMON[@]}"
    fi
    if ((seed == 0)) && [[ $name == table3_tc_tm_rel || $name == table3_tc || $name == table8_progressive_70 ]]; then
      stage "$run/analyze" 0 "$BIN" analyze -c "$student" --data fashion-mnist --split test -n 512 --batch 64 "${COMMON[@]}"
    fi
  done
done
# Teachers: their own accuracy and diagnostics, for the side-by-side figures.
for m in teacher_mae:$MAE teacher_sup:$SUP; do
  name=${m%%:*} ckpt=${m#*:}
  stage "$name/knn" 0 "$BIN" knn -c "$ckpt" "${EVAL[@]}"
  stage "$name/probe" 0 "$BIN" probe -c "$ckpt" "${EVAL[@]}"
  stage "$name/analyze" 0 "$BIN" analyze -c "$ckpt" --data fashion-mnist --split test -n 512 --batch 64 "${COMMON[@]}"
done
DIAG=("$OUT/teacher_mae/analyze" "$OUT/teacher_sup/analyze")
LABELS="MAE teacher,supervised teacher"
for r in "table3_tc:single-teacher student (Tc)" "table3_tc_tm_rel:hybrid student" \
         "table8_progressive_70:hybrid student (masked 70%³)"; do
  d=$OUT/${r%%:*}/seed0/analyze
  if [ -d "$d" ]; then DIAG+=("$d"); LABELS+=",${r#*:}"; fi
done
stage compare 0 "$BIN" compare "${DIAG[@]}" --labels "$LABELS"

echo "== total $((SECONDS - START)) s"
ROWS_TEXT=$(printf '%s\n' "${ROWS[@]}")
/usr/bin/python3 "$ROOT/scripts/results_table.py" "$OUT" "$SEEDS" "$STEPS" "$FT_STEPS" "$ROWS_TEXT" \
  $( ((UPDATE_DOCS)) && echo "$ROOT/docs/RESULTS.md")
if ((UPDATE_DOCS)); then
  mkdir -p "$ROOT/docs/figures"
  for f in head_distance nmi; do cp "$OUT/compare/$f.png" "$ROOT/docs/figures/reproduce_$f.png"; done
  echo "updated docs/figures/reproduce_{head_distance,nmi}.png"
fi
