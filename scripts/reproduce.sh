#!/usr/bin/env bash
# The paper's ablations (Tables 3, 5, 7, 8, 12) at small scale on Fashion-MNIST, several seeds
# each, then k-NN, linear-probe and fine-tuning accuracy of every student, attention diagnostics
# of teachers and hybrid students, and the tables of docs/RESULTS.md (mean ± std over seeds).
#
# Resumable: every run is a cached stage (see scripts/stage.sh); run the script again and it
# continues where it stopped, skipping finished runs. Rows run in the order below, all seeds of a
# row before the next row, so a partial run still gives complete rows.
#
#   bash scripts/reproduce.sh [--out DIR] [--seeds N] [--steps N] [--ft-steps N] [--threads N]
#                             [--rows a,b,...] [--update-docs]
#     --out DIR       output root (default runs/reproduce)
#     --seeds N       seeds per row (default 3)
#     --steps N       distillation steps per run, batch 128 (default 234, half an epoch)
#     --ft-steps N    fine-tuning steps per student, batch 128 (default 234; 0: no fine-tuning)
#     --rows LIST     only these rows (names below)
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

# Teachers: the embedded default's (scripts/pipeline.sh), trained once.
MAE_OPTS=("${QUICK_MAE_OPTS[@]}")
SUP_OPTS=("${QUICK_SUP_OPTS[@]}")
train_teachers
HYB=$ROOT/configs/fmnist_hybrid.yaml SGL=$ROOT/configs/fmnist_single.yaml
T_MIM=teachers.mim.checkpoint T_SUP=teachers.sup.checkpoint REL=teachers.mim.targets.0

# name|table|label|recipe|overrides (space-separated KEY=VALUE, values in YAML/JSON without
# spaces; @MAE / @SUP are the teachers).
# fmnist_hybrid.yaml: MIM relations at 0-based blocks 3,4 (L-2, L-1 of 6) + supervised
# last-layer features, progressive 70%^3 masking (16 -> 11 -> 7 -> 4 patches) driven by the MIM
# teacher. fmnist_single.yaml: the supervised teacher's features alone, same masking.
ROWS=(
  "hybrid|3|Tc + T'm (hybrid)|$HYB|$T_MIM=@MAE $T_SUP=@SUP"
  "tc|3|Tc (supervised features only)|$SGL|$T_SUP=@SUP"
  "tm|3|Tm (MAE features only)|$SGL|$T_SUP=@MAE"
  "mask_none|8|no masking (100%)|$HYB|$T_MIM=@MAE $T_SUP=@SUP masking={\"strategy\":\"none\"}"
  "mask_random|8|random (25%, 4 of 16)|$HYB|$T_MIM=@MAE $T_SUP=@SUP masking={\"strategy\":\"random\",\"drop_ratio\":0.75}"
  "kind_block|5|T'm = block outputs|$HYB|$T_MIM=@MAE $T_SUP=@SUP $REL.kind=block"
  "kind_msa|5|T'm = attention (MSA) outputs|$HYB|$T_MIM=@MAE $T_SUP=@SUP $REL.kind=msa"
  "naive|5|both teachers' features at the last layer|$HYB|$T_MIM=@MAE $T_SUP=@SUP $REL.kind=features $REL.layers=[]"
  "layers_last|7|T'm at block 4 (L-1) only|$HYB|$T_MIM=@MAE $T_SUP=@SUP $REL.layers=[4]"
  "layers_front|7|T'm at blocks 0,1|$HYB|$T_MIM=@MAE $T_SUP=@SUP $REL.layers=[0,1]"
  "layers_all|7|T'm at blocks 0-4|$HYB|$T_MIM=@MAE $T_SUP=@SUP $REL.layers=[0,1,2,3,4]"
  "tc_tc|3|Tc + T'c (both from the supervised teacher)|$HYB|$T_MIM=@SUP $T_SUP=@SUP"
  "tm_tm|3|Tm + T'm (both from the MAE teacher)|$HYB|$T_MIM=@MAE $T_SUP=@MAE"
  "alpha_0.03|12|alpha = 0.03 (relation loss ≈ feature loss at step 0; not a paper row)|$HYB|$T_MIM=@MAE $T_SUP=@SUP $REL.weight=0.03"
  "alpha_0.1|12|alpha = 0.1|$HYB|$T_MIM=@MAE $T_SUP=@SUP $REL.weight=0.1"
  "alpha_0.3|12|alpha = 0.3|$HYB|$T_MIM=@MAE $T_SUP=@SUP $REL.weight=0.3"
  "alpha_0.7|12|alpha = 0.7|$HYB|$T_MIM=@MAE $T_SUP=@SUP $REL.weight=0.7"
)

EVAL=(--train-limit 10000 --pool mean --feature-cache "$OUT/features" "${COMMON[@]}")
for row in "${ROWS[@]}"; do
  IFS='|' read -r name table label recipe overrides <<<"$row"
  if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then continue; fi
  sets=()
  set -f  # values like [4] are not file patterns
  for kv in $overrides; do
    kv=${kv//@MAE/$MAE}
    kv=${kv//@SUP/$SUP}
    sets+=(--set "$kv")
  done
  set +f
  for ((seed = 0; seed < SEEDS; seed++)); do
    run=$name/seed$seed
    stage "$run/distill" 1 "$BIN" distill -r "$recipe" "${sets[@]}" --set "train.seed=$seed" --set "train.epochs=1" \
      --set "train.max_steps=$STEPS" --set "train.checkpoint_every=100" "${COMMON[@]}"
    student=$STAGE_DIR/student.safetensors
    stage "$run/knn" 0 "$BIN" knn -c "$student" "${EVAL[@]}"
    stage "$run/probe" 0 "$BIN" probe -c "$student" "${EVAL[@]}"
    if ((FT_STEPS)); then
      stage "$run/finetune" 1 "$BIN" finetune -c "$student" -e 1 --max-steps "$FT_STEPS" -b 128 --lr 1e-3 \
        --layer-decay 0.75 --warmup-epochs 0.05 --eval-limit 5000 -s "$seed" --checkpoint-every 100 "${COMMON[@]}"
    fi
    if ((seed == 0)) && [[ $name == hybrid || $name == tc ]]; then
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
for r in tc hybrid; do
  if [ -d "$OUT/$r/seed0/analyze" ]; then DIAG+=("$OUT/$r/seed0/analyze"); fi
done
[ ${#DIAG[@]} -eq 4 ] && LABELS+=",single-teacher student (Tc),hybrid student"
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
