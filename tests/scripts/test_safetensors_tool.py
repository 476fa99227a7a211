#!/usr/bin/env python3
"""scripts/safetensors_tool.py on hand-made safetensors files: `extract` keeps the tensors under a
prefix (renamed, bytes unchanged, offsets rebuilt, dropped names left out), `annotate` adds
metadata and changes nothing else; bad files are errors naming the file."""
import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "safetensors_tool.py")


def make(path, tensors, metadata=None):
    """tensors: name -> (dtype, shape, bytes)."""
    header, blobs, off = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for k, (dtype, shape, blob) in tensors.items():
        header[k] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(blob)]}
        blobs.append(blob)
        off += len(blob)
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def parse(path):
    """name -> (dtype, shape, bytes), metadata, header length."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", None)
    out = {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in header.items()}
    ends = sorted(v["data_offsets"][1] for v in header.values())
    assert not ends or ends[-1] == len(data), "trailing or missing bytes"
    return out, meta, n


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True)


class SafetensorsTool(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.d = self.dir.name
        f32 = struct.pack("<4f", 1.0, -2.0, 3.5, 0.25)
        self.tensors = {
            "model.encoder.blocks.0.attn.qkv.weight": ("F32", [2, 2], f32),
            "model.encoder.cls_token": ("F32", [1, 1, 4], f32[::-1]),
            "model.encoder.mask_token": ("F32", [1, 1, 4], b"\0" * 16),
            "model.encoder.decoder_embed.weight": ("BF16", [2], b"\1\2\3\4"),
            "model.head.weight": ("F32", [1], b"\5\6\7\10"),
            "optim.state.0": ("F32", [1], b"\11\12\13\14"),
        }
        make(f"{self.d}/ckpt.safetensors", self.tensors, {"step": "100"})

    def tearDown(self):
        self.dir.cleanup()

    def test_extract(self):
        r = run("extract", f"{self.d}/ckpt.safetensors", "model.encoder.", f"{self.d}/enc.safetensors",
                "--drop", "decoder", "--drop", "mask_token")
        self.assertEqual(r.returncode, 0, r.stderr)
        got, meta, n = parse(f"{self.d}/enc.safetensors")
        self.assertEqual(sorted(got), ["blocks.0.attn.qkv.weight", "cls_token"])
        for k in got:
            self.assertEqual(got[k], self.tensors["model.encoder." + k])
        self.assertIsNone(meta)
        self.assertEqual((8 + n) % 8, 0, "tensor data 8-byte aligned")
        self.assertFalse(os.path.exists(f"{self.d}/enc.safetensors.tmp"))

    def test_annotate(self):
        r = run("annotate", f"{self.d}/ckpt.safetensors", f"{self.d}/out.safetensors",
                "hybrid_distill.command=hybrid-distill train -a x --lr 1e-3", "hybrid_distill.knn_top1=77.55", "step=7")
        self.assertEqual(r.returncode, 0, r.stderr)
        got, meta, _ = parse(f"{self.d}/out.safetensors")
        self.assertEqual(got, self.tensors)
        self.assertEqual(meta, {"step": "7", "hybrid_distill.command": "hybrid-distill train -a x --lr 1e-3",
                                "hybrid_distill.knn_top1": "77.55"})

    def test_bad_input(self):
        with open(f"{self.d}/short.safetensors", "wb") as f:
            f.write(b"\1\2")
        r = run("annotate", f"{self.d}/short.safetensors", f"{self.d}/x.safetensors", "a=b")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("short.safetensors: too short", r.stderr)
        with open(f"{self.d}/long.safetensors", "wb") as f:
            f.write(struct.pack("<Q", 1 << 40) + b"{}")
        r = run("extract", f"{self.d}/long.safetensors", "model.", f"{self.d}/x.safetensors")
        self.assertIn("long.safetensors: header length", r.stderr)
        make(f"{self.d}/offs.safetensors", {"a": ("F32", [1], b"1234")})
        with open(f"{self.d}/offs.safetensors", "r+b") as f:
            f.truncate(os.path.getsize(f"{self.d}/offs.safetensors") - 2)
        r = run("extract", f"{self.d}/offs.safetensors", "", f"{self.d}/x.safetensors")
        self.assertIn("offs.safetensors: tensor 'a' has bad data_offsets", r.stderr)
        r = run("extract", f"{self.d}/ckpt.safetensors", "nothing.", f"{self.d}/x.safetensors")
        self.assertIn("no tensor under the prefix 'nothing.'", r.stderr)
        r = run("annotate", f"{self.d}/ckpt.safetensors", f"{self.d}/x.safetensors", "novalue")
        self.assertIn("'novalue' is not KEY=VALUE", r.stderr)
        self.assertFalse(os.path.exists(f"{self.d}/x.safetensors"))


if __name__ == "__main__":
    unittest.main()
