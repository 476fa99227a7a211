#!/usr/bin/env python3
"""One finished study run as a small JSON record (docs/results/<row>/seed<K>.json, or
docs/results/teachers/<name>.json): the metrics of its evaluation stages, the distillation's
wall-clock and loss, and the provenance (recipe and its hash, the overrides, the binary's build,
the CPU, the precision). scripts/results_table.py builds docs/RESULTS.md from these files alone,
so the study accumulates across machines as records are committed.

usage: study_record.py DEST --row NAME --seed K [--recipe FILE] [--distill DIR] [--knn DIR]
                       [--probe DIR] [--dense DIR] [--finetune DIR] [--analyze DIR]
                       [--setting KEY=VALUE ...] [--update]
       study_record.py DEST --check [--setting KEY=VALUE ...] [--need METRIC ...]
A stage folder holds the command's result.json (distill: metrics.jsonl and recipe.yaml).
The record is written atomically; a missing or unreadable stage is an error naming it.
--update keeps what an existing record has and adds or replaces what the given stages measure.
Fine-tuning, a later pass that may run on another machine or build, keeps its own provenance in
the record's "finetune" section (build, CPU, precision, wall-clock, options); the record's top-level
build, CPU and precision stay those of the distillation and its evaluations.
--check exits 0 when DEST is a record of the same setting that has every --need metric (the
run can be skipped), 1 otherwise.
"""
import argparse
import hashlib
import json
import os
import platform
import re
import sys
import tempfile

FORMAT = "hybrid-distill.study-run/1"


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        sys.exit(f"study_record: {path}: cannot read ({e.strerror})")
    except ValueError as e:
        sys.exit(f"study_record: {path}: not valid JSON ({e})")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return platform.processor() or "unknown"
    model = next((l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name")), "unknown")
    flags = next((l for l in text.splitlines() if l.startswith("flags")), "")
    return model + (" (avx512_bf16)" if "avx512_bf16" in flags.split() else " (no native bf16)")


def finetune_summary(j):
    """The fine-tuning's own provenance: its build, CPU, precision, wall-clock, head start and
    options (its command without the binary, the input and the output folder)."""
    s = {"cpu": cpu_model()}
    for k in ("build", "precision", "seconds", "steps", "images", "final_loss", "head_init", "head_probe_train_top1"):
        if k in j:
            s[k] = j[k]
    words = j.get("command", "").split()[2:]
    opts, skip = [], False
    for w in words:
        if skip:
            skip = False
        elif w in ("-c", "--checkpoint", "-o", "--out"):
            skip = True
        else:
            opts.append(w)
    if opts:
        s["options"] = " ".join(opts)
    return s


def distill_summary(d):
    """Wall-clock (the trainer's clock at the last step), steps, first and last loss."""
    path = os.path.join(d, "metrics.jsonl")
    try:
        with open(path) as f:
            lines = [json.loads(l) for l in f if l.strip()]
    except (OSError, ValueError) as e:
        sys.exit(f"study_record: {path}: unreadable ({e})")
    steps = [l for l in lines if "step" in l and "loss" in l]
    if not steps:
        sys.exit(f"study_record: {path}: no training steps logged")
    out = {"steps": steps[-1]["step"] + 1, "seconds": steps[-1].get("time"), "first_loss": steps[0]["loss"],
           "last_loss": steps[-1]["loss"]}
    # The last logged value of every loss term (e.g. mae.relation.mean, deit.features.last).
    terms = {k: v for k, v in steps[-1].items() if k not in ("epoch", "step", "time", "lr", "loss", "grad_norm")}
    if terms:
        out["last_terms"] = terms
    # The precision the run trained in, from its log's header line ("..., device cpu, bf16, ...").
    try:
        with open(os.path.join(d, "log.txt")) as f:
            m = re.search(r", device [^,]+, (fp32|bf16),", f.read())
        if m:
            out["precision"] = m.group(1)
    except OSError:
        pass
    # Teacher-target cache use (distill --teacher-cache writes teacher_cache.json).
    try:
        with open(os.path.join(d, "teacher_cache.json")) as f:
            tc = json.load(f)
        out["teacher_cache"] = {k: tc[k] for k in ("hits", "misses") if k in tc}
    except (OSError, ValueError):
        pass
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dest")
    ap.add_argument("--row")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--recipe")
    for s in ("distill", "knn", "probe", "dense", "finetune", "analyze"):
        ap.add_argument(f"--{s}")
    ap.add_argument("--setting", action="append", default=[], help="KEY=VALUE describing the study setting")
    ap.add_argument("--update", action="store_true")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--need", action="append", default=[])
    a = ap.parse_args()
    setting = {}
    for kv in a.setting:
        k, sep, v = kv.partition("=")
        if not sep:
            sys.exit(f"study_record: --setting {kv!r}: expected KEY=VALUE")
        setting[k] = v
    if a.check:
        try:
            with open(a.dest) as f:
                old = json.load(f)
        except (OSError, ValueError):
            sys.exit(1)
        ok = old.get("setting") == setting and all(m in old.get("metrics", {}) for m in a.need)
        sys.exit(0 if ok else 1)
    if a.row is None or a.seed is None:
        ap.error("--row and --seed are required")

    rec = {"format": FORMAT, "row": a.row, "seed": a.seed, "metrics": {}, "cpu": cpu_model()}
    if a.update and os.path.exists(a.dest):
        rec = load_json(a.dest)
        if rec.get("setting") != setting:
            sys.exit(f"study_record: {a.dest}: recorded with another setting ({rec.get('setting')}); not updated")
    rec["setting"] = setting
    if a.recipe:
        rec["recipe"] = os.path.relpath(a.recipe, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
        rec["recipe_sha256"] = sha256(a.recipe)
    m = rec["metrics"]
    build = None
    if a.distill:
        rec["distill"] = distill_summary(a.distill)
        if "precision" in rec["distill"]:
            rec["precision"] = rec["distill"]["precision"]
    for stage, keys in (("knn", {"top1": "knn"}), ("probe", {"top1": "probe"}),
                        ("dense", {"token_acc": "dense_acc", "miou": "dense_miou"}),
                        ("finetune", {"top1": "finetune"})):
        d = getattr(a, stage)
        if not d:
            continue
        j = load_json(os.path.join(d, "result.json"))
        for src, dst in keys.items():
            if src not in j:
                sys.exit(f"study_record: {d}/result.json: no '{src}' entry")
            m[dst] = 100.0 * j[src]
        if stage == "dense" and "iou" in j:
            rec["dense_iou_per_class"] = j["iou"]
        if stage == "finetune":
            rec["finetune"] = finetune_summary(j)
            continue
        build = build or j.get("build")
        if j.get("precision") and "precision" not in rec:
            rec["precision"] = j["precision"]
    if a.analyze:
        j = load_json(os.path.join(a.analyze, "diagnostics.json"))
        rec["diagnostics"] = {k: j[k] for k in ("layers", "head_distance_mean", "nmi_mean", "images") if k in j}
        if "uniform" in j:
            rec["diagnostics"]["uniform"] = {k: j["uniform"][k] for k in ("head_distance", "nmi", "grid")}
    if build:
        rec["build"] = build

    os.makedirs(os.path.dirname(os.path.abspath(a.dest)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(a.dest)), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(rec, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, a.dest)


if __name__ == "__main__":
    main()
