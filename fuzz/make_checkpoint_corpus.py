#!/usr/bin/env python3
"""Writes the seed corpus fuzz/corpus/checkpoint/: small torch.save files of the shapes
published checkpoints come in (needs python3-torch; run with /usr/bin/python3)."""
import argparse, collections, io, os
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "checkpoint")
os.makedirs(OUT, exist_ok=True)


def vit(prefix=""):  # a 1-block, width-8 ViT in timm names
    d = {"cls_token": torch.zeros(1, 1, 8), "pos_embed": torch.zeros(1, 5, 8),
         "patch_embed.proj.weight": torch.ones(8, 1, 2, 2), "patch_embed.proj.bias": torch.zeros(8),
         "blocks.0.norm1.weight": torch.ones(8), "blocks.0.attn.qkv.weight": torch.ones(24, 8),
         "norm.weight": torch.ones(8), "norm.bias": torch.zeros(8)}
    return {prefix + k: v for k, v in d.items()}


def save(name, obj, legacy=False):
    b = io.BytesIO()
    torch.save(obj, b, _use_new_zipfile_serialization=not legacy)
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(b.getvalue())


save("plain.pth", vit())
save("model_wrapper.pth", {"model": vit(), "epoch": 3})
save("state_dict_module.pth", {"state_dict": vit("module.")})
save("nested.pth", {"state_dict": {"model": vit()}})
save("ordered.pth", collections.OrderedDict(vit()))
save("legacy.pth", vit(), legacy=True)
save("clip_visual.pth", {"visual.class_embedding": torch.zeros(8), "visual.positional_embedding": torch.zeros(5, 8),
                         "visual.conv1.weight": torch.ones(8, 3, 2, 2), "visual.proj": torch.ones(8, 4),
                         "token_embedding.weight": torch.zeros(10, 4)})
save("bf16_fp16.pth", {"a": torch.ones(3, dtype=torch.bfloat16), "b": torch.ones(2, 2, dtype=torch.float16)})
save("not_a_dict.pth", [torch.ones(2)])
save("extras.pth", {"model": collections.OrderedDict(vit()), "epoch": 3, "args": argparse.Namespace(lr=0.1),
                    "optimizer": {"state": {0: {"momentum_buffer": torch.ones(2)}}, "param_groups": [{"lr": 0.1}]}})
base = torch.arange(12.0)
save("views.pth", {"base": base, "offset": base[3:7], "strided": base.view(3, 4).t()})


class Tiny(torch.nn.Module):  # a TorchScript archive, as OpenAI's CLIP .pt files are
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 2, 2, 2, bias=False)
        self.class_embedding = torch.nn.Parameter(torch.zeros(2))

    def forward(self, x):
        return self.conv1(x) + self.class_embedding.sum()


torch.jit.save(torch.jit.script(Tiny()), os.path.join(OUT, "torchscript.pt"))
