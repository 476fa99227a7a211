#!/usr/bin/env python3
"""scripts/stage.sh: a stage is keyed on its command line AND the content of the files it names
(the program itself, recipes, checkpoints, --set KEY=FILE values). A finished stage with the same
inputs is reused; a changed binary or input file runs it again, with a line naming the file."""
import os
import subprocess
import tempfile
import unittest

STAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "stage.sh")


class Stage(unittest.TestCase):
    def test_keys_on_binary_and_input_files(self):
        with tempfile.TemporaryDirectory() as d:
            binary, recipe, ckpt, runs = (os.path.join(d, n) for n in ("bin.sh", "r.yaml", "t.safetensors", "runs.log"))

            def put(path, text, mode=0o644):
                with open(path, "w") as f:
                    f.write(text)
                os.chmod(path, mode)

            # A stand-in program: records each run, writes a result into its --out folder.
            put(binary, f'#!/bin/bash\necho run >> {runs}\nwhile (($#)); do [ "$1" = --out ] && echo ok > "$2/result"; '
                        'shift; done\n', 0o755)
            put(recipe, "name: a\n")
            put(ckpt, "weights 1")

            def stage():
                script = (f'set -euo pipefail; OUT={d}/out START=$SECONDS; source {STAGE}; '
                          f'stage row/distill 0 {binary} distill -r {recipe} --set teachers.mae.checkpoint={ckpt}; '
                          'echo "STAGE_DIR=$STAGE_DIR"')
                r = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
                self.assertEqual(r.returncode, 0, r.stderr)
                return r.stdout

            def read(path):
                with open(path) as f:
                    return f.read()

            def count():
                with open(runs) as f:
                    return len(f.read().split())

            out = stage()
            self.assertEqual(count(), 1)
            first = out.split("STAGE_DIR=")[1].strip()
            self.assertTrue(os.path.isfile(os.path.join(first, "result")))
            listed = read(os.path.join(first, ".inputs"))
            for path in (binary, recipe, ckpt):
                self.assertIn(path, listed)

            out = stage()  # same command, same files: reused
            self.assertEqual(count(), 1)
            self.assertIn("reusing", out)

            put(recipe, "name: b\n")  # same path, new content
            out = stage()
            self.assertEqual(count(), 2)
            self.assertIn("inputs changed since distill-", out)
            self.assertIn(f"({recipe}); running again", out)
            self.assertNotEqual(out.split("STAGE_DIR=")[1].strip(), first)

            put(ckpt, "weights 2")  # a checkpoint given as --set KEY=FILE
            self.assertIn(f"({ckpt})", stage())
            self.assertEqual(count(), 3)

            put(binary, read(binary) + "# rebuilt\n", 0o755)  # a new binary
            self.assertIn(f"({binary})", stage())
            self.assertEqual(count(), 4)
            self.assertIn("reusing", stage())
            self.assertEqual(count(), 4)

            put(recipe, "name: a\n")  # back to the first inputs: the first run is reused
            put(ckpt, "weights 1")
            put(binary, read(binary).replace("# rebuilt\n", ""), 0o755)
            out = stage()
            self.assertIn("reusing", out)
            self.assertEqual(out.split("STAGE_DIR=")[1].strip(), first)
            self.assertEqual(count(), 4)


if __name__ == "__main__":
    unittest.main()
