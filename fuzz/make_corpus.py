#!/usr/bin/env python3
"""Writes the seed corpus fuzz/corpus/<parser>/ (tiny valid and invalid files; stdlib only).

JPEG seeds come from the CPython test suite's 16x16 image when one is found; a JPEG is
otherwise derived by the fuzzer from the truncated-header seed."""
import glob, gzip, json, os, struct, zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def put(parser, name, data):
    d = os.path.join(HERE, "corpus", parser)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- safetensors
def st(tensors, meta=None, pad=True):
    header, blob = {}, b""
    if meta:
        header["__metadata__"] = meta
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + blob


f32 = struct.pack("<4f", 1.0, -2.0, 0.5, 3.0)
put("safetensors", "f32_meta", st([("w", "F32", [2, 2], f32)], {"hybrid_distill.vit_config": "{}", "k": "v"}))
put("safetensors", "dtypes", st([("a", "F16", [2], b"\x00\x3c\x00\xc0"), ("b", "BF16", [1], b"\x80\x3f"),
                                 ("c", "I64", [1], struct.pack("<q", -5)), ("d", "BOOL", [3], b"\x00\x01\x01"),
                                 ("e", "U8", [0, 4], b""), ("f", "I8", [], b"\x7f")]))
put("safetensors", "empty", st([]))
put("safetensors", "bad_offsets", st([("w", "F32", [2, 2], f32)])[:-3])
put("safetensors", "bad_json", struct.pack("<Q", 12) + b'{"a":{"dtyp' + b"\x00")
put("safetensors", "huge_len", struct.pack("<Q", 1 << 60) + b"{}")

# --- idx (first byte: 1 = the harness gzips the rest, 0 = stored as it is)
def idx(magic, dims, payload):
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + bytes(payload)


images = idx(0x803, [2, 3, 3], range(18))
labels = idx(0x801, [4], [0, 1, 9, 3])
put("idx", "images_plain", b"\x00" + images)
put("idx", "labels_plain", b"\x00" + labels)
put("idx", "images_gz", b"\x01" + images)
put("idx", "labels_gzfile", b"\x00" + gzip.compress(labels, mtime=0))
put("idx", "truncated", b"\x00" + images[:-4])
put("idx", "bad_magic", b"\x00" + idx(0x0d03, [1, 1, 1], [0]))

# --- images
def png(width, height, color_type, bit_depth, rows, interlace=0):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, interlace)
    raw = b"".join(b"\x00" + r for r in rows)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


put("image", "gray.png", png(3, 2, 0, 8, [b"\x00\x80\xff", b"\x10\x20\x30"]))
put("image", "rgb.png", png(2, 2, 2, 8, [bytes(range(6)), bytes(range(6, 12))]))
put("image", "rgba.png", png(2, 1, 6, 8, [bytes(range(8))]))
put("image", "gray16.png", png(2, 1, 0, 16, [b"\x12\x34\xff\xff"]))
put("image", "truncated.png", png(4, 4, 2, 8, [bytes(12)] * 4)[:40])
put("image", "not_an_image", b"GIF89a\x01\x00\x01\x00")
put("image", "jpeg_header_only", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9")
for cand in sorted(glob.glob("/root/.pyenv/versions/*/lib/python3*/test/imghdrdata/python.jpg") +
                   glob.glob("/usr/lib/python3*/test/imghdrdata/python.jpg")):
    with open(cand, "rb") as f:
        put("image", "python16.jpg", f.read())
    break
# Small JPEGs of the layouts decode_transform's region decoding handles differently (4:2:0 and
# 4:4:4 colour, gray, progressive), when PIL is there (python3-pil, with python3-torchvision).
try:
    import io
    from PIL import Image

    def jpeg(mode, size, **kw):
        img = Image.new(mode, size)
        img.putdata([(x * 7 + y * 3) % 256 if mode == "L" else ((x * 7) % 256, (y * 5) % 256, (x * y) % 256)
                     for y in range(size[1]) for x in range(size[0])])
        b = io.BytesIO()
        img.save(b, "JPEG", quality=80, **kw)
        return b.getvalue()

    put("image", "rgb420_37x29.jpg", jpeg("RGB", (37, 29)))
    put("image", "rgb444_24x16.jpg", jpeg("RGB", (24, 16), subsampling=0))
    put("image", "gray_19x23.jpg", jpeg("L", (19, 23)))
    put("image", "progressive_40x30.jpg", jpeg("RGB", (40, 30), progressive=True))
except ImportError:
    pass

# --- recipes (teacher checkpoints t.safetensors / u.safetensors are made by the harness)
base = """name: seed
student: {arch: vit_mini_patch4_28}
teachers:
  - name: mim
    checkpoint: t.safetensors
    targets: [{kind: relation, layers: [3, 4]}]
  - name: sup
    checkpoint: t.safetensors
    targets: [{kind: features, norm: layernorm}]
masking: {strategy: progressive, teacher: mim, layers: [0, 2], drop_ratio: 0.3}
loss: {type: smooth_l1, beta: 2.0}
optim: {lr: 6.0e-4, base_batch: 256, min_lr: 1.0e-6, weight_decay: 0.05, betas: [0.9, 0.999], eps: 1.0e-8, warmup_epochs: 1, clip_grad: 3.0}
data: {dataset: fashion-mnist, split: train, augment: true, scale: [0.2, 1.0], hflip: 0.5, workers: 1}
train: {epochs: 1, max_steps: 4, batch: 16, seed: 3, log_every: 2, checkpoint_every: 2}
"""
put("recipe", "hybrid.yaml", base.encode())
put("recipe", "overrides.yaml", (base + "#--set\ntrain.epochs=3\nteachers.mim.checkpoint=u.safetensors\nteachers.0.targets.0.head_mapping=average\n").encode())
put("recipe", "decoders.yaml", b"""student: {config: {img_size: 28, patch_size: 4, in_chans: 1, embed_dim: 64, depth: 2, num_heads: 4, mean: [0.5], std: [0.5]}}
teachers:
  - {name: a, checkpoint: u.safetensors, mean: [0.2], std: [0.3], targets: [{kind: block, layers: [2], student_layers: [1], decoder: attention, decoder_depth: 2}, {kind: msa, layers: [0], decoder: linear, weight: 0.5}]}
masking: {strategy: mask_tokens, drop_ratio: 0.4}
""")
put("recipe", "unknown_key.yaml", b"name: x\nstudent: {arch: vit_mini_patch4_28, depht: 3}\n")
put("recipe", "not_a_map.yaml", b"- a\n- [b, {c: d}]\n")

# --- tar (WebDataset shards)
import io as _io, tarfile


def tar(members, fmt=tarfile.USTAR_FORMAT):
    buf = _io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                t.addfile(info)
                continue
            info.size = len(data)
            t.addfile(info, _io.BytesIO(data))
    # Without the record padding to 10 KiB: seeds stay small.
    data = buf.getvalue()
    return data.rstrip(b"\0") + b"\0" * (-len(data.rstrip(b"\0")) % 512) + b"\0" * 1024


jpg = b"\xff\xd8\xff\xe0" + b"\0" * 12
png = b"\x89PNG\r\n\x1a\n" + b"\0" * 8
shard = tar([("a.jpg", jpg), ("a.cls", b"1"), ("b.png", png), ("b.cls", b"2\n"), ("c.json", b"{}")])
put("tar", "shard", shard)
put("tar", "pax_long_name", tar([("d/" + "p" * 120 + ".jpg", jpg), ("d/" + "p" * 120 + ".cls", b"0")], tarfile.PAX_FORMAT))
put("tar", "gnu_long_name", tar([("dir", None), ("g" * 110 + ".png", png), ("g" * 110 + ".cls", b"1")], tarfile.GNU_FORMAT))
put("tar", "truncated", shard[:512 + 10])
put("tar", "bad_label", tar([("a.jpg", jpg), ("a.cls", b"-7"), ("b.jpg", b"text"), ("b.cls", b"x")]))
put("tar", "bad_checksum", shard[:148] + b"9999999\0" + shard[156:])
