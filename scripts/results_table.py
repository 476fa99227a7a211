#!/usr/bin/env python3
"""Tables of scripts/reproduce.sh's runs: mean ± std over seeds of k-NN, linear-probe and
fine-tuning top-1 per row, grouped as the paper's ablation tables, next to the paper's COCO
AP^box for the same row (ViT-B, DeiT + MAE teachers). Rows are named after their recipe,
configs/paper/<name>.yaml. Writes OUT/results.md and
OUT/results.json; with a RESULTS.md path, replaces the text between its
<!-- results:begin --> and <!-- results:end --> markers.

usage: results_table.py OUT SEEDS STEPS FT_STEPS ROWS_TEXT [RESULTS.md]
"""
import json
import math
import os
import statistics
import sys

# Paper, Tables 3/5/7/8/12(a) (Mask R-CNN on COCO, AP^box), DeiT + MAE teachers, by recipe
# (configs/paper/<name>.yaml, whose header quotes the same number).
PAPER = {
    "table3_tc": 47.5, "table3_tm": 48.9, "table3_tc_tc_rel": 46.8, "table3_tm_tm_rel": 48.9, "table3_tc_tm_rel": 50.0,
    "table5_naive": 47.7, "table5_block": 49.6, "table5_msa": 49.8, "table5_relation": 50.0,
    "table7_layers_1-11": 48.8, "table7_layers_1-2-3": 47.4, "table7_layers_5-6-7": 48.3,
    "table7_layers_9-10-11": 49.8, "table7_layers_10-11": 50.0, "table7_layers_11": 49.2,
    "table8_none": 50.0, "table8_random": 49.2, "table8_direct": 49.6,
    "table8_progressive_50": 48.4, "table8_progressive_70": 49.9, "table8_progressive_90": 49.9,
    "table12a_alpha_0.0": 47.5, "table12a_alpha_0.1": 48.2, "table12a_alpha_0.3": 49.3, "table12a_alpha_0.5": 49.3,
    "table12a_alpha_0.7": 49.5, "table12a_alpha_1.0": 50.0,
}
HYBRID = "table3_tc_tm_rel"  # the no-masking hybrid: also Table 5 R, Table 7 {10,11}, Table 8 none, Table 12 alpha 1
# (title, [(run name, label override or None, the paper row it stands for)]): a run that stands for
# another table's identical recipe is shown with that row's label and paper number.
GROUPS = [
    ("Table 3: teacher combinations (no masking)",
     [("table3_tc", None, "table3_tc"), ("table3_tm", None, "table3_tm"), ("table3_tc_tc_rel", None, "table3_tc_tc_rel"),
      ("table3_tm_tm_rel", None, "table3_tm_tm_rel"), (HYBRID, None, "table3_tc_tm_rel")]),
    ("Table 5: what T'm distils, with Tc's features (no masking)",
     [("table5_naive", None, "table5_naive"), ("table5_block", None, "table5_block"), ("table5_msa", None, "table5_msa"),
      (HYBRID, "R: relations Q·Kᵀ (the hybrid)", "table5_relation")]),
    ("Table 7: where T'm is distilled (1-based layers of 12; no masking)",
     [("table7_layers_1-11", None, "table7_layers_1-11"), ("table7_layers_1-2-3", None, "table7_layers_1-2-3"),
      ("table7_layers_5-6-7", None, "table7_layers_5-6-7"), ("table7_layers_9-10-11", None, "table7_layers_9-10-11"),
      (HYBRID, "{10, 11} (the hybrid)", "table7_layers_10-11"), ("table7_layers_11", None, "table7_layers_11")]),
    ("Table 8: token masking (4x4 grid: 16 patches)",
     [(HYBRID, "none, 100% (16 of 16)", "table8_none"), ("table8_random", None, "table8_random"),
      ("table8_direct", None, "table8_direct"), ("table8_progressive_50", None, "table8_progressive_50"),
      ("table8_progressive_70", None, "table8_progressive_70"), ("table8_progressive_90", None, "table8_progressive_90")]),
    ("Table 12(a): α, the weight of T'm (no masking)",
     [("table3_tc", "α = 0 (Tc only)", "table12a_alpha_0.0"), ("table12a_alpha_0.1", None, "table12a_alpha_0.1"),
      ("table12a_alpha_0.3", None, "table12a_alpha_0.3"), ("table12a_alpha_0.5", None, "table12a_alpha_0.5"),
      ("table12a_alpha_0.7", None, "table12a_alpha_0.7"), (HYBRID, "α = 1.0 (the hybrid)", "table12a_alpha_1.0")]),
]


def top1(path):
    try:
        with open(path) as f:
            return 100.0 * json.load(f)["top1"]
    except (OSError, KeyError, ValueError):
        return None


def distill_seconds(run_dir):
    """Training wall-clock of a distillation run: the last step's time in metrics.jsonl (the
    trainer's clock; for a resumed run, the part after the last resume)."""
    try:
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            lines = [l for l in f if l.strip()]
        return json.loads(lines[-1])["time"] if lines else None
    except (OSError, ValueError, KeyError):
        return None


def stats(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return m, sd, len(vals)


def fmt(s, seeds):
    if s is None:
        return "–"
    m, sd, n = s
    return f"{m:.2f} ± {sd:.2f}" + ("" if n == seeds else f" (n={n})")


def main():
    out, seeds, steps, ft_steps, rows_text = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    doc = sys.argv[6] if len(sys.argv) > 6 else None
    labels = {}
    for line in rows_text.splitlines():
        if line.strip():
            name, _table, label, *_ = line.split("|")
            labels[name] = label
    res = {}
    for name in labels:
        per = {"knn": [], "probe": [], "finetune": [], "seconds": []}
        for seed in range(seeds):
            d = os.path.join(out, name, f"seed{seed}")
            if not os.path.exists(os.path.join(d, "distill", ".done")):
                continue
            per["knn"].append(top1(os.path.join(d, "knn", "result.json")))
            per["probe"].append(top1(os.path.join(d, "probe", "result.json")))
            per["finetune"].append(top1(os.path.join(d, "finetune", "result.json")))
            per["seconds"].append(distill_seconds(os.path.join(d, "distill")))
        res[name] = {k: stats(v) for k, v in per.items()}
        res[name]["values"] = per
    teachers = {t: {"knn": top1(os.path.join(out, t, "knn", "result.json")),
                    "probe": top1(os.path.join(out, t, "probe", "result.json"))}
                for t in ("teacher_mae", "teacher_sup")}

    lines = [f"Fashion-MNIST test top-1 (%), mean ± std over {seeds} seeds (n = seeds finished, where fewer); "
             f"{steps} distillation steps (× epochs/100 of the recipe) and {ft_steps} fine-tuning steps of batch 128 "
             "per run; student and teachers vit_mini12_patch7_28; the paper's recipes (configs/paper/) under "
             "scripts/reproduce.sh's uniform small-scale overrides. Paper: COCO AP^box, ViT-B/16, DeiT + MAE "
             "teachers.", ""]
    t = teachers
    f1 = lambda v: "–" if v is None else f"{v:.2f}"
    lines += ["| Teacher | k-NN | linear probe |", "|---|---|---|",
              f"| MAE (pretrain-mae) | {f1(t['teacher_mae']['knn'])} | {f1(t['teacher_mae']['probe'])} |",
              f"| supervised (train) | {f1(t['teacher_sup']['knn'])} | {f1(t['teacher_sup']['probe'])} |", ""]
    for title, rows in GROUPS:
        lines += [f"**{title}**", "",
                  "| Row | k-NN | linear probe | fine-tune | distill s/run (median) | paper AP^box |",
                  "|---|---|---|---|---|---|"]
        for n, label, paper_row in rows:
            r = res.get(n)
            if r is None:
                continue
            secs = [v for v in r["values"]["seconds"] if v is not None]
            sec_txt = f"{statistics.median(secs):.0f}" if secs else "–"
            lines.append(f"| {label or labels[n]} | {fmt(r['knn'], seeds)} | {fmt(r['probe'], seeds)} | "
                         f"{fmt(r['finetune'], seeds)} | {sec_txt} | {PAPER.get(paper_row, '–')} |")
        lines.append("")
    text = "\n".join(lines)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"rows": res, "teachers": teachers, "seeds": seeds, "steps": steps, "ft_steps": ft_steps}, f,
                  indent=1)
    print(text)
    if doc:
        with open(doc) as f:
            d = f.read()
        b, e = "<!-- results:begin -->", "<!-- results:end -->"
        if b not in d or e not in d:
            sys.exit(f"{doc}: no {b} ... {e} markers")
        d = d[:d.index(b) + len(b)] + "\n" + text + "\n" + d[d.index(e):]
        with open(doc, "w") as f:
            f.write(d)
        print(f"updated {doc}")


if __name__ == "__main__":
    main()
