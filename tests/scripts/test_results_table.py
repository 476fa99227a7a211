#!/usr/bin/env python3
"""scripts/results_table.py on a hand-made record tree (docs/results layout): mean ± sample std
over seeds, "(n=K)" for a row with fewer seeds, the median wall-clock (per CPU when the records
name several), the paper's column, a run
standing for another table's identical row, Welch's test against hand-computed values, the
verdicts, the diagnostics table with the uniform reference, and the rewrite between the
RESULTS.md markers (an error without them, and for a malformed record)."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "results_table.py")


def write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))


def record(res, row, seed, miou, knn, seconds, **extra):
    rec = {"format": "hybrid-distill.study-run/1", "row": row, "seed": seed, "cpu": "Test CPU (avx512_bf16)",
           "precision": "bf16", "setting": {"arch": "vit_mini12_patch4_28"},
           "metrics": {"dense_miou": miou, "dense_acc": miou + 10, "knn": knn, "probe": 80.0},
           "distill": {"seconds": seconds, "steps": 100}}
    rec["metrics"].update(extra.pop("metrics", {}))
    rec.update(extra)
    write(os.path.join(res, row, f"seed{seed}.json"), rec)


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class ResultsTable(unittest.TestCase):
    def test_tables_claims_and_docs(self):
        with tempfile.TemporaryDirectory() as d:
            res = os.path.join(d, "results")
            # The hybrid: dense mIoU 4, 5, 6 (mean 5.00 ± 1.00); times 90, 300, 100 -> median 100.
            diag = {"layers": [0, 1], "head_distance_mean": [5.0, 12.5], "nmi_mean": [0.4, 0.05], "images": 64,
                    "uniform": {"head_distance": 14.4379, "nmi": 0.0, "grid": [7, 7]}}
            for seed, (m, s) in enumerate(((4.0, 90), (5.0, 300), (6.0, 100))):
                record(res, "table3_tc_tm_rel", seed, m, 70.0 + seed, s, metrics={"finetune": 90.0},
                       **({"diagnostics": diag} if seed == 0 else {}))
            # Tc: 1, 2, 3. Welch = Student here (equal n and variance): t = 3/sqrt(2/3) = 3.674, df = 4,
            # two-sided p = 0.0213; the interval 3 ± 2.776 * 0.8165 = [0.73, 5.27].
            # Fine-tuned 85, 86, 87 against the hybrid's 90, 90, 90: d = 4, se = 0.577, df = 2,
            # t = 6.93, p = 0.0202; the interval 4 ± 4.303 * 0.577 = [1.52, 6.48].
            for seed, m in enumerate((1.0, 2.0, 3.0)):
                record(res, "table3_tc", seed, m, 75.0, 60, metrics={"finetune": 85.0 + seed})
            # Masked hybrid: 2 seeds only; 4.5, 5.5 against the hybrid's 4, 5, 6 (≈ claim).
            record(res, "table8_progressive_70", 0, 4.5, 70.0, 50)
            record(res, "table8_progressive_70", 1, 5.5, 70.0, 50)
            # Tm: one seed only -> too few seeds for a test.
            record(res, "table3_tm", 0, 9.0, 60.0, 70)
            write(os.path.join(res, "teachers", "mae.json"),
                  {"metrics": {"dense_miou": 30.0, "knn": 75.0}, "diagnostics": dict(diag, head_distance_mean=[4.0, 6.0])})
            doc = os.path.join(d, "RESULTS.md")
            write(doc, "head\n<!-- results:begin -->\nold\n<!-- results:end -->\ntail\n")
            r = run("--results", res, "--doc", doc)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(doc) as f:
                text = f.read()
            self.assertTrue(text.startswith("head\n<!-- results:begin -->\n"))
            self.assertTrue(text.endswith("<!-- results:end -->\ntail\n"))
            self.assertNotIn("\nold\n", text)
            # Table 3: mean ± std, fine-tune column only where a row ran it, median seconds, paper.
            self.assertIn("| Tc + T'm (the hybrid, no masking) | 5.00 ± 1.00 | 15.00 ± 1.00 | 71.00 ± 1.00 | "
                          "80.00 ± 0.00 | 90.00 ± 0.00 | 100 | 50.0 |", text)
            self.assertIn("| Tc (DeiT features only) | 2.00 ± 1.00 | 12.00 ± 1.00 | 75.00 ± 0.00 | 80.00 ± 0.00 | "
                          "86.00 ± 1.00 | 60 | 47.5 |", text)
            self.assertIn("| Tm (MAE features only) | 9.00 ± 0.00 (n=1) | 19.00 ± 0.00 (n=1) | 60.00 ± 0.00 (n=1) | "
                          "80.00 ± 0.00 (n=1) | – | 70 | 48.9 |", text)
            # Table 1's fine-tuning claims: on the fine-tuned accuracy only.
            self.assertIn("| T1: the hybrid (no masking) beats DeiT features alone | +4.00 [+1.52, +6.48], p = 0.020 | "
                          "holds |", text)
            self.assertIn("| T1: the hybrid (masked) beats DeiT features alone | – | not run yet |", text)
            self.assertIn("| Tm (MAE features only) | 9.00 ± 0.00 (n=1) |", text)
            # One run standing for another table's row, with that row's label and number.
            self.assertIn("| none, 100% kept | 5.00 ± 1.00 |", text)
            self.assertIn("| α = 0 (Tc only) | 2.00 ± 1.00 |", text)
            self.assertIn("| progressive 70%³ (the hybrid's default) | 5.00 ± 0.71 (n=2) |", text)
            # Claims: Welch against the hand-computed values.
            self.assertIn("| T3: the hybrid beats DeiT features alone | +3.00 [+0.73, +5.27], p = 0.021 |", text)
            line = next(l for l in text.splitlines() if l.startswith("| T3: the hybrid beats DeiT features alone"))
            self.assertTrue(line.endswith("| holds |"), line)
            line = next(l for l in text.splitlines() if l.startswith("| T3: the hybrid beats MAE features alone"))
            self.assertTrue(line.endswith("| too few seeds |"), line)
            line = next(l for l in text.splitlines() if l.startswith("| T3: MAE features alone beat DeiT"))
            self.assertTrue(line.endswith("| too few seeds |"), line)
            line = next(l for l in text.splitlines() if l.startswith("| T8: progressive 70%³ costs at most"))
            self.assertTrue(line.endswith("| not resolved |"), line)  # +0.00 with a wide interval
            self.assertIn("| T5: relations beat block outputs as T'm | – | – | – | not run yet |", text)
            # Diagnostics of teachers and students, with the uniform reference column.
            self.assertIn("| Block | MAE teacher | hybrid student (seed 0) | uniform attention |", text)
            self.assertIn("| 1 | 6.00 | 12.50 | 14.44 |", text)
            self.assertIn("| 1 | 0.050 | 0.050 | 0.000 |", text)
            self.assertIn("CPU Test CPU (avx512_bf16)", text)

            # A reversed claim: the single-teacher row clearly better.
            for seed, m in enumerate((11.0, 12.0, 13.0)):
                record(res, "table3_tc", seed, m, 75.0, 60)
            text = run("--results", res).stdout
            line = next(l for l in text.splitlines() if l.startswith("| T3: the hybrid beats DeiT features alone"))
            self.assertTrue(line.endswith("| reversed |"), line)

            # Records from two CPUs: the wall-clock per CPU, each CPU with its letter.
            record(res, "table3_tc", 3, 12.0, 75.0, 200, cpu="Another CPU (no bf16)")
            text = run("--results", res).stdout
            self.assertIn("CPUs (s/run: the median per CPU) A: Another CPU (no bf16); B: Test CPU (avx512_bf16)", text)
            line = next(l for l in text.splitlines() if l.startswith("| Tc (DeiT features only) |"))
            self.assertTrue(line.endswith("| 200 A / 60 B | 47.5 |"), line)
            line = next(l for l in text.splitlines() if l.startswith("| Tc + T'm (the hybrid, no masking) |"))
            self.assertTrue(line.endswith("| 100 B | 50.0 |"), line)
            os.remove(os.path.join(res, "table3_tc", "seed3.json"))

            # A "level" claim (Table 13 without masking): within ±1 point holds, a difference beyond
            # one point shown fails, a wide interval is not resolved.
            def level_verdict(hybrid, longer):
                for seed, (h, l) in enumerate(zip(hybrid, longer)):
                    record(res, "table3_tc_tm_rel", seed, h, 70.0, 100)
                    record(res, "table13_deit_nomask_300ep", seed, l, 70.0, 300)
                text = run("--results", res).stdout
                return next(l for l in text.splitlines() if l.startswith("| T13: without masking, a 3× schedule"))
            # d = +0.1, se = 0.0816, df = 4: [-0.13, +0.33].
            line = level_verdict((5.0, 5.1, 4.9), (5.1, 5.2, 5.0))
            self.assertIn("| +0.10 [-0.13, +0.33], p = 0.288 |", line)
            self.assertTrue(line.endswith("| holds |"), line)
            self.assertTrue(level_verdict((5.0, 5.1, 4.9), (7.0, 7.1, 6.9)).endswith("| fails |"))
            self.assertTrue(level_verdict((5.0, 5.1, 4.9), (4.0, 5.0, 6.0)).endswith("| not resolved |"))
            os.remove(os.path.join(res, "table13_deit_nomask_300ep", "seed0.json"))

            r = run("--rows")
            self.assertEqual(r.returncode, 0)
            self.assertTrue(r.stdout.startswith("table3_tc_tm_rel|"))
            self.assertIn("table13_deit_mask_300ep|", r.stdout)

            write(doc, "no markers\n")
            r = run("--results", res, "--doc", doc)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("no <!-- results:begin -->", r.stderr)
            write(os.path.join(res, "table3_tc", "seed9.json"), "{broken")
            r = run("--results", res)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("seed9.json", r.stderr)


if __name__ == "__main__":
    unittest.main()
