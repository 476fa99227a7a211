#!/usr/bin/python3
"""Python PyTorch reference of hybrid-distill's VisionTransformer (same layout and computation:
fused qkv Linear, explicit softmax attention, timm parameter names), used by `hybrid-distill
bench` to print the matching Python figure from the same run, with the same thread count.

    /usr/bin/python3 bench/vit_reference.py --config '{"img_size":28,...}' --batch 64 --threads 2
prints one JSON line: {"forward_ips": ..., "train_ips": ..., "torch": "..."}.
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    def __init__(self, dim, heads, qkv_bias):
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4)
        a = torch.softmax((q * self.hd ** -0.5) @ k.transpose(-2, -1), dim=-1)
        return self.proj((a @ v).transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim, hidden, act):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), act, nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["embed_dim"]
        self.norm1 = nn.LayerNorm(d, eps=c["ln_eps"])
        self.attn = Attention(d, c["num_heads"], c["qkv_bias"])
        self.norm2 = nn.LayerNorm(d, eps=c["ln_eps"])
        act = QuickGELU() if c["act"] == "quick_gelu" else nn.GELU()
        self.mlp = Mlp(d, int(d * c["mlp_ratio"]), act)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, c):
        super().__init__()
        p = c["patch_size"]
        self.proj = nn.Conv2d(c["in_chans"], c["embed_dim"], p, p, bias=c["patch_bias"])

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, n = c["embed_dim"], (c["img_size"] // c["patch_size"]) ** 2
        self.c = c
        self.patch_embed = PatchEmbed(c)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, d) * 0.02)
        self.norm_pre = nn.LayerNorm(d, eps=c["ln_eps"]) if c["norm_pre"] else nn.Identity()
        self.blocks = nn.Sequential(*[Block(c) for _ in range(c["depth"])])
        self.norm = nn.LayerNorm(d, eps=c["ln_eps"])
        self.head = nn.Linear(d, c["num_classes"]) if c["num_classes"] > 0 else nn.Identity()

    def forward_features(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.norm(self.blocks(self.norm_pre(x)))

    def forward(self, x):
        return self.head(self.forward_features(x)[:, 0])


def timed(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    a = ap.parse_args()
    bf16 = a.precision == "bf16"
    torch.set_num_threads(a.threads)
    c = json.loads(a.config)
    torch.manual_seed(0)
    m = VisionTransformer(c)
    x = torch.randn(a.batch, c["in_chans"], c["img_size"], c["img_size"])
    m.eval()

    def fwd():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            m(x)

    t_fwd = timed(fwd, a.warmup, a.iters)
    m.train()
    opt_params = list(m.parameters())

    def train():
        for p in opt_params:
            p.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = m(x)
        y.float().pow(2).mean().backward()

    t_train = timed(train, a.warmup, a.iters)
    print(json.dumps({"forward_ips": a.batch / t_fwd, "train_ips": a.batch / t_train,
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
