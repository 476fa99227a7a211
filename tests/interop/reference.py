#!/usr/bin/python3
"""Independent Python references for the interoperability tests (tests/model/test_interop.cpp).

Run with Debian's python3 (python3-torch, python3-torchvision); exit code 77 when a package is
missing. Safetensors are read and written by hand (tests/golden/safetensors_min.py).

  reference.py forward --impl torchvision|openai_clip --config JSON --weights W --images X --out O [--pth P]
      Builds the reference from timm-named weights W (mapped here to the reference's own names),
      runs it on images X and writes `features` [B,N,D] (after the final norm) and `logits`
      (when the model has a head) to O.
        torchvision:  torchvision's VisionTransformer (nn.MultiheadAttention, GELU, LayerNorm eps
                      1e-6): the MAE, DeiT and DINO configurations.
        openai_clip:  a module built as OpenAI CLIP's VisionTransformer (conv1 without bias,
                      class_embedding, positional_embedding, ln_pre, residual blocks on
                      nn.MultiheadAttention with QuickGELU, ln_post, proj). --pth also saves its
                      state dict, with OpenAI's names under `visual.` next to text-tower
                      stand-ins, as torch.save(dict).
  reference.py save --weights W --out P [--layout timm|openai_clip|torchvision] [--prefix S]
                    [--wrap KEY] [--ordered]
      Re-saves timm-named weights as a torch.save file: in another naming convention, with a key
      prefix, inside {KEY: ...}, and as a collections.OrderedDict with --ordered.
  reference.py resample --input I --out O --cases H,W,PREFIX,ANTIALIAS ...
      timm's resample_abs_pos_embed on I["pos.K"] for the K-th case, written as O["out.K"]
      (F.interpolate, bicubic, align_corners=False, antialias as given).
"""
import argparse
import collections
import json
import math
import os
import sys

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    sys.exit(77)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "golden"))
import safetensors_min as st  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Name mappings from timm, written independently of the C++ rules.
def torchvision_name(k):
    if k.startswith("blocks."):
        _, i, rest = k.split(".", 2)
        rest = {"norm1.weight": "ln_1.weight", "norm1.bias": "ln_1.bias",
                "norm2.weight": "ln_2.weight", "norm2.bias": "ln_2.bias",
                "attn.qkv.weight": "self_attention.in_proj_weight",
                "attn.qkv.bias": "self_attention.in_proj_bias",
                "attn.proj.weight": "self_attention.out_proj.weight",
                "attn.proj.bias": "self_attention.out_proj.bias",
                "mlp.fc1.weight": "mlp.0.weight", "mlp.fc1.bias": "mlp.0.bias",
                "mlp.fc2.weight": "mlp.3.weight", "mlp.fc2.bias": "mlp.3.bias"}[rest]
        return f"encoder.layers.encoder_layer_{i}.{rest}"
    return {"patch_embed.proj.weight": "conv_proj.weight", "patch_embed.proj.bias": "conv_proj.bias",
            "cls_token": "class_token", "pos_embed": "encoder.pos_embedding",
            "norm.weight": "encoder.ln.weight", "norm.bias": "encoder.ln.bias",
            "head.weight": "heads.head.weight", "head.bias": "heads.head.bias"}[k]


def openai_state(w):
    out = {}
    for k, v in w.items():
        if k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            rest = (rest.replace("norm1.", "ln_1.").replace("norm2.", "ln_2.")
                    .replace("attn.qkv.weight", "attn.in_proj_weight").replace("attn.qkv.bias", "attn.in_proj_bias")
                    .replace("attn.proj.", "attn.out_proj.").replace("mlp.fc1.", "mlp.c_fc.")
                    .replace("mlp.fc2.", "mlp.c_proj."))
            out[f"transformer.resblocks.{i}.{rest}"] = v
        elif k == "patch_embed.proj.weight":
            out["conv1.weight"] = v
        elif k == "cls_token":
            out["class_embedding"] = v.reshape(-1)
        elif k == "pos_embed":
            out["positional_embedding"] = v[0]
        elif k.startswith("norm_pre."):
            out["ln_pre." + k.split(".", 1)[1]] = v
        elif k.startswith("norm."):
            out["ln_post." + k.split(".", 1)[1]] = v
        elif k == "head.weight":
            out["proj"] = v.t().contiguous()
        elif k == "head.bias":
            assert not v.any(), "OpenAI CLIP's proj has no bias"
        else:
            raise KeyError(k)
    return out


# ---------------------------------------------------------------------------------------------
class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d, heads, eps, hidden):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads)
        self.ln_1 = nn.LayerNorm(d, eps=eps)
        self.mlp = nn.Sequential(collections.OrderedDict(
            [("c_fc", nn.Linear(d, hidden)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(hidden, d))]))
        self.ln_2 = nn.LayerNorm(d, eps=eps)

    def forward(self, x):  # [N, B, D], sequence first as in OpenAI's code
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, d, layers, heads, eps, hidden):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(d, heads, eps, hidden) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class OpenAIVisionTransformer(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, p = c["embed_dim"], c["patch_size"]
        grid = c["img_size"] // p
        self.width = d
        self.conv1 = nn.Conv2d(c["in_chans"], d, p, p, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(d))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, d))
        self.ln_pre = nn.LayerNorm(d, eps=c["ln_eps"])
        self.transformer = Transformer(d, c["depth"], c["num_heads"], c["ln_eps"], int(d * c["mlp_ratio"]))
        self.ln_post = nn.LayerNorm(d, eps=c["ln_eps"])
        self.proj = nn.Parameter(torch.zeros(d, c["num_classes"]))

    def forward(self, x):
        x = self.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x).permute(1, 0, 2)
        x = self.transformer(x).permute(1, 0, 2)
        # OpenAI applies ln_post to the class token only; LayerNorm is per token, so all tokens
        # normalised give the same class token and the features the C++ model returns.
        feats = self.ln_post(x)
        return feats, feats[:, 0, :] @ self.proj


def forward(a):
    c = json.loads(a.config)
    w, _ = st.load(a.weights)
    x, _ = st.load(a.images)
    x = x["images"]
    torch.manual_seed(0)
    rec = {}
    if a.impl == "torchvision":
        try:
            from torchvision.models.vision_transformer import VisionTransformer
        except ImportError:
            sys.exit(77)
        assert c["act"] == "gelu" and not c["norm_pre"] and c["patch_bias"] and math.isclose(c["ln_eps"], 1e-6)
        ncls = c["num_classes"]
        m = VisionTransformer(image_size=c["img_size"], patch_size=c["patch_size"], num_layers=c["depth"],
                              num_heads=c["num_heads"], hidden_dim=c["embed_dim"],
                              mlp_dim=int(c["embed_dim"] * c["mlp_ratio"]), num_classes=max(ncls, 1)).eval()
        missing, unexpected = m.load_state_dict({torchvision_name(k): v for k, v in w.items()}, strict=False)
        assert not unexpected, unexpected
        assert all(k.startswith("heads.") for k in missing) and (ncls == 0 or not missing), missing
        with torch.no_grad():
            t = m._process_input(x)
            t = torch.cat([m.class_token.expand(t.shape[0], -1, -1), t], dim=1)
            feats = m.encoder(t)
            rec["features"] = feats
            if ncls > 0:
                rec["logits"] = m.heads(feats[:, 0])
    else:
        assert c["act"] == "quick_gelu" and c["norm_pre"] and not c["patch_bias"]
        m = OpenAIVisionTransformer(c).eval()
        sd = openai_state(w)
        m.load_state_dict(sd, strict=True)
        with torch.no_grad():
            rec["features"], rec["logits"] = m(x)
        if a.pth:
            # A whole CLIP model's state dict: the image tower under `visual.`, text-tower keys
            # (which reuse names like positional_embedding and transformer.*) beside it.
            full = {"visual." + k: v for k, v in m.state_dict().items()}
            full["positional_embedding"] = torch.randn(77, 512)
            full["transformer.resblocks.0.ln_1.weight"] = torch.ones(512)
            full["token_embedding.weight"] = torch.randn(10, 512)
            full["logit_scale"] = torch.tensor(4.6052)
            torch.save(full, a.pth)
    st.save(a.out, {k: v.contiguous() for k, v in rec.items()})


def save(a):
    w, _ = st.load(a.weights)
    if a.layout == "torchvision":
        w = {torchvision_name(k): v for k, v in w.items()}
    elif a.layout == "openai_clip":
        w = openai_state(w)
    w = {a.prefix + k: v for k, v in w.items()}
    sd = collections.OrderedDict(w) if a.ordered else dict(w)
    torch.save({a.wrap: sd, "epoch": 3} if a.wrap else sd, a.out)


def resample(a):
    t, _ = st.load(a.input)
    out = {}
    for i, case in enumerate(a.cases):
        h, w, n, aa = (int(v) for v in case.split(","))
        pos = t[f"pos.{i}"]
        prefix, grid = pos[:, :n], pos[:, n:]
        hw = int(math.sqrt(grid.shape[1]))
        g = grid.reshape(1, hw, hw, -1).permute(0, 3, 1, 2).float()
        g = F.interpolate(g, size=(h, w), mode="bicubic", align_corners=False, antialias=bool(aa))
        g = g.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])
        out[f"out.{i}"] = torch.cat([prefix, g], dim=1).contiguous()
    st.save(a.out, out)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("forward")
    f.add_argument("--impl", choices=["torchvision", "openai_clip"], required=True)
    f.add_argument("--config", required=True)
    f.add_argument("--weights", required=True)
    f.add_argument("--images", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--pth")
    s = sub.add_parser("save")
    s.add_argument("--weights", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--layout", choices=["timm", "openai_clip", "torchvision"], default="timm")
    s.add_argument("--prefix", default="")
    s.add_argument("--wrap", default="")
    s.add_argument("--ordered", action="store_true")
    r = sub.add_parser("resample")
    r.add_argument("--input", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--cases", nargs="+", required=True, help="H,W,PREFIX,ANTIALIAS for pos.0, pos.1, ...")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("HD_PY_THREADS", "2")))
    {"forward": forward, "save": save, "resample": resample}[a.cmd](a)


if __name__ == "__main__":
    main()
