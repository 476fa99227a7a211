#!/usr/bin/env bash
# The whole Hybrid Distillation story on Fashion-MNIST, on one machine, from nothing:
#   1. a MIM teacher (MAE pre-training) and a supervised teacher (DeiT-style training),
#   2. a hybrid student (MIM relations + supervised features) and, for comparison, a student
#      distilled from the supervised teacher alone (same student, schedule and masking),
#   3. k-NN and linear-probe top-1 of all four, on the test split (plus fine-tuning with --long),
#   4. attention diagnostics (head distance, NMI, attention maps) of all four, overlaid,
# then a table of the accuracies and where every output lies.
#
# Every stage runs in a folder named after a hash of its exact command, so a second run reuses
# what is already done (teachers included) and an interrupted stage resumes from its checkpoint.
#
#   bash scripts/pipeline.sh [--long] [--out DIR] [--threads N]
#     --long      the longer, better-scoring schedule (hours on 2 cores; adds fine-tuning)
#     --out DIR   output root (default: runs/default, or runs/long with --long)
#     --threads N LibTorch threads (default: all cores)
# Environment: HD_BIN (default: build/hybrid-distill).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${HD_BIN:-$ROOT/build/hybrid-distill}
LONG=0 OUT="" THREADS=0
while (($#)); do
  case "$1" in
    --long) LONG=1 ;;
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
  MAE_OPTS=(-e 40 --lr 1.5e-3 --warmup-epochs 2)
  SUP_OPTS=(-e 30 --lr 1e-3 --warmup-epochs 2)
  DISTILL_EPOCHS=20 FT_EPOCHS=10 TRAIN_LIMIT=0
else
  # About 15 minutes on 2 cores (scripts/stage.sh: the teachers' short schedules).
  MAE_OPTS=("${QUICK_MAE_OPTS[@]}")
  SUP_OPTS=("${QUICK_SUP_OPTS[@]}")
  DISTILL_EPOCHS=1 FT_EPOCHS=0 TRAIN_LIMIT=10000
fi
COMMON=(-t "$THREADS")
START=$SECONDS

train_teachers
stage student_hybrid 1 "$BIN" distill -r "$ROOT/configs/fmnist_hybrid.yaml" --set "teachers.mim.checkpoint=$MAE" \
  --set "teachers.sup.checkpoint=$SUP" --set "train.epochs=$DISTILL_EPOCHS" "${COMMON[@]}"
HYBRID=$STAGE_DIR/student.safetensors
stage student_single 1 "$BIN" distill -r "$ROOT/configs/fmnist_single.yaml" --set "teachers.sup.checkpoint=$SUP" \
  --set "train.epochs=$DISTILL_EPOCHS" "${COMMON[@]}"
SINGLE=$STAGE_DIR/student.safetensors

EVAL=(--train-limit "$TRAIN_LIMIT" --pool mean --feature-cache "$OUT/features" "${COMMON[@]}")
for m in teacher_mae:$MAE teacher_sup:$SUP student_single:$SINGLE student_hybrid:$HYBRID; do
  name=${m%%:*} ckpt=${m#*:}
  stage "knn_$name" 0 "$BIN" knn -c "$ckpt" "${EVAL[@]}"
  stage "probe_$name" 0 "$BIN" probe -c "$ckpt" "${EVAL[@]}"
  if ((FT_EPOCHS)) && [[ $name == student_* ]]; then
    stage "finetune_$name" 1 "$BIN" finetune -c "$ckpt" -e "$FT_EPOCHS" -b 128 --lr 1e-3 --layer-decay 0.75 \
      --checkpoint-every 200 "${COMMON[@]}"
  fi
done

# Why the students differ: attention diagnostics of all four, overlaid in one report.
DIAG=()
for m in teacher_mae:$MAE teacher_sup:$SUP student_single:$SINGLE student_hybrid:$HYBRID; do
  name=${m%%:*} ckpt=${m#*:}
  stage "analyze_$name" 0 "$BIN" analyze -c "$ckpt" --data fashion-mnist --split test -n 512 --batch 64 "${COMMON[@]}"
  DIAG+=("$STAGE_DIR")
done
stage compare 0 "$BIN" compare "${DIAG[@]}" --labels "MAE teacher,supervised teacher,single-teacher student,hybrid student"

echo "== total $((SECONDS - START)) s"
/usr/bin/python3 - "$OUT" <<'PYEOF'
import json, os, sys
out = sys.argv[1]
def top1(stage):
    p = os.path.join(out, stage, "result.json")
    try:
        with open(p) as f:
            return json.load(f)["top1"] * 100
    except (OSError, KeyError, ValueError):
        return None
rows = [("MIM teacher (MAE)", "teacher_mae"), ("supervised teacher", "teacher_sup"),
        ("single-teacher student", "student_single"), ("hybrid student", "student_hybrid")]
cols = [("k-NN", "knn_"), ("linear probe", "probe_"), ("fine-tune", "finetune_"), ("classifier", "")]
fmt = lambda v: "     -" if v is None else f"{v:6.2f}"
summary = {}
print(f"\nFashion-MNIST test top-1 (%), {os.path.basename(out)}:")
print(f"{'model':24s}" + "".join(f"{c:>14s}" for c, _ in cols))
for label, stage in rows:
    vals = [top1(prefix + stage) if prefix else (top1(stage) if stage == "teacher_sup" else None) for _, prefix in cols]
    summary[stage] = {c: v for (c, _), v in zip(cols, vals)}
    print(f"{label:24s}" + "".join(f"{fmt(v):>14s}" for v in vals))
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
print(f"\noutputs under {out}:")
for label, stage in rows:
    d = os.path.join(out, stage)
    model = next((m for m in ("student.safetensors", "model.safetensors") if os.path.exists(os.path.join(d, m))), "")
    print(f"  {label:24s} {os.path.join(d, model)}  (log.txt, metrics.jsonl, recipe.yaml)")
print(f"  evaluations              {out}/{{knn,probe,finetune}}_*/result.json")
print(f"  attention diagnostics    {out}/analyze_*/report.html, all four overlaid: {out}/compare/report.html")
print(f"  summary                  {out}/summary.json")
PYEOF
