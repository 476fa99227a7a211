#!/usr/bin/env bash
# The whole Hybrid Distillation story on Fashion-MNIST, on one machine:
#   1. the two teachers: the shipped ones (teachers/mae.safetensors, an MAE-pretrained ViT;
#      teachers/sup.safetensors, a supervised ViT; 12 blocks on a 7x7 grid of 4-px patches), or,
#      with --retrain-teachers, the same trained here from scratch (scripts/train_teachers.sh),
#   2. a hybrid student (MIM relations + supervised features, progressive masking) and, for
#      comparison, a student distilled from the supervised teacher alone (same student, schedule
#      and masking), sharing the teachers' targets through a teacher-target cache,
#   3. the dense task (a linear probe on frozen patch tokens of 2x2 mosaics: mIoU and per-token
#      accuracy), k-NN and linear-probe top-1 of all four, on the test split (plus fine-tuning
#      with --long),
#   4. attention diagnostics (head distance, NMI, attention maps) of all four, overlaid, with the
#      uniform-attention reference,
# then a table of the results and where every output lies.
#
# Every stage runs in a folder named after a hash of its exact command and inputs, so a second run
# reuses what is already done and an interrupted stage resumes from its checkpoint.
#
#   bash scripts/pipeline.sh [--long] [--retrain-teachers] [--out DIR] [--threads N]
#     --long              the longer, better-scoring schedule (hours on 2 cores; adds fine-tuning)
#     --retrain-teachers  train the teachers here instead of using the shipped ones (about 1.5 h
#                         on 2 cores)
#     --out DIR           output root (default: runs/default, or runs/long with --long)
#     --threads N         LibTorch threads (default: all cores)
# Environment: HD_BIN (default: build/hybrid-distill).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${HD_BIN:-$ROOT/build/hybrid-distill}
LONG=0 OUT="" THREADS=0 RETRAIN=0
while (($#)); do
  case "$1" in
    --long) LONG=1 ;;
    --retrain-teachers) RETRAIN=1 ;;
    --out) OUT=$2; shift ;;
    --threads) THREADS=$2; shift ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
    *) echo "pipeline: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -x "$BIN" ] || { echo "pipeline: $BIN not found; run scripts/setup.sh first" >&2; exit 1; }
if ((LONG)); then OUT=${OUT:-runs/long}; else OUT=${OUT:-runs/default}; fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# shellcheck source=scripts/stage.sh
source "$ROOT/scripts/stage.sh"
if ((LONG)); then
  DISTILL_STEPS=4680 FT_EPOCHS=5 TRAIN_LIMIT=0
else
  # 7-11 minutes on 2 cores with native bf16 in all (README).
  DISTILL_STEPS=300 FT_EPOCHS=0 TRAIN_LIMIT=10000
fi
COMMON=(-t "$THREADS")
START=$SECONDS

if ((RETRAIN)); then
  bash "$ROOT/scripts/train_teachers.sh" --out "$OUT/teachers" --threads "$THREADS" --no-install
  MAE=$OUT/teachers/mae/model.safetensors SUP=$OUT/teachers/sup/model.safetensors
else
  MAE=$ROOT/teachers/mae.safetensors SUP=$ROOT/teachers/sup.safetensors
fi
for f in "$MAE" "$SUP"; do [ -f "$f" ] || { echo "pipeline: teacher $f not found" >&2; exit 1; }; done
STEPS=(--set "train.max_steps=$DISTILL_STEPS" --set "train.epochs=$((DISTILL_STEPS / 468 + 1))")
CACHE=(--teacher-cache "$OUT/teacher_cache")
stage student_hybrid 1 "$BIN" distill -r "$ROOT/configs/fmnist_hybrid.yaml" --set "teachers.mim.checkpoint=$MAE" \
  --set "teachers.sup.checkpoint=$SUP" "${STEPS[@]}" "${CACHE[@]}" "${COMMON[@]}"
HYBRID=$STAGE_DIR/student.safetensors
stage student_single 1 "$BIN" distill -r "$ROOT/configs/fmnist_single.yaml" --set "teachers.sup.checkpoint=$SUP" \
  "${STEPS[@]}" "${CACHE[@]}" "${COMMON[@]}"
SINGLE=$STAGE_DIR/student.safetensors

EVAL=(--train-limit "$TRAIN_LIMIT" --pool mean --feature-cache "$OUT/features" "${COMMON[@]}")
MODELS=(teacher_mae:$MAE teacher_sup:$SUP student_single:$SINGLE student_hybrid:$HYBRID)
for m in "${MODELS[@]}"; do
  name=${m%%:*} ckpt=${m#*:}
  stage "dense_$name" 0 "$BIN" dense -c "$ckpt" "${COMMON[@]}"
  stage "knn_$name" 0 "$BIN" knn -c "$ckpt" "${EVAL[@]}"
  stage "probe_$name" 0 "$BIN" probe -c "$ckpt" "${EVAL[@]}"
  if ((FT_EPOCHS)) && [[ $name == student_* ]]; then
    stage "finetune_$name" 1 "$BIN" finetune -c "$ckpt" --pool mean --head-init probe -e "$FT_EPOCHS" -b 128 --lr 1e-3 --layer-decay 0.75 \
      --checkpoint-every 200 "${COMMON[@]}"
  fi
done

# Why the students differ: attention diagnostics of all four, overlaid in one report.
DIAG=()
for m in "${MODELS[@]}"; do
  name=${m%%:*} ckpt=${m#*:}
  stage "analyze_$name" 0 "$BIN" analyze -c "$ckpt" --data fashion-mnist --split test -n 512 --batch 64 "${COMMON[@]}"
  DIAG+=("$STAGE_DIR")
done
stage compare 0 "$BIN" compare "${DIAG[@]}" --labels "MAE teacher,supervised teacher,single-teacher student,hybrid student"

echo "== total $((SECONDS - START)) s"
/usr/bin/python3 - "$OUT" "$MAE" "$SUP" "$SINGLE" "$HYBRID" <<'PYEOF'
import json, os, sys
out, *models = sys.argv[1:]
def metric(stage, key="top1"):
    try:
        with open(os.path.join(out, stage, "result.json")) as f:
            return json.load(f)[key] * 100
    except (OSError, KeyError, ValueError):
        return None
rows = [("MIM teacher (MAE)", "teacher_mae"), ("supervised teacher", "teacher_sup"),
        ("single-teacher student", "student_single"), ("hybrid student", "student_hybrid")]
cols = [("dense mIoU", "dense_", "miou"), ("dense acc.", "dense_", "token_acc"), ("k-NN", "knn_", "top1"),
        ("linear probe", "probe_", "top1"), ("fine-tune", "finetune_", "top1")]
fmt = lambda v: "     -" if v is None else f"{v:6.2f}"
summary = {}
print(f"\nFashion-MNIST test split (%), {os.path.basename(out)}; dense: 2x2 mosaics, linear probe on patch tokens:")
print(f"{'model':24s}" + "".join(f"{c:>14s}" for c, _, _ in cols))
for label, stage in rows:
    vals = [metric(prefix + stage, key) for _, prefix, key in cols]
    summary[stage] = {c: v for (c, _, _), v in zip(cols, vals)}
    print(f"{label:24s}" + "".join(f"{fmt(v):>14s}" for v in vals))
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
print(f"\noutputs under {out}:")
for (label, _), model in zip(rows, models):
    print(f"  {label:24s} {model}")
print(f"  evaluations              {out}/{{dense,knn,probe,finetune}}_*/result.json")
print(f"  attention diagnostics    {out}/analyze_*/report.html, all four overlaid: {out}/compare/report.html")
print(f"  summary                  {out}/summary.json")
PYEOF
