"""Throughput of the two-view data pipeline (per DataLoader worker count) next to the backbone step it feeds.

The pipeline is data.pretrain_datasets + data.make_loader on an "imagefolder" dataset (JPEG decode, two augmented
views, collation). The backbone step is a torchvision resnet18 forward + backward on the same two views (channels_last),
with the ImageNet stem and optionally the CIFAR stem (3x3 stride-1 conv, no max-pool: ~16x the FLOPs at 32 px). Both
are given in source images per second, from the fastest timed pass or step (the benchmark machine is shared, and
other load only ever slows a pass down); a ratio data / backbone above 1 means the loader alone keeps up with the model
(on a machine where they do not share cores).

Example (the table in the data issue's closing note):
    python benchmarks/bench_data.py --num-images 2048 --workers 0 1 2 --cifar-stem
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torchvision
from torch import nn
from torch.utils.data import Subset

from selfsup import data
from selfsup.config import ModelParams
from selfsup.data.views import TRANSFORM_TYPES
from selfsup.train.pipeline import pretrain_datasets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA_PATH = os.path.normpath(os.path.join(REPO, "..", "shared", "datasets", "cifar10"))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-path", default=DEFAULT_DATA_PATH,
                        help="dataset root holding train/<class>/<image> (read as dataset_name='imagefolder')")
    parser.add_argument("--num-images", type=int, default=2048, help="evenly spaced subset of the training images")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader worker counts to time")
    parser.add_argument("--batch-size", type=int, default=256, help="source images per batch (each gives 2 views)")
    parser.add_argument("--crop-size", type=int, default=None, help="transform_crop_size (default: the folder's)")
    parser.add_argument("--transform-type", choices=TRANSFORM_TYPES, default="simclr")
    parser.add_argument("--epochs", type=int, default=3, help="timed passes over the subset, after one warm-up pass")
    parser.add_argument("--backbone-steps", type=int, default=3, help="timed backbone steps, after one warm-up step")
    parser.add_argument("--cifar-stem", action="store_true",
                        help="also time resnet18 with the CIFAR stem (slow on a CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="backbone device")
    parser.add_argument("--csv", default=os.path.join(REPO, "benchmarks", "results", "bench_data.csv"),
                        help="where to write the results")
    return parser.parse_args(argv)


def pipeline_images_per_second(dataset: Subset, batch_size: int, workers: int, epochs: int) -> float:
    loader = data.make_loader(dataset, batch_size=batch_size, shuffle=True, drop_last=False, num_workers=workers,
                              pin_memory=False, seed=0)
    for _ in loader:  # warm-up pass: starts the persistent workers, fills the page cache
        pass
    fastest = float("inf")
    for _ in range(epochs):
        start = time.perf_counter()
        for _ in loader:
            pass
        fastest = min(fastest, time.perf_counter() - start)
    del loader  # stops the workers before the next configuration is timed
    return len(dataset) / fastest


def resnet18(cifar_stem: bool) -> nn.Module:
    model = torchvision.models.resnet18()
    model.fc = nn.Identity()
    if cifar_stem:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


def backbone_images_per_second(cifar_stem: bool, batch_size: int, crop: int, steps: int, device: str) -> float:
    """Source images per second of resnet18 forward + backward on both views of a batch."""
    model = resnet18(cifar_stem).to(device, memory_format=torch.channels_last)
    views = torch.randn(2 * batch_size, 3, crop, crop, device=device).contiguous(memory_format=torch.channels_last)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(views).square().mean().backward()

    step()
    fastest = float("inf")
    for _ in range(steps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        fastest = min(fastest, time.perf_counter() - start)
    return batch_size / fastest


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    params = ModelParams(dataset_name="imagefolder", data_path=args.data_path, transform_crop_size=args.crop_size,
                         transform_type=args.transform_type, batch_size=args.batch_size, K=args.batch_size,
                         augmentation_backend="pil")  # the per-image pipeline (bench_augment.py times "batched")
    crop = data.crop_size(params)
    train, _ = pretrain_datasets(params)
    count = min(args.num_images, len(train))
    subset = Subset(train, np.linspace(0, len(train) - 1, count).round().astype(int).tolist())
    views = params.num_global_crops + params.num_local_crops

    backbones = {"imagenet": backbone_images_per_second(False, args.batch_size, crop, args.backbone_steps,
                                                        args.device)}
    if args.cifar_stem:
        backbones["cifar"] = backbone_images_per_second(True, args.batch_size, crop, args.backbone_steps, args.device)

    rows: List[Dict[str, object]] = []
    for workers in args.workers:
        images = pipeline_images_per_second(subset, args.batch_size, workers, args.epochs)
        rows.append({"what": f"{args.transform_type} two-view pipeline", "workers": workers, "images_per_s": images,
                     "views_per_s": images * views,
                     **{f"ratio_to_{stem}_stem": images / speed for stem, speed in backbones.items()}})
    for stem, speed in backbones.items():
        rows.append({"what": f"resnet18 fwd+bwd, {stem} stem ({args.device})", "workers": "", "images_per_s": speed,
                     "views_per_s": speed * views, **{f"ratio_to_{s}_stem": "" for s in backbones}})

    os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    print(f"{count} images of {args.data_path}/train, {crop} px crops, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; CSV: {args.csv}\n")
    ratios = [f"data / {stem}-stem step" for stem in backbones]
    print("| what | workers | source images/s | views/s | " + " | ".join(ratios) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(ratios))
    for row in rows:
        cells = [f"{row[f'ratio_to_{stem}_stem']:.2f}" if row["workers"] != "" else "" for stem in backbones]
        print(f"| {row['what']} | {row['workers']} | {row['images_per_s']:.0f} | {row['views_per_s']:.0f} | "
              + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
