#!/usr/bin/env python3
"""The small-scale study's tables and verdicts, built from the committed run records alone
(docs/results/<row>/seed<K>.json and docs/results/teachers/<name>.json, written by
scripts/study_record.py). Per row: mean ± sample std over seeds of the dense task (mIoU and
per-token accuracy of a linear probe on frozen patch tokens of 2x2 mosaics), k-NN, linear probe
and, where run, fine-tuning; the paper's COCO AP^box of the same row. Per claim of the paper:
the difference of means with a 95% Welch interval, Welch's t-test p-value and a verdict.

usage: results_table.py [--results DIR] [--doc RESULTS.md] [--rows]
  --results DIR  record folder (default: docs/results next to this script's repository)
  --doc FILE     replace the text between FILE's <!-- results:begin --> and
                 <!-- results:end --> markers with the tables (else print them)
  --rows         print the study's rows in run order (name|label|finetune|cache), for
                 scripts/reproduce.sh
"""
import argparse
import glob
import json
import math
import os
import statistics
import sys

from scipy import stats as sstats

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
HYBRID = "table3_tc_tm_rel"   # the no-masking hybrid: Table 5 R, Table 7 {10,11}, Table 8 none, Table 12 α = 1
MASKED = "table8_progressive_70"  # the hybrid with progressive 70%³ masking: Table 13's 100-epoch masked row

# The study's rows in run order (most telling first, so a partial study has whole claims):
# (recipe name under configs/paper/, label, paper AP^box of that row, fine-tuned?).
ROWS = [
    (HYBRID, "Tc + T'm (the hybrid, no masking)", 50.0, True),
    ("table3_tc", "Tc (DeiT features only)", 47.5, True),
    ("table3_tm", "Tm (MAE features only)", 48.9, True),
    (MASKED, "the hybrid, progressive 70%³ masking", 49.9, True),
    ("table3_tc_tc_rel", "Tc + T'c (both from DeiT)", 46.8, False),
    ("table3_tm_tm_rel", "Tm + T'm (both from MAE)", 48.9, False),
    ("table5_naive", "naive: both teachers' features at the last layer", 47.7, False),
    ("table5_block", "T'm = block outputs", 49.6, False),
    ("table5_msa", "T'm = attention (MSA) outputs", 49.8, False),
    ("table7_layers_1-2-3", "T'm at {1, 2, 3}", 47.4, False),
    ("table7_layers_5-6-7", "T'm at {5, 6, 7}", 48.3, False),
    ("table7_layers_9-10-11", "T'm at {9, 10, 11}", 49.8, False),
    ("table7_layers_11", "T'm at {11}", 49.2, False),
    ("table7_layers_1-11", "T'm at 1-11", 48.8, False),
    ("table8_random", "random, 35% kept", 49.2, False),
    ("table8_direct", "direct, 35% kept (one step at block 11)", 49.6, False),
    ("table8_progressive_50", "progressive 50%³", 48.4, False),
    ("table8_progressive_90", "progressive 90%³", 49.9, False),
    ("table12a_alpha_0.1", "α = 0.1", 48.2, False),
    ("table12a_alpha_0.3", "α = 0.3", 49.3, False),
    ("table12a_alpha_0.5", "α = 0.5", 49.3, False),
    ("table12a_alpha_0.7", "α = 0.7", 49.5, False),
    ("table13_deit_nomask_300ep", "300 epochs, no masking", 50.0, False),
    ("table13_deit_mask_300ep", "300 epochs, progressive 70%³", 50.3, False),
]
ROW = {r[0]: r for r in ROWS}
# Rows whose teacher targets no other row needs (block / MSA outputs, relations at other layers,
# a direct mask at block 11): the teacher-target cache would store them for a single use, and
# the 1-11 row alone would need some 25 GB, so reproduce.sh runs these without it.
UNCACHED = {"table5_block", "table5_msa", "table7_layers_1-2-3", "table7_layers_5-6-7", "table7_layers_9-10-11",
            "table7_layers_11", "table7_layers_1-11", "table8_direct"}

# (title, [(run, label or None, paper AP^box or None)]): a run standing for another table's
# identical recipe is shown with that row's label and number.
TABLES = [
    ("As Table 1: the hybrid against single-teacher distillation (with fine-tuning)",
     [("table3_tc", "distilled from DeiT alone (Tc)", None), ("table3_tm", "distilled from MAE alone (Tm)", None),
      (HYBRID, None, None), (MASKED, None, None)]),
    ("Table 3: teacher combinations (no masking)",
     [("table3_tc", None, None), ("table3_tm", None, None), ("table3_tc_tc_rel", None, None),
      ("table3_tm_tm_rel", None, None), (HYBRID, None, None)]),
    ("Table 5: what T'm distils, with Tc's features (no masking)",
     [("table5_naive", None, None), ("table5_block", None, None), ("table5_msa", None, None),
      (HYBRID, "T'm = relations Q·Kᵀ (the hybrid)", 50.0)]),
    ("Table 7: where T'm is distilled (1-based blocks of 12; no masking)",
     [("table7_layers_1-2-3", None, None), ("table7_layers_5-6-7", None, None), ("table7_layers_9-10-11", None, None),
      (HYBRID, "T'm at {10, 11} (the hybrid)", 50.0), ("table7_layers_11", None, None),
      ("table7_layers_1-11", None, None)]),
    ("Table 8: token masking",
     [(HYBRID, "none, 100% kept", 50.0), ("table8_random", None, None), ("table8_direct", None, None),
      ("table8_progressive_50", None, None), (MASKED, "progressive 70%³ (the hybrid's default)", 49.9),
      ("table8_progressive_90", None, None)]),
    ("Table 12(a): α, the weight of T'm (no masking)",
     [("table3_tc", "α = 0 (Tc only)", 47.5), ("table12a_alpha_0.1", None, None), ("table12a_alpha_0.3", None, None),
      ("table12a_alpha_0.5", None, None), ("table12a_alpha_0.7", None, None), (HYBRID, "α = 1.0 (the hybrid)", 50.0)]),
    ("Table 13: a 3× longer schedule, with and without masking",
     [(HYBRID, "1× schedule, no masking", 50.0), (MASKED, "1× schedule, progressive 70%³", 49.9),
      ("table13_deit_nomask_300ep", "3× schedule, no masking", 50.0),
      ("table13_deit_mask_300ep", "3× schedule, progressive 70%³", 50.3)]),
]

# The paper's claims as comparisons: (claim, a, relation, b, metrics). relation ">" means the paper
# finds a better than b; "≈" that a costs at most EQUIV points against b; "=" that a and b are
# level, within EQUIV points either way.
EQUIV = 1.0
CLAIMS = [
    ("T3: the hybrid beats DeiT features alone", HYBRID, ">", "table3_tc"),
    ("T3: the hybrid beats MAE features alone", HYBRID, ">", "table3_tm"),
    ("T3: the hybrid beats DeiT features + DeiT relations", HYBRID, ">", "table3_tc_tc_rel"),
    ("T3: the hybrid beats MAE features + MAE relations", HYBRID, ">", "table3_tm_tm_rel"),
    ("T3: MAE features alone beat DeiT features alone (dense task)", "table3_tm", ">", "table3_tc"),
    ("T5: relations beat block outputs as T'm", HYBRID, ">", "table5_block"),
    ("T5: relations beat MSA outputs as T'm", HYBRID, ">", "table5_msa"),
    ("T5: the hybrid beats the naive two-feature combination", HYBRID, ">", "table5_naive"),
    ("T7: T'm at {10, 11} beats {1, 2, 3}", HYBRID, ">", "table7_layers_1-2-3"),
    ("T7: T'm at {10, 11} beats {5, 6, 7}", HYBRID, ">", "table7_layers_5-6-7"),
    ("T7: T'm at {10, 11} beats 1-11", HYBRID, ">", "table7_layers_1-11"),
    ("T7: T'm at {10, 11} beats {11}", HYBRID, ">", "table7_layers_11"),
    ("T8: progressive 70%³ costs at most 1 point against no masking", MASKED, "≈", HYBRID),
    ("T8: progressive 90%³ costs at most 1 point against no masking", "table8_progressive_90", "≈", HYBRID),
    ("T8: progressive 70%³ beats random masking", MASKED, ">", "table8_random"),
    ("T8: progressive 70%³ beats direct masking", MASKED, ">", "table8_direct"),
    ("T8: progressive 70%³ beats progressive 50%³", MASKED, ">", "table8_progressive_50"),
    ("T12: α = 1 beats α = 0 (Tc only)", HYBRID, ">", "table3_tc"),
    ("T12: α = 1 beats α = 0.1", HYBRID, ">", "table12a_alpha_0.1"),
    ("T12: α = 1 beats α = 0.5", HYBRID, ">", "table12a_alpha_0.5"),
    ("T13: without masking, a 3× schedule gains nothing (over-fitting)", "table13_deit_nomask_300ep", "=", HYBRID),
    ("T13: with masking, a 3× schedule beats 1×", "table13_deit_mask_300ep", ">", MASKED),
    ("T13: with a 3× schedule, masking beats no masking", "table13_deit_mask_300ep", ">",
     "table13_deit_nomask_300ep"),
]
# Table 1's fine-tuning column (the paper's IN-1K top-1: Distill-DeiT 82.0, Distill-MAE 83.7, the
# hybrid, masked, 83.7), tested on the fine-tuning accuracy alone.
FT_CLAIMS = [
    ("T1: the hybrid (masked) beats DeiT features alone", MASKED, ">", "table3_tc"),
    ("T1: the hybrid (masked) is level with MAE features alone", MASKED, "=", "table3_tm"),
    ("T1: the hybrid (no masking) beats DeiT features alone", HYBRID, ">", "table3_tc"),
]
METRICS = [("dense_miou", "dense mIoU"), ("dense_acc", "dense token acc."), ("knn", "k-NN"), ("probe", "linear probe"),
           ("finetune", "fine-tune")]
CLAIM_METRICS = ("dense_miou", "knn", "probe")


def load(results):
    runs, teachers = {}, {}
    for path in sorted(glob.glob(os.path.join(results, "*", "*.json"))):
        try:
            with open(path) as f:
                rec = json.load(f)
        except (OSError, ValueError) as e:
            sys.exit(f"results_table: {path}: unreadable record ({e})")
        if os.path.basename(os.path.dirname(path)) == "teachers":
            teachers[os.path.splitext(os.path.basename(path))[0]] = rec
        elif rec.get("format") == "hybrid-distill.study-run/1":
            runs.setdefault(rec["row"], []).append(rec)
        else:
            sys.exit(f"results_table: {path}: not a study record (format {rec.get('format')!r})")
    return runs, teachers


def values(recs, metric):
    return [r["metrics"][metric] for r in recs if metric in r.get("metrics", {})]


def mean_sd(v):
    if not v:
        return None
    return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0), len(v)


def fmt(s, seeds):
    if s is None:
        return "–"
    m, sd, n = s
    return f"{m:.2f} ± {sd:.2f}" + ("" if n >= seeds else f" (n={n})")


def welch(a, b):
    """Mean difference a - b, its 95% Welch interval and the two-sided p-value; None with < 2 each."""
    if len(a) < 2 or len(b) < 2:
        return None
    d = statistics.mean(a) - statistics.mean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return d, d, d, (0.0 if d else 1.0)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    t = sstats.t.ppf(0.975, df)
    p = 2 * sstats.t.sf(abs(d) / se, df)
    return d, d - t * se, d + t * se, p


def welch_cell(w):
    """A difference of means with its 95% interval and p-value, as the claims tables show it."""
    return "–" if w is None else f"{w[0]:+.2f} [{w[1]:+.2f}, {w[2]:+.2f}], p = {w[3]:.3f}"


def verdict(rel, w):
    if w is None:
        return "too few seeds"
    d, lo, hi, p = w
    if rel == ">":
        if p < 0.05:
            return "holds" if d > 0 else "reversed"
        return "not resolved"
    if rel == "=":
        # Level: the whole interval within ±EQUIV; "fails" once a difference beyond EQUIV is shown.
        if -EQUIV < lo and hi < EQUIV:
            return "holds"
        if lo > EQUIV or hi < -EQUIV:
            return "fails"
        return "not resolved"
    # "≈": a costs at most EQUIV points: the whole interval above -EQUIV.
    if lo > -EQUIV:
        return "holds"
    if hi < -EQUIV:
        return "fails"
    return "not resolved"


def cpu_tags(runs):
    """A letter per CPU named in the records (A, B, ... in name order): wall-clock figures are
    only comparable on one CPU, so the s/run cells say which one."""
    cpus = sorted({r.get("cpu", "?") for rs in runs.values() for r in rs})
    return {c: chr(ord("A") + i) for i, c in enumerate(cpus)}


def seconds_cell(recs, tags):
    """Median distillation wall-clock of a row's records, per CPU when the records name several."""
    by_cpu = {}
    for r in recs:
        if r.get("distill", {}).get("seconds"):
            by_cpu.setdefault(r.get("cpu", "?"), []).append(r["distill"]["seconds"])
    if not by_cpu:
        return "–"
    if len(tags) == 1:
        return f"{statistics.median(next(iter(by_cpu.values()))):.0f}"
    return " / ".join(f"{statistics.median(v):.0f} {tags[c]}" for c, v in sorted(by_cpu.items()))


def setting_text(runs):
    recs = [r for rs in runs.values() for r in rs]
    if not recs:
        return "No run has finished yet."
    s = recs[0].get("setting", {})
    tags = cpu_tags(runs)
    cpus = [f"{tags[c]}: {c}" if len(tags) > 1 else c for c in sorted(tags)]
    prec = sorted({str(r.get("precision", "?")) for r in recs})
    secs = [r["distill"]["seconds"] for r in recs if r.get("distill", {}).get("seconds")]
    parts = [f"{len(recs)} runs of {len(runs)} rows"]
    if s:
        parts.append("setting: " + ", ".join(f"{k} {v}" for k, v in sorted(s.items())))
    parts.append("precision " + "/".join(prec))
    parts.append(("CPUs (s/run: the median per CPU) " if len(tags) > 1 else "CPU ") + "; ".join(cpus))
    if secs:
        parts.append(f"distillation wall-clock {sum(secs) / 60:.0f} min in all (median {statistics.median(secs):.0f} s "
                     "per run)")
    return "; ".join(parts) + "."


def tables(runs, teachers, seeds):
    tags = cpu_tags(runs)
    out = [setting_text(runs), ""]
    if teachers:
        out += ["**Teachers**", "", "| Teacher | dense mIoU | dense token acc. | k-NN | linear probe |", "|---|---|---|---|---|"]
        for name, label in (("mae", "MAE (pretrain-mae)"), ("sup", "supervised, DeiT-style (train)")):
            t = teachers.get(name)
            if t:
                m = t.get("metrics", {})
                f1 = lambda k: f"{m[k]:.2f}" if k in m else "–"
                out.append(f"| {label} | {f1('dense_miou')} | {f1('dense_acc')} | {f1('knn')} | {f1('probe')} |")
        out.append("")
    for title, rows in TABLES:
        present = [r for r in rows if r[0] in runs]
        if not present:
            continue
        ft = any(values(runs[r[0]], "finetune") for r in present)
        cols = [m for m in METRICS if m[0] != "finetune" or ft]
        out += [f"**{title}**", "",
                "| Row | " + " | ".join(c[1] for c in cols) + " | s/run | paper AP^box |",
                "|---|" + "---|" * (len(cols) + 2)]
        for run, label, paper in present:
            recs = runs[run]
            cells = [fmt(mean_sd(values(recs, m)), seeds) for m, _ in cols]
            paper = paper if paper is not None else ROW[run][2]
            sec = seconds_cell(recs, tags)
            out.append(f"| {label or ROW[run][1]} | " + " | ".join(cells) + f" | {sec} | "
                       f"{paper if paper is not None else '–'} |")
        out.append("")
    out += ["**The paper's claims, tested**", "",
            "Difference of means (row A − row B) in points with its 95% Welch interval, and Welch's two-sided "
            f"t-test p-value, per metric. Verdict on the dense task: *holds* (p < 0.05 in the paper's direction; "
            f"for \"≈\": the interval lies above −{EQUIV:g}; for \"level\": it lies within ±{EQUIV:g}), "
            f"*reversed* (p < 0.05 the other way), *fails* (a difference beyond {EQUIV:g} point is shown), "
            f"*not resolved*.", "",
            "| Claim | " + " | ".join(dict(METRICS)[m] + ": A − B, p" for m in CLAIM_METRICS) + " | verdict (dense) |",
            "|---|" + "---|" * (len(CLAIM_METRICS) + 1)]
    for claim, a, rel, b in CLAIMS:
        if a not in runs or b not in runs:
            out.append(f"| {claim} | " + " | ".join("–" for _ in CLAIM_METRICS) + " | not run yet |")
            continue
        cells, dense_w = [], None
        for m in CLAIM_METRICS:
            w = welch(values(runs[a], m), values(runs[b], m))
            if m == "dense_miou":
                dense_w = w
            cells.append(welch_cell(w))
        out.append(f"| {claim} | " + " | ".join(cells) + f" | {verdict(rel, dense_w)} |")
    out.append("")
    out += ["Fine-tuning (Table 1's ImageNet column): the same test on the fine-tuned top-1 accuracy.", "",
            "| Claim | fine-tune: A − B, p | verdict |", "|---|---|---|"]
    for claim, a, rel, b in FT_CLAIMS:
        va, vb = values(runs.get(a, []), "finetune"), values(runs.get(b, []), "finetune")
        if not va or not vb:
            out.append(f"| {claim} | – | not run yet |")
            continue
        w = welch(va, vb)
        out.append(f"| {claim} | {welch_cell(w)} | {verdict(rel, w)} |")
    out.append("")
    diag = [(label, rec["diagnostics"]) for label, rec in diagnostics_sources(runs, teachers)]
    if diag:
        out += diagnostics_tables(diag)
    return "\n".join(out)


def diagnostics_sources(runs, teachers):
    src = []
    for name, label in (("mae", "MAE teacher"), ("sup", "supervised teacher")):
        if name in teachers and "diagnostics" in teachers[name]:
            src.append((label, teachers[name]))
    for run, label in (("table3_tc", "student, Tc only"), ("table3_tm", "student, Tm only"), (HYBRID, "hybrid student"),
                       (MASKED, "hybrid student, masked")):
        rec = next((r for r in sorted(runs.get(run, []), key=lambda r: r["seed"]) if "diagnostics" in r), None)
        if rec:
            src.append((label + f" (seed {rec['seed']})", rec))
    return src


def diagnostics_tables(diag):
    out = []
    uni = next((d["uniform"] for _, d in diag if "uniform" in d), None)
    layers = diag[0][1]["layers"]
    for key, title, digits in (("head_distance_mean", "Average attention distance (pixels), layer mean over heads", 2),
                               ("nmi_mean", "NMI between query and key, layer mean over heads", 3)):
        head = "| Block | " + " | ".join(l for l, _ in diag) + (" | uniform attention |" if uni else " |")
        out += [f"**{title}**", "", head, "|---|" + "---|" * (len(diag) + (1 if uni else 0))]
        for i, layer in enumerate(layers):
            cells = [f"{d[key][i]:.{digits}f}" if i < len(d.get(key, [])) else "–" for _, d in diag]
            ref = f" | {uni['head_distance' if key == 'head_distance_mean' else 'nmi']:.{digits}f}" if uni else ""
            out.append(f"| {layer} | " + " | ".join(cells) + ref + " |")
        out.append("")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=os.path.join(ROOT, "docs", "results"))
    ap.add_argument("--doc")
    ap.add_argument("--seeds", type=int, default=3, help="seeds a complete row has")
    ap.add_argument("--rows", action="store_true")
    a = ap.parse_args()
    if a.rows:
        for name, label, _paper, ft in ROWS:
            print(f"{name}|{label}|{'finetune' if ft else ''}|{'' if name in UNCACHED else 'cache'}")
        return
    runs, teachers = load(a.results)
    text = tables(runs, teachers, a.seeds)
    if not a.doc:
        print(text)
        return
    with open(a.doc) as f:
        d = f.read()
    b, e = "<!-- results:begin -->", "<!-- results:end -->"
    if b not in d or e not in d:
        sys.exit(f"{a.doc}: no {b} ... {e} markers")
    d = d[:d.index(b) + len(b)] + "\n" + text + "\n" + d[d.index(e):]
    with open(a.doc, "w") as f:
        f.write(d)
    print(f"updated {a.doc} from {sum(len(v) for v in runs.values())} run records")


if __name__ == "__main__":
    main()
