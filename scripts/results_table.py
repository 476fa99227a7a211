#!/usr/bin/env python3
"""Tables of scripts/reproduce.sh's runs: mean ± std over seeds of k-NN, linear-probe and
fine-tuning top-1 per row, grouped as the paper's ablation tables, next to the paper's COCO
AP^box for the same row (ViT-B, DeiT + MAE teachers). Writes OUT/results.md and
OUT/results.json; with a RESULTS.md path, replaces the text between its
<!-- results:begin --> and <!-- results:end --> markers.

usage: results_table.py OUT SEEDS STEPS FT_STEPS ROWS_TEXT [RESULTS.md]
"""
import json
import math
import os
import statistics
import sys

# Paper, Tables 3/5/7/8/12 (Mask R-CNN on COCO, AP^box), DeiT + MAE teachers.
PAPER = {
    "hybrid": 50.0, "tc": 47.5, "tm": 48.9, "tc_tc": 46.8, "tm_tm": 48.9,
    "kind_block": 49.6, "kind_msa": 49.8, "naive": 47.7,
    "layers_last": 49.2, "layers_front": 47.4, "layers_all": 48.8,
    "mask_none": 50.0, "mask_random": 49.2,
    "alpha_0.1": 48.2, "alpha_0.3": 49.3, "alpha_0.7": 49.5,
}
GROUPS = [
    ("Table 3: teacher combinations", ["tc", "tm", "tc_tc", "tm_tm", "hybrid"], {}),
    ("Table 5: what T'm distils (with Tc's features)", ["naive", "kind_block", "kind_msa", "hybrid"],
     {"hybrid": "T'm = relations Q·Kᵀ (hybrid)"}),
    ("Table 7: where T'm is distilled (0-based blocks of 6; paper: 1-based of 12)",
     ["layers_all", "layers_front", "layers_last", "hybrid"],
     {"hybrid": "T'm at blocks 3,4 (L-2, L-1; paper {10,11}, the hybrid)",
      "layers_all": "T'm at blocks 0-4 (paper 1-11)", "layers_front": "T'm at blocks 0,1 (paper {1,2,3})",
      "layers_last": "T'm at block 4 (paper {11})"}),
    ("Table 8: token masking", ["mask_none", "mask_random", "hybrid"],
     {"hybrid": "progressive 70%³ (25%, 4 of 16; the hybrid)"}),
    ("Table 12: α, the weight of T'm", ["tc", "alpha_0.03", "alpha_0.1", "alpha_0.3", "alpha_0.7", "hybrid"],
     {"tc": "α = 0 (Tc only)", "hybrid": "α = 1.0 (the hybrid)"}),
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
             f"{steps} distillation steps and {ft_steps} fine-tuning steps of batch 128 per run; student "
             "vit_mini_patch7_28. Paper: COCO AP^box, ViT-B/16, DeiT + MAE teachers.", ""]
    t = teachers
    f1 = lambda v: "–" if v is None else f"{v:.2f}"
    lines += ["| Teacher | k-NN | linear probe |", "|---|---|---|",
              f"| MAE (pretrain-mae) | {f1(t['teacher_mae']['knn'])} | {f1(t['teacher_mae']['probe'])} |",
              f"| supervised (train) | {f1(t['teacher_sup']['knn'])} | {f1(t['teacher_sup']['probe'])} |", ""]
    for title, names, rename in GROUPS:
        lines += [f"**{title}**", "",
                  "| Row | k-NN | linear probe | fine-tune | distill s/run (median) | paper AP^box |",
                  "|---|---|---|---|---|---|"]
        for n in names:
            r = res.get(n)
            if r is None:
                continue
            secs = [v for v in r["values"]["seconds"] if v is not None]
            sec_txt = f"{statistics.median(secs):.0f}" if secs else "–"
            lines.append(f"| {rename.get(n, labels[n])} | {fmt(r['knn'], seeds)} | {fmt(r['probe'], seeds)} | "
                         f"{fmt(r['finetune'], seeds)} | {sec_txt} | {PAPER.get(n, '–')} |")
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
