"""Loader-bound throughput: images per second delivered into the training step as uint8 stored squares, decoded by
the loader workers (PIL, today's path) or on the training device (decode_on_device: the workers only read bytes).

Both paths read the same JPEG files and stop where the batched views start (a [B, 3, S, S] uint8 batch on the
device), so the comparison is the decoding and resizing alone. On a machine without a GPU the "device" is the CPU,
which only shows the cost of moving decoding out of the workers; on a GPU nvJPEG decodes the batch.

    python benchmarks/bench_decode.py                              # generated ImageNet-sized JPEGs
    python benchmarks/bench_decode.py --data-path ../shared/datasets/cifar10 --side 32
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from selfsup import data


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-path", default=None, help="an image folder (train/<class>/*); default: generated")
    parser.add_argument("--num-images", type=int, default=512, help="images read per measurement")
    parser.add_argument("--image-size", type=int, nargs=2, default=(375, 500), help="generated images, H W")
    parser.add_argument("--side", type=int, default=256, help="stored square side S (256 for 224 px crops)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    return parser.parse_args(argv)


def generated_folder(root: str, count: int, size: Sequence[int]) -> List[str]:
    """``count`` photo-like JPEGs (smooth colour fields, quality 90) of ``size`` under ``root``."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        small = Image.fromarray(rng.integers(0, 256, (size[0] // 16 + 1, size[1] // 16 + 1, 3), dtype=np.uint8))
        path = os.path.join(root, f"{i:05d}.jpg")
        small.resize((size[1], size[0]), Image.BILINEAR).save(path, quality=90)
        paths.append(path)
    return paths


def images_per_second(paths: Sequence[str], side: int, batch_size: int, workers: int, device: torch.device,
                      on_device: bool) -> float:
    samples = [(path, 0) for path in paths]
    if on_device:
        dataset: Any = data.EncodedFileDataset(samples)
        collate: Any = data.collate_encoded
    else:
        dataset = data.ImageFileDataset(samples, data.build_stored_image_transform(side))
        collate = None
    loader = data.make_loader(dataset, batch_size=batch_size, shuffle=False, drop_last=False, num_workers=workers,
                              pin_memory=device.type == "cuda", collate_fn=collate)
    start = time.perf_counter()
    count = 0
    for images, _ in loader:
        batch = data.decode_batch(images.data, side, device) if on_device else images.to(device)
        count += len(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    args = parse_args(argv)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        if args.data_path:
            index = data.index_image_folder(os.path.join(args.data_path, "train"))
            step = max(1, len(index.samples) // args.num_images)
            paths = [path for path, _ in index.samples[::step][: args.num_images]]
        else:
            paths = generated_folder(scratch, args.num_images, args.image_size)
        rows = []
        for workers in args.workers:
            host = images_per_second(paths, args.side, args.batch_size, workers, device, on_device=False)
            on_device = images_per_second(paths, args.side, args.batch_size, workers, device, on_device=True)
            rows.append({"workers": workers, "loader_decode_img_s": round(host, 1),
                         "device_decode_img_s": round(on_device, 1), "ratio": round(on_device / host, 3)})
    source = args.data_path or f"{args.num_images} generated {args.image_size[0]}x{args.image_size[1]} JPEGs"
    print(f"{source}, stored side {args.side}, batch {args.batch_size}, device {device}\n")
    print("| loader workers | loader decode img/s | device decode img/s | device / loader |\n|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['workers']} | {row['loader_decode_img_s']} | {row['device_decode_img_s']} | {row['ratio']} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": str(device), "source": source, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
