#!/usr/bin/env python3
"""Small edits of safetensors files without loading any framework, for scripts/train_teachers.sh.

    safetensors_tool.py extract SRC PREFIX DST [--drop NAME ...]
        DST holds the tensors of SRC whose names start with PREFIX, the prefix removed (a
        training checkpoint's model weights as a plain model file), except the names (after the
        prefix) that start with a --drop entry (e.g. "decoder", "mask_token"). No metadata.
    safetensors_tool.py annotate SRC DST KEY=VALUE ...
        DST is SRC with these entries added to (or replaced in) its __metadata__; tensors and
        every other entry unchanged.

DST is written next to itself and renamed into place. The format (an 8-byte little-endian
header length, a JSON header, the raw tensor bytes) is checked as far as these edits rely on
it; a bad file is an error naming it.
"""
import argparse
import json
import os
import struct
import sys


class FormatError(Exception):
    pass


def read(path):
    """(header dict, data bytes) of a safetensors file."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise FormatError(f"{path}: too short for a safetensors file")
        n = struct.unpack("<Q", head)[0]
        size = os.fstat(f.fileno()).st_size
        if n > size - 8:
            raise FormatError(f"{path}: header length {n} exceeds the file ({size} bytes)")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise FormatError(f"{path}: header is not JSON: {e}")
        if not isinstance(header, dict):
            raise FormatError(f"{path}: header is not a JSON object")
        data = f.read()
    for k, v in header.items():
        if k == "__metadata__":
            continue
        b, e = v.get("data_offsets", [None, None]) if isinstance(v, dict) else (None, None)
        if not (isinstance(b, int) and isinstance(e, int) and 0 <= b <= e <= len(data)):
            raise FormatError(f"{path}: tensor {k!r} has bad data_offsets")
    return header, data


def write(path, header, data):
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)  # the data starts 8-byte aligned
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)
    os.replace(tmp, path)


def extract(src, prefix, dst, drop):
    header, data = read(src)
    out, blobs, off = {}, [], 0
    for k, v in header.items():
        if k == "__metadata__" or not k.startswith(prefix):
            continue
        name = k[len(prefix):]
        if any(name.startswith(d) for d in drop):
            continue
        b, e = v["data_offsets"]
        out[name] = {"dtype": v["dtype"], "shape": v["shape"], "data_offsets": [off, off + e - b]}
        blobs.append(data[b:e])
        off += e - b
    if not out:
        raise FormatError(f"{src}: no tensor under the prefix {prefix!r}")
    write(dst, out, b"".join(blobs))


def annotate(src, dst, entries):
    header, data = read(src)
    meta = header.setdefault("__metadata__", {})
    for kv in entries:
        if "=" not in kv:
            raise FormatError(f"metadata entry {kv!r} is not KEY=VALUE")
        k, v = kv.split("=", 1)
        meta[k] = v
    write(dst, header, data)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract")
    e.add_argument("src")
    e.add_argument("prefix")
    e.add_argument("dst")
    e.add_argument("--drop", action="append", default=[])
    a = sub.add_parser("annotate")
    a.add_argument("src")
    a.add_argument("dst")
    a.add_argument("entries", nargs="+")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "extract":
            extract(args.src, args.prefix, args.dst, args.drop)
        else:
            annotate(args.src, args.dst, args.entries)
    except (OSError, FormatError) as err:
        print(f"safetensors_tool: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
