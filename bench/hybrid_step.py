#!/usr/bin/python3
"""Python PyTorch re-implementation of one hybrid-distillation step, for bench_distill.

The same computation as src/distill (hybrid.cpp, masking.cpp) and src/train/optim.cpp, written
independently against the paper's definitions:
  * teachers (frozen, eval, no grad) see the full image; the MIM teacher runs only up to its
    deepest tapped block;
  * progressive redundant token masking (Eq. 4): at the MIM teacher's block INPUTS x^i,
    i in {0, L/3, 2L/3}, among the kept patch tokens, L2-normalise, score by cosine with the
    normalised mean of the normalised kept tokens, drop the floor(n*0.3) most similar (stable
    ascending sort: ties keep the lower index), keep indices sorted; CLS always kept;
  * the student sees CLS + the kept patches (positional embeddings gathered to match);
  * relation targets R = Q.K^T (unscaled: the softmax input times sqrt(head_dim)) at teacher
    blocks L-3, L-2, gathered at kept rows AND columns including CLS, vs the student's own
    relations at the same blocks;
  * feature target: the supervised teacher's final normed tokens at CLS + kept patches, whitened
    by a LayerNorm without affine parameters (eps 1e-6), vs the student's final tokens through a
    Linear projection when the widths differ;
  * smooth L1 (beta 2) per term, mean over elements, summed with weight 1;
  * backward, global grad-norm clipping at 3.0, torch.optim.AdamW (no decay on 1-D tensors,
    pos_embed, cls_token).
Weights, images and initial projections are read from the safetensors files bench_distill
writes, so both sides start from identical tensors and the printed losses must agree.

    /usr/bin/python3 bench/hybrid_step.py --dir DIR --threads 2 --warmup 2 --iters 5
prints one JSON line with images/s and the first two losses of each step kind.
"""
import argparse
import json
import math
import struct
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from vit_reference import QuickGELU  # same activation as the plain ViT reference

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
          "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        buf = bytearray(data[base + b:base + e])
        t = torch.frombuffer(buf, dtype=DTYPES[info["dtype"]]) if e > b else torch.empty(0, dtype=DTYPES[info["dtype"]])
        out[name] = t.reshape(info["shape"]).clone()
    return out


class Attention(nn.Module):
    def __init__(self, dim, heads, qkv_bias):
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.scale = self.hd ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, want_rel=False):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4).unbind(0)
        rel = (q * self.scale) @ k.transpose(-2, -1)  # softmax input
        out = torch.softmax(rel, dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(B, N, C)), (rel if want_rel else None)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["embed_dim"]
        self.norm1 = nn.LayerNorm(d, eps=c["ln_eps"])
        self.attn = Attention(d, c["num_heads"], c["qkv_bias"])
        self.norm2 = nn.LayerNorm(d, eps=c["ln_eps"])
        hidden = int(d * c["mlp_ratio"])
        self.mlp = nn.Sequential()
        self.mlp.fc1 = nn.Linear(d, hidden)
        self.mlp.act = QuickGELU() if c["act"] == "quick_gelu" else nn.GELU()
        self.mlp.fc2 = nn.Linear(hidden, d)

    def forward(self, x, want_rel=False):
        a, rel = self.attn(self.norm1(x), want_rel)
        x = x + a
        return x + self.mlp(self.norm2(x)), rel


class ViT(nn.Module):
    """Encoder only (no head), timm parameter names, optional kept-token subset and taps."""

    def __init__(self, c):
        super().__init__()
        assert c["class_token"] and not c["fc_norm"], "bench models have a CLS token and a final norm"
        self.c = c
        d, p = c["embed_dim"], c["patch_size"]
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(c["in_chans"], d, p, p, bias=c["patch_bias"])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, (c["img_size"] // p) ** 2 + 1, d))
        self.norm_pre = nn.LayerNorm(d, eps=c["ln_eps"]) if c["norm_pre"] else None
        self.blocks = nn.ModuleList([Block(c) for _ in range(c["depth"])])
        self.norm = nn.LayerNorm(d, eps=c["ln_eps"])

    def embed(self, images, keep=None):
        x = self.patch_embed.proj(images).flatten(2).transpose(1, 2)  # [B,P,D]
        B, _, D = x.shape
        pos = self.pos_embed[:, 1:]
        if keep is not None:
            idx = keep.unsqueeze(-1).expand(B, keep.shape[1], D)
            x = x.gather(1, idx) + pos.expand(B, -1, -1).gather(1, idx)
        else:
            x = x + pos
        x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1), x], 1)
        return self.norm_pre(x) if self.norm_pre is not None else x

    def forward_taps(self, images, keep=None, block_inputs=(), relations=(), features=True):
        last = len(self.blocks) - 1 if features else max(list(block_inputs) + list(relations))
        x = self.embed(images, keep)
        ins, rels = {}, {}
        for i in range(last + 1):
            if i in block_inputs:
                ins[i] = x
            x, r = self.blocks[i](x, i in relations)
            if r is not None:
                rels[i] = r
        return (self.norm(x) if features else None), ins, rels


def load_vit(cfg, tensors, prefix=""):
    m = ViT(cfg)
    sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing, _ = m.load_state_dict(sd, strict=False)
    assert not missing, missing
    return m


def kept_after_step(n, ratio):
    return max(1, min(n, int(math.floor(n * (1.0 - ratio) + 1e-9))))


def redundant_step(tokens, keep, ratio):
    B, n = keep.shape
    kept = kept_after_step(n, ratio)
    if kept == n:
        return keep
    x = tokens.gather(1, keep.unsqueeze(-1).expand(B, n, tokens.shape[2])).float()
    xn = F.normalize(x, dim=-1)
    mean = F.normalize(xn.mean(1, keepdim=True), dim=-1)
    sim = (xn * mean).sum(-1)
    order = torch.sort(sim, dim=1, descending=False, stable=True)[1]
    return keep.gather(1, order[:, :kept]).sort(1)[0]


def gather_tokens(x, keep):  # CLS + kept patches
    B, _, D = x.shape
    return torch.cat([x[:, :1], x.gather(1, (keep + 1).unsqueeze(-1).expand(B, keep.shape[1], D))], 1)


def gather_relation(r, keep):  # kept rows and columns, CLS included
    B, H, N, _ = r.shape
    idx = torch.cat([torch.zeros(B, 1, dtype=keep.dtype, device=keep.device), keep + 1], 1)
    n = idx.shape[1]
    rows = r.gather(2, idx.view(B, 1, n, 1).expand(B, H, n, N))
    return rows.gather(3, idx.view(B, 1, 1, n).expand(B, H, n, n))


DEVICE = torch.device("cpu")


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


class Step:
    def __init__(self, spec, d, hybrid):
        self.spec, self.hybrid = spec, hybrid
        tc, sc = spec["teacher"], spec["student"]
        tr = load_safetensors(f"{d}/{'hybrid' if hybrid else 'single'}_trainable.safetensors")
        self.student = load_vit(sc, tr, "student.").to(DEVICE)
        self.student.train()
        self.proj = None
        if tc["embed_dim"] != sc["embed_dim"]:
            self.proj = nn.Linear(sc["embed_dim"], tc["embed_dim"]).to(DEVICE)
            self.proj.weight.data.copy_(tr["proj_sup_features_last.weight"])
            self.proj.bias.data.copy_(tr["proj_sup_features_last.bias"])
        self.bf16 = spec.get("precision") == "bf16"
        tdt = torch.bfloat16 if self.bf16 else torch.float32  # bf16 runs: teachers infer in bf16
        self.sup = load_vit(tc, load_safetensors(f"{d}/sup.safetensors")).eval().requires_grad_(False).to(DEVICE, tdt)
        self.mim = (load_vit(tc, load_safetensors(f"{d}/mim.safetensors")).eval().requires_grad_(False).to(DEVICE, tdt)
                    if hybrid else None)
        self.tdt = tdt
        self.mask_layers = spec["mask_layers"] if hybrid else spec["single_mask_layers"]
        params = [("student." + n, p) for n, p in self.student.named_parameters()]
        if self.proj is not None:
            params += [("proj." + n, p) for n, p in self.proj.named_parameters()]
        self.params = [p for _, p in params]
        decay = [p for n, p in params if p.dim() > 1 and not n.endswith(("pos_embed", "cls_token"))]
        no_decay = [p for n, p in params if not (p.dim() > 1 and not n.endswith(("pos_embed", "cls_token")))]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec["weight_decay"]},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=spec["lr"], betas=tuple(spec["betas"]), eps=spec["eps"])

    def teacher_input(self, images):
        sc, tc = self.spec["student"], self.spec["teacher"]
        if sc["mean"] == tc["mean"] and sc["std"] == tc["std"]:
            return images
        v = lambda a: torch.tensor(a, dtype=torch.float32, device=DEVICE).view(1, -1, 1, 1)
        return ((images * v(sc["std"]) + v(sc["mean"])) - v(tc["mean"])) / v(tc["std"])

    def loss(self, images):
        s = self.spec
        beta = s["beta"]
        rel_layers = s["relation_layers"]
        B = images.shape[0]
        P = (s["student"]["img_size"] // s["student"]["patch_size"]) ** 2
        with torch.no_grad(), torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=self.bf16):
            x = self.teacher_input(images).to(self.tdt)
            if self.hybrid:
                _, mim_in, mim_rel = self.mim.forward_taps(x, block_inputs=self.mask_layers, relations=rel_layers,
                                                           features=False)
                sup_feat, _, _ = self.sup.forward_taps(x)
                mask_in = mim_in
            else:
                sup_feat, mask_in, _ = self.sup.forward_taps(x, block_inputs=self.mask_layers)
            keep = torch.arange(P, device=DEVICE).unsqueeze(0).expand(B, P).contiguous()
            for l in self.mask_layers:
                keep = redundant_step(mask_in[l][:, 1:], keep, s["drop_ratio"])
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=self.bf16):
            feat, _, srel = self.student.forward_taps(images, keep, relations=rel_layers if self.hybrid else ())
            pred_feat = self.proj(feat) if self.proj is not None else feat
        total = None
        if self.hybrid:
            t_hd = s["teacher"]["embed_dim"] // s["teacher"]["num_heads"]
            s_hd = s["student"]["embed_dim"] // s["student"]["num_heads"]
            for l in rel_layers:
                target = gather_relation(mim_rel[l], keep).float() * math.sqrt(t_hd)
                pred = srel[l].float() * math.sqrt(s_hd)
                if s["head_average"]:  # differing head counts: compare head-averaged relations
                    target, pred = target.mean(1, keepdim=True), pred.mean(1, keepdim=True)
                term = F.smooth_l1_loss(pred, target.detach(), beta=beta)
                total = term if total is None else total + term
            total = total / len(rel_layers)  # Eq. 3: one concatenated target, the mean of the layers' terms
        target = F.layer_norm(gather_tokens(sup_feat, keep).float(), (sup_feat.shape[-1],), eps=1e-6)
        pred = pred_feat.float()
        term = F.smooth_l1_loss(pred, target.detach(), beta=beta)
        return term if total is None else total + term

    def step(self, images):
        loss = self.loss(images)
        lv = loss.item()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.spec["clip_grad"] > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.spec["clip_grad"])
        self.opt.step()
        sync()
        return lv


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    global DEVICE
    DEVICE = torch.device(a.device)
    torch.set_num_threads(a.threads)
    spec = json.load(open(f"{a.dir}/spec.json"))
    images = load_safetensors(f"{a.dir}/images.safetensors")["images"].to(DEVICE)
    B = images.shape[0]
    res = {"torch": torch.__version__, "threads": torch.get_num_threads()}

    # (a) student forward+backward, all tokens vs the kept count (positions do not matter for time).
    student = load_vit(spec["student"], load_safetensors(f"{a.dir}/student.safetensors")).to(DEVICE).train()
    P = (spec["student"]["img_size"] // spec["student"]["patch_size"]) ** 2
    keep = torch.rand(B, P).argsort(1)[:, :spec["kept"]].sort(1)[0].to(DEVICE)

    def fb(k):
        for p in student.parameters():
            p.grad = None
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            f, _, _ = student.forward_taps(images, k)
        f.float().pow(2).mean().backward()
        sync()

    # (b) full steps; the first two losses of each are the check against the C++ side.
    steps = {"hybrid": Step(spec, a.dir, True), "single": Step(spec, a.dir, False)}
    for kind, st in steps.items():
        res[f"{kind}_loss"] = [st.step(images), st.step(images)]
    kinds = {"student_all": lambda: fb(None), "student_keep": lambda: fb(keep),
             "single": lambda: steps["single"].step(images), "hybrid": lambda: steps["hybrid"].step(images)}
    for fn in kinds.values():
        for _ in range(a.warmup):
            fn()
    # Round-robin over the kinds, so that all see the same machine load (it may be shared).
    times = {k: [] for k in kinds}
    for _ in range(a.iters):
        for k, fn in kinds.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    res["times"] = times
    res["batch"] = B
    if DEVICE.type == "cuda":
        res["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(res))


if __name__ == "__main__":
    main()
