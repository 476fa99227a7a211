#!/usr/bin/python3
"""The Python pipeline users would otherwise run, timed for `bench_loader`: torchvision's
ImageFolder (PIL decoding) + DataLoader with the same train transform as hybrid-distill's loader
(RandomResizedCrop(224, antialiased bilinear), RandomHorizontalFlip, ToTensor, Normalize with
the ImageNet statistics), batch 32, the consumer only taking batches. Best of `--repeats`
epochs after one warm-up pass, like bench_loader.

    /usr/bin/python3 bench/loader_torchvision.py --root DIR --workers 1 [--size 224] [--batch 32]
prints one JSON line: {"images": N, "seconds": S, "images_per_s": R, "torch": ..., "torchvision": ..., "pil": ...}.
"""
import argparse
import json
import time

import PIL
import torch
import torchvision
from torchvision import datasets, transforms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    tf = transforms.Compose([
        transforms.RandomResizedCrop(a.size, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    ds = datasets.ImageFolder(a.root, transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=a.batch, shuffle=True, num_workers=a.workers,
                                         persistent_workers=a.workers > 0, drop_last=False)
    for i, _ in enumerate(loader):  # warm-up: worker start-up, page cache
        if i == 2:
            break
    best = None
    for _ in range(a.repeats):
        n = 0
        t = time.perf_counter()
        for x, _ in loader:
            n += x.shape[0]
        s = time.perf_counter() - t
        if best is None or n / s > best[0] / best[1]:
            best = (n, s)
    print(json.dumps({"images": best[0], "seconds": best[1], "images_per_s": best[0] / best[1],
                      "torch": torch.__version__, "torchvision": torchvision.__version__, "pil": PIL.__version__}))


if __name__ == "__main__":
    main()
