#!/usr/bin/python3
"""Regenerates tests/data/golden/vit_golden_{weights,io}.safetensors.

An independent reference for the C++ VisionTransformer: torchvision's VisionTransformer
(nn.MultiheadAttention, its own MLP and encoder code) with random weights, mapped to timm
parameter names. Records, for a fixed input batch, the logits, the final-norm features, every
block output, every attention output (MSA), attention probabilities (from nn.MultiheadAttention
itself) and relations Q·Kᵀ/sqrt(d) computed by hand from in_proj.

Run with Debian's python3 (python3-torch, python3-torchvision):
    /usr/bin/python3 tests/golden/make_vit_golden.py
"""
import json
import os
import sys

import torch
from torchvision.models.vision_transformer import VisionTransformer

sys.path.insert(0, os.path.dirname(__file__))
import safetensors_min as st  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "data", "golden")
IMG, PATCH, DEPTH, HEADS, DIM, MLP, CLASSES, BATCH = 32, 8, 3, 4, 64, 128, 10, 2

torch.manual_seed(1234)
m = VisionTransformer(IMG, PATCH, DEPTH, HEADS, DIM, MLP, num_classes=CLASSES).eval()
with torch.no_grad():
    for name, p in m.named_parameters():
        # Non-trivial values everywhere (LayerNorm scales too) so that every weight matters.
        p.copy_(torch.randn_like(p) * (0.5 if p.dim() == 1 else 0.08) + (1.0 if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "encoder.ln.weight" else 0.0))


def timm_name(k):
    k = k.replace("conv_proj.", "patch_embed.proj.")
    k = k.replace("class_token", "cls_token").replace("encoder.pos_embedding", "pos_embed")
    k = k.replace("encoder.ln.", "norm.").replace("heads.head.", "head.")
    if k.startswith("encoder.layers.encoder_layer_"):
        rest = k[len("encoder.layers.encoder_layer_"):]
        i, sub = rest.split(".", 1)
        sub = (sub.replace("ln_1.", "norm1.").replace("ln_2.", "norm2.")
               .replace("self_attention.in_proj_weight", "attn.qkv.weight")
               .replace("self_attention.in_proj_bias", "attn.qkv.bias")
               .replace("self_attention.out_proj.", "attn.proj.")
               .replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2."))
        k = f"blocks.{i}.{sub}"
    return k


weights = {timm_name(k): v for k, v in m.state_dict().items()}
config = {"name": "golden_tv", "img_size": IMG, "patch_size": PATCH, "in_chans": 3, "embed_dim": DIM,
          "depth": DEPTH, "num_heads": HEADS, "mlp_ratio": MLP / DIM, "num_classes": CLASSES,
          "ln_eps": 1e-6, "act": "gelu"}
os.makedirs(OUT, exist_ok=True)
st.save(os.path.join(OUT, "vit_golden_weights.safetensors"), weights,
        {"hybrid_distill.vit_config": json.dumps(config)})

x = torch.randn(BATCH, 3, IMG, IMG)
rec = {"images": x}
hd = DIM // HEADS
hooks = []
for i, layer in enumerate(m.encoder.layers):
    def block_hook(mod, inp, out, i=i):
        rec[f"block.{i}"] = out.detach().clone()
    def ln1_hook(mod, inp, out, i=i, layer=layer):
        y = out.detach()
        sa = layer.self_attention
        o, w = sa(y, y, y, need_weights=True, average_attn_weights=False)
        rec[f"msa.{i}"] = o.detach().clone()
        rec[f"attn.{i}"] = w.detach().clone()
        qkv = y @ sa.in_proj_weight.T + sa.in_proj_bias
        q, k, _ = qkv.split(DIM, dim=-1)
        q = q.reshape(BATCH, -1, HEADS, hd).transpose(1, 2)
        k = k.reshape(BATCH, -1, HEADS, hd).transpose(1, 2)
        rec[f"relation.{i}"] = (q @ k.transpose(-2, -1)) / hd ** 0.5
    hooks.append(layer.register_forward_hook(block_hook))
    hooks.append(layer.ln_1.register_forward_hook(ln1_hook))
hooks.append(m.encoder.register_forward_hook(lambda mod, inp, out: rec.__setitem__("features", out.detach().clone())))
with torch.no_grad():
    rec["logits"] = m(x)
for h in hooks:
    h.remove()

# Forward on a subset of patch tokens (different per image, in shuffled order): embed every
# patch, add its positional embedding, keep CLS + the chosen patches, run the encoder layers.
K = 7
keep = torch.stack([torch.randperm(m.seq_length - 1)[:K] for _ in range(BATCH)])
with torch.no_grad():
    t = m._process_input(x)
    t = torch.cat([m.class_token.expand(BATCH, -1, -1), t], dim=1) + m.encoder.pos_embedding
    t = torch.cat([t[:, :1], torch.stack([t[b, 1 + keep[b]] for b in range(BATCH)])], dim=1)
    for layer in m.encoder.layers:
        t = layer(t)
    rec["subset.keep"] = keep
    rec["subset.features"] = m.encoder.ln(t)
st.save(os.path.join(OUT, "vit_golden_io.safetensors"), rec,
        {"source": "torchvision %s VisionTransformer, torch %s" % (__import__("torchvision").__version__, torch.__version__)})
print("wrote", sorted(rec))
