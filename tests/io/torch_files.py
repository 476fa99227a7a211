#!/usr/bin/python3
"""Writes the torch.save / torch.jit.save files of the torch-file reader's tests
(tests/io/test_torch_file.cpp) into OUT, each NAME.pth (or .pt) with NAME.safetensors next to it
holding the tensors the reader must find in it, under the names it must give them.

  torch_files.py OUT

Run with Debian's python3 (python3-torch); exit code 77 when torch is missing. numpy scalars
are added where numpy is present.
"""
import argparse
import collections
import io
import json
import os
import pickle
import struct
import sys
import zipfile

try:
    import torch
    import torch.nn as nn
except ImportError:
    sys.exit(77)

_ST = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
       torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
       torch.bool: "BOOL"}


def raw_bytes(t):
    t = t.detach().contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def save_safetensors(path, tensors):
    """The expected tensors, written independently of the C++ writer."""
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        data = raw_bytes(t)
        header[name] = {"dtype": _ST[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.norm = nn.LayerNorm(6)
        self.fc2 = nn.Linear(6, 3, bias=False)
        self.register_buffer("steps", torch.tensor(7))


def dtypes():
    g = torch.Generator().manual_seed(1)
    return {"f32": torch.randn(3, 4, generator=g), "f16": torch.randn(5, generator=g).half(),
            "bf16": torch.randn(2, 3, generator=g).bfloat16(), "f64": torch.randn(4, generator=g).double(),
            "i64": torch.tensor([-(2 ** 40), 0, 2 ** 40]), "i32": torch.tensor([-5, 6], dtype=torch.int32),
            "i16": torch.tensor([-300, 300], dtype=torch.int16), "i8": torch.tensor([-7, 7], dtype=torch.int8),
            "u8": torch.tensor([0, 255], dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
            "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3)}


def views():
    base = torch.arange(24, dtype=torch.float32)
    grid = base.view(4, 6)
    return {"base": base, "offset": base[5:11], "transposed": grid.t(), "strided": grid[1:, ::2],
            "reshaped": grid, "expanded": base[:1].expand(3, 4)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(0)

    def out(name):
        return os.path.join(a.out, name)

    def case(name, obj, expected, **kw):
        torch.save(obj, out(name + ".pth"), **kw)
        save_safetensors(out(name + ".safetensors"), expected)

    m = Small()
    sd = m.state_dict()  # an OrderedDict with a _metadata attribute, as published files hold
    plain = {k: v.clone() for k, v in sd.items()}
    case("ordered", sd, plain)
    case("legacy_ordered", sd, plain, _use_new_zipfile_serialization=False)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    extras = {"model": m.state_dict(), "optimizer": opt.state_dict(), "epoch": 3,
              "args": argparse.Namespace(lr=0.1, arch="vit"), "scaler": {"scale": 65536.0}}
    try:
        import numpy
        extras["best_acc"] = numpy.float64(81.5)
        extras["step"] = numpy.int64(1000)
    except ImportError:
        pass
    case("model_ordered_extras", extras, {k: v.clone() for k, v in m.state_dict().items()})
    case("model_dict_alone", {"model": dict(plain)}, plain)
    case("state_dict", {"state_dict": {"module." + k: v for k, v in plain.items()}},
         {"module." + k: v for k, v in plain.items()})
    case("dtypes", dtypes(), dtypes())
    case("views", views(), views())
    case("legacy", {**views(), **dtypes()}, {**views(), **dtypes()}, _use_new_zipfile_serialization=False)
    params = {"w": nn.Parameter(torch.randn(2, 2)), "b": nn.Parameter(torch.ones(3))}
    case("parameters", params, {k: v.detach() for k, v in params.items()})

    # Big-endian: torch.save writes the host's order; the archive is rewritten as a big-endian
    # host would have written it (byteorder record "big", every element byte-swapped).
    src = out("dtypes.pth")
    with zipfile.ZipFile(src) as z:
        pkl_name = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        prefix = pkl_name[: -len("data.pkl")]
        sizes = {}

        class Rec(pickle.Unpickler):
            def persistent_load(self, pid):
                sizes[pid[2]] = pid[1](0).element_size()

            def find_class(self, mod, name):
                if name == "_rebuild_tensor_v2":
                    return lambda *args: None
                return super().find_class(mod, name)

        Rec(io.BytesIO(z.read(pkl_name))).load()
        with zipfile.ZipFile(out("big_endian.pth"), "w", zipfile.ZIP_STORED) as w:
            for n in z.namelist():
                data = z.read(n)
                if n.startswith(prefix + "data/"):
                    e = sizes[n[len(prefix + "data/"):]]
                    data = b"".join(data[i:i + e][::-1] for i in range(0, len(data), e))
                if n != prefix + "byteorder":  # written by torch >= 2.1 only
                    w.writestr(n, data)
            w.writestr(prefix + "byteorder", b"big")
    save_safetensors(out("big_endian.safetensors"), dtypes())

    # Refused: no dict at the top; no tensors anywhere.
    torch.save(argparse.Namespace(lr=0.1), out("namespace.pth"))
    torch.save({"epoch": 3, "args": argparse.Namespace(lr=0.1)}, out("no_tensors.pth"))

    # A TorchScript archive as OpenAI's CLIP .pt files are (torch.jit.save of a traced model):
    # the image tower under `visual`, text-tower stand-ins beside it.
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "interop"))
    import reference  # noqa: E402

    class Clip(nn.Module):
        def __init__(self):
            super().__init__()
            cfg = {"embed_dim": 16, "patch_size": 4, "img_size": 8, "in_chans": 3, "ln_eps": 1e-5, "depth": 2,
                   "num_heads": 2, "mlp_ratio": 4.0, "num_classes": 8}
            self.visual = reference.OpenAIVisionTransformer(cfg)
            self.token_embedding = nn.Embedding(10, 8)
            self.positional_embedding = nn.Parameter(torch.randn(5, 8))
            self.logit_scale = nn.Parameter(torch.tensor(4.6052))

        def forward(self, x):
            return self.visual(x)[1] * self.logit_scale.exp()

    clip = Clip().eval()
    with torch.no_grad():
        for p in clip.parameters():
            p.copy_(torch.randn_like(p))
    traced = torch.jit.trace(clip, torch.randn(1, 3, 8, 8), check_trace=False)
    torch.jit.save(traced, out("clip_script.pt"))
    save_safetensors(out("clip_script.safetensors"), {k: v.clone() for k, v in clip.state_dict().items()})
    scripted = torch.jit.script(Small())
    torch.jit.save(scripted, out("small_script.pt"))
    save_safetensors(out("small_script.safetensors"), {k: v.clone() for k, v in scripted.state_dict().items()})


if __name__ == "__main__":
    main()
