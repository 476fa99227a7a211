#!/usr/bin/env python3
"""scripts/study_record.py on hand-made stage folders: the metrics in percent, the distillation's
steps, wall-clock and losses from metrics.jsonl, the recipe's hash, the diagnostics with the
uniform reference, the setting; a missing stage or metric is an error naming the file."""
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "study_record.py")


def write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))


class StudyRecord(unittest.TestCase):
    def test_record(self):
        with tempfile.TemporaryDirectory() as d:
            build = {"commit": "abc", "version": "0.1.0"}
            write(f"{d}/distill/metrics.jsonl",
                  json.dumps({"epoch": 0, "step": 0, "loss": 2.5, "time": 1.0, "lr": 0.1, "mae.relation.mean": 2.0}) + "\n" +
                  json.dumps({"epoch": 0, "step": 299, "loss": 0.5, "time": 88.5, "lr": 0.0, "mae.relation.mean": 0.3}) + "\n")
            write(f"{d}/distill/log.txt", "distill 'r': student x, 2 teacher(s), batch 128, 2 threads, device cpu, fp32, "
                                          "1 process(es) -> out\nstep ...\n")
            write(f"{d}/distill/teacher_cache.json", {"hits": 7, "misses": 3, "bytes_read": 10})
            write(f"{d}/knn/result.json", {"top1": 0.8123, "build": build, "precision": "bf16"})
            write(f"{d}/probe/result.json", {"top1": 0.85})
            write(f"{d}/dense/result.json", {"token_acc": 0.9, "miou": 0.7, "iou": [0.5] * 10})
            write(f"{d}/analyze/diagnostics.json",
                  {"layers": [0, 1], "head_distance_mean": [3.0, 9.0], "nmi_mean": [0.5, 0.1], "images": 8,
                   "uniform": {"head_distance": 14.4, "nmi": 0.0, "grid": [7, 7], "patch_size": 4}})
            write(f"{d}/r.yaml", "name: r\n")
            dest = f"{d}/results/r/seed2.json"
            r = subprocess.run([sys.executable, SCRIPT, dest, "--row", "r", "--seed", "2", "--recipe", f"{d}/r.yaml",
                                "--distill", f"{d}/distill", "--knn", f"{d}/knn", "--probe", f"{d}/probe",
                                "--dense", f"{d}/dense", "--analyze", f"{d}/analyze", "--setting", "steps=300"],
                               stderr=subprocess.PIPE, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(dest) as f:
                rec = json.load(f)
            self.assertEqual(rec["format"], "hybrid-distill.study-run/1")
            self.assertEqual((rec["row"], rec["seed"]), ("r", 2))
            self.assertAlmostEqual(rec["metrics"]["knn"], 81.23)
            self.assertAlmostEqual(rec["metrics"]["probe"], 85.0)
            self.assertAlmostEqual(rec["metrics"]["dense_acc"], 90.0)
            self.assertAlmostEqual(rec["metrics"]["dense_miou"], 70.0)
            self.assertNotIn("finetune", rec["metrics"])
            self.assertEqual(rec["distill"], {"steps": 300, "seconds": 88.5, "first_loss": 2.5, "last_loss": 0.5,
                                              "last_terms": {"mae.relation.mean": 0.3}, "precision": "fp32",
                                              "teacher_cache": {"hits": 7, "misses": 3}})
            self.assertEqual(rec["recipe_sha256"], hashlib.sha256(b"name: r\n").hexdigest())
            self.assertEqual(rec["diagnostics"]["uniform"], {"head_distance": 14.4, "nmi": 0.0, "grid": [7, 7]})
            self.assertEqual(rec["diagnostics"]["head_distance_mean"], [3.0, 9.0])
            self.assertEqual(rec["setting"], {"steps": "300"})
            self.assertEqual(rec["build"], build)
            self.assertEqual(rec["precision"], "fp32")  # the distillation's, over the evaluations' 
            self.assertTrue(rec["cpu"])

            # --check: the same setting with the needed metrics -> 0 (skip the run), else 1.
            def check(*args):
                return subprocess.run([sys.executable, SCRIPT, dest, "--check", *args]).returncode
            self.assertEqual(check("--setting", "steps=300"), 0)
            self.assertEqual(check("--setting", "steps=300", "--need", "dense_miou"), 0)
            self.assertEqual(check("--setting", "steps=300", "--need", "finetune"), 1)
            self.assertEqual(check("--setting", "steps=600"), 1)
            self.assertEqual(subprocess.run([sys.executable, SCRIPT, f"{d}/none.json", "--check"]).returncode, 1)
            # --update adds a stage's metric and keeps the rest; another setting is refused.
            # Fine-tuning keeps its own provenance; the record's build stays the distillation's.
            ft_build = {"commit": "def", "version": "0.1.0"}
            write(f"{d}/finetune/result.json", {
                "top1": 0.91, "build": ft_build, "precision": "bf16", "seconds": 448.7, "head_init": "probe",
                "command": "/x/hybrid-distill finetune -c /x/student.safetensors --pool mean --lr 1e-3 -o /x/ft -t 0"})
            r = subprocess.run([sys.executable, SCRIPT, dest, "--row", "r", "--seed", "2", "--setting", "steps=300",
                                "--update", "--finetune", f"{d}/finetune"], stderr=subprocess.PIPE, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(dest) as f:
                up = json.load(f)
            self.assertAlmostEqual(up["metrics"]["finetune"], 91.0)
            self.assertAlmostEqual(up["metrics"]["dense_miou"], 70.0)
            self.assertEqual(up["distill"], rec["distill"])
            self.assertEqual(up["build"], build)
            self.assertEqual(up["precision"], "fp32")
            self.assertEqual(up["finetune"]["build"], ft_build)
            self.assertEqual(up["finetune"]["precision"], "bf16")
            self.assertEqual(up["finetune"]["head_init"], "probe")
            self.assertAlmostEqual(up["finetune"]["seconds"], 448.7)
            self.assertTrue(up["finetune"]["cpu"])
            self.assertEqual(up["finetune"]["options"], "--pool mean --lr 1e-3 -t 0")
            self.assertEqual(check("--setting", "steps=300", "--need", "finetune"), 0)
            r = subprocess.run([sys.executable, SCRIPT, dest, "--row", "r", "--seed", "2", "--setting", "steps=9",
                                "--update", "--finetune", f"{d}/finetune"], stderr=subprocess.PIPE, text=True)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("another setting", r.stderr)

            # A missing stage, a result without its metric: errors naming the file.
            r = subprocess.run([sys.executable, SCRIPT, dest, "--row", "r", "--seed", "2", "--knn", f"{d}/nothing"],
                               stderr=subprocess.PIPE, text=True)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("nothing/result.json", r.stderr)
            write(f"{d}/bad/result.json", {"top": 1})
            r = subprocess.run([sys.executable, SCRIPT, dest, "--row", "r", "--seed", "2", "--probe", f"{d}/bad"],
                               stderr=subprocess.PIPE, text=True)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("bad/result.json: no 'top1'", r.stderr)


if __name__ == "__main__":
    unittest.main()
