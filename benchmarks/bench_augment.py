"""Augmentation backends: "pil" (per image in DataLoader workers) vs "batched" (selfsup.data.batched, per batch on
the device).

Three parts, on images of a folder (default: the shared CIFAR-10 training images; a random subset is linked into a
temporary folder, so that ``dataset_name="imagefolder"`` reads exactly that subset):

- ``augment``: the augmentation alone, for one batch of decoded images in memory, two SimCLR views: PIL per image,
  BatchedViews, and kornia.augmentation pipelines with the same settings as the library alternative
  (ColorJitter, which follows torchvision's semantics, and ColorJiggle), both with batched.CPU_THREADS intra-op
  threads. Fastest of ``--augment-reps`` calls each, interleaved.
- ``throughput``: real ``pl.Trainer`` fits of the SimCLR preset (resnet18, ImageNet stem unless ``--cifar-stem``),
  timed from one ``on_train_batch_start`` to the next, so a step includes waiting for the loader, the transfer, the
  batched augmentation and the optimizer step: "pil" at each of ``--workers``; "batched" and "no augmentation" (the
  same uint8 batches, only normalized: the step without augmentation) at each of ``--batched-workers``. The
  configurations are interleaved ``--rounds`` times; each reports the median and the fastest of its steps over all
  rounds (the first step of every fit, which starts the workers, is skipped). Other load on the machine only ever
  slows a step down, and it comes and goes: compare rows of one run, as ratios.
- ``pretrain``: the same SimCLR runs (same initial weights, same images) with each backend for ``--pretrain-epochs``
  epochs, once per seed of ``--seeds``: per epoch the mean training loss, the module's validation probe (logistic
  regression and weighted kNN on frozen embeddings of ``--val-images`` held-out images) and the wall time; the
  markdown shows mean ± standard deviation over the seeds, so that the backends' difference reads against the noise.

Results: ``--out``/bench_augment_<part>.csv, and the markdown tables in ``--out``/bench_augment.md (also printed).

Examples (the tables in the augmentation issue's closing note):
    python benchmarks/bench_augment.py --parts augment throughput --num-images 2048
    python benchmarks/bench_augment.py --parts pretrain --pretrain-images 4096 --pretrain-epochs 3
"""

from __future__ import annotations

import argparse
import csv
import functools
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence

import attr
import numpy as np
import pytorch_lightning as pl
import torch
import torchvision.transforms.functional as TF
from torch import Tensor

from selfsup import data
from selfsup.config import ModelParams, SimCLRParams
from selfsup.data import batched
from selfsup.train.module import SelfSupervisedMethod
from selfsup.train.pipeline import pretrain_datasets, pretraining_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA_PATH = os.path.normpath(os.path.join(REPO, "..", "shared", "datasets", "cifar10"))

PARTS = ("augment", "throughput", "pretrain")
Row = Dict[str, Any]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--data-path", default=DEFAULT_DATA_PATH, help="folder holding train/<class>/<image>")
    parser.add_argument("--num-images", type=int, default=2048, help="training images of the throughput part")
    parser.add_argument("--batch-size", type=int, default=256, help="source images per step (each gives 2 views)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader workers for 'pil'")
    parser.add_argument("--batched-workers", type=int, nargs="+", default=[0, 1],
                        help="DataLoader workers (decoding only) for 'batched' and 'no augmentation'")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved passes over the throughput configurations")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration and round")
    parser.add_argument("--augment-reps", type=int, default=10, help="timed calls per augmentation implementation")
    parser.add_argument("--cifar-stem", action="store_true", help="3x3 stride-1 stem (~16x the compute at 32 px)")
    parser.add_argument("--pretrain-images", type=int, default=4096, help="training images of the pretraining part")
    parser.add_argument("--val-images", type=int, default=1000, help="held-out images probed after each epoch")
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="pretraining runs per backend (seed_everything, seed and data_seed)")
    parser.add_argument("--pretrain-workers", type=int, default=0, help="DataLoader workers of the pretraining runs")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"),
                        help="folder for bench_augment_<part>.csv and bench_augment.md")
    return parser.parse_args(argv)


def link_subset(source: str, target: str, train_count: int, val_count: int) -> None:
    """``target``/train and ``target``/val: symbolic links to disjoint random images (seed 0) of ``source``/train,
    keeping the class folders."""
    train_dir = os.path.join(source, "train")
    samples = data.index_image_folder(train_dir).samples
    if train_count + val_count > len(samples):
        raise ValueError(f"{train_count} training + {val_count} validation images requested, but {train_dir} has "
                         f"{len(samples)}")
    order = np.random.default_rng(0).permutation(len(samples))
    for position, index in enumerate(order[:train_count + val_count]):
        path = samples[index][0]
        split = "train" if position < train_count else "val"
        link = os.path.join(target, split, os.path.relpath(path, train_dir))
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.abspath(path), link)


def simclr_params(data_path: str, args: argparse.Namespace, **fields: Any) -> ModelParams:
    return SimCLRParams(dataset_name="imagefolder", data_path=data_path, batch_size=args.batch_size,
                        use_cifar_stem=args.cifar_stem, **fields)


def trainer(epochs: int, callbacks: Sequence[pl.Callback], **kwargs: Any) -> pl.Trainer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pl.Trainer(accelerator="auto", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                          callbacks=list(callbacks), **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# augment: the augmentation of one batch, without a model
# ---------------------------------------------------------------------------------------------------------------------

def kornia_views(params: ModelParams, jitter: str) -> Callable[[Tensor], List[Tensor]]:
    """Two SimCLR views of a uint8 batch with kornia.augmentation (``jitter``: "ColorJitter" or "ColorJiggle")."""
    try:
        import kornia.augmentation as K  # the bench extra, needed by this part only
    except ImportError as error:
        raise SystemExit(f"the augment part compares kornia, which is not installed ({error}): "
                         "pip install -e .[bench]") from error
    info = data.dataset_info(params)
    crop = data.crop_size(params)
    settings = data.photometric_settings(params)[0][0]
    pipeline = K.AugmentationSequential(
        K.RandomResizedCrop((crop, crop), scale=params.global_crop_scale),
        K.RandomHorizontalFlip(),
        getattr(K, jitter)(*settings.jitter, p=data.JITTER_P),
        K.RandomGrayscale(p=data.GRAYSCALE_P),
        K.RandomGaussianBlur((data.blur_kernel_size(crop),) * 2, data.BLUR_SIGMA, p=settings.blur_p),
        K.Normalize(torch.tensor(info.mean), torch.tensor(info.std)),
    )

    def views(images: Tensor) -> List[Tensor]:
        with batched.intra_op_threads(batched.CPU_THREADS):  # as BatchedViews on a CPU
            return [pipeline(images.float() / 255) for _ in range(params.num_global_crops)]

    return views


def augment_part(data_path: str, args: argparse.Namespace) -> Dict[str, List[Row]]:
    params = simclr_params(data_path, args, augmentation_backend="pil")
    train, _ = pretrain_datasets(params, view_transforms=lambda image: image)  # decoded PIL images
    images = [train[i][0][0] for i in range(args.batch_size)]
    batch = torch.stack([TF.pil_to_tensor(image) for image in images])
    info = data.dataset_info(params)
    pil_views = data.build_view_transforms(data.view_specs(params, data.crop_size(params, info)), info.mean, info.std)
    batch_views = pretraining_data(attr.evolve(params, augmentation_backend="batched")).batch_views
    assert batch_views is not None
    implementations = {
        "PIL, per image (main process)": lambda: [torch.stack([view(i) for i in images]) for view in pil_views],
        "batched (selfsup.data.batched)": functools.partial(batch_views, batch),
        "kornia, ColorJitter (torchvision semantics)": functools.partial(kornia_views(params, "ColorJitter"), batch),
        "kornia, ColorJiggle": functools.partial(kornia_views(params, "ColorJiggle"), batch),
    }
    best = {name: float("inf") for name in implementations}
    for function in implementations.values():
        function()  # warm-up
    for _ in range(args.augment_reps):  # interleaved, so that load on the machine hits all alike
        for name, function in implementations.items():
            start = time.perf_counter()
            function()
            best[name] = min(best[name], (time.perf_counter() - start) * 1e3)
    reference = best["batched (selfsup.data.batched)"]
    return {"augment": [{"implementation": name, "ms_per_batch": ms, "source_images_per_s": args.batch_size / ms * 1e3,
                         "relative_to_batched": ms / reference} for name, ms in best.items()]}


# ---------------------------------------------------------------------------------------------------------------------
# throughput: whole training steps
# ---------------------------------------------------------------------------------------------------------------------

class StepTimer(pl.Callback):
    """Start times of the training batches (one full step, loader included, from one to the next)."""

    def __init__(self) -> None:
        self.starts: List[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.starts.append(time.perf_counter())


class NormalizeOnly:
    """The step without augmentation: every view is the whole uint8 image, normalized (same loader, same model)."""

    def __init__(self, params: ModelParams) -> None:
        info = data.dataset_info(params)
        self.mean = torch.tensor(info.mean)[None, :, None, None]
        self.std = torch.tensor(info.std)[None, :, None, None]
        self.views = params.num_global_crops

    def __call__(self, images: Tensor, step: int = 0, rank: int = 0) -> List[Tensor]:
        x = (images.float() / 255 - self.mean.to(images.device)) / self.std.to(images.device)
        return [x] * self.views


def throughput_part(data_path: str, args: argparse.Namespace) -> Dict[str, List[Row]]:
    configurations = [("pil", w) for w in args.workers]
    configurations += [(backend, w) for w in args.batched_workers for backend in ("batched", "no augmentation")]
    models = {}
    for backend, workers in configurations:
        pl.seed_everything(0, verbose=False)
        fields = dict(augmentation_backend="pil" if backend == "pil" else "batched", num_data_workers=workers)
        model = SelfSupervisedMethod(simclr_params(data_path, args, max_epochs=args.rounds, **fields))
        if backend == "no augmentation":
            model.datamodule.batch_views = NormalizeOnly(model.params)
        models[backend, workers] = model
    steps: Dict[Any, List[float]] = {key: [] for key in models}
    for _ in range(args.rounds):
        for key, model in models.items():
            timer = StepTimer()
            trainer(1, [timer], limit_train_batches=args.steps + 2, limit_val_batches=0).fit(model)
            steps[key] += [b - a for a, b in zip(timer.starts[1:], timer.starts[2:])]
    rows = [{"backend": backend, "workers": workers, "median_step_s": statistics.median(times),
             "fastest_step_s": min(times), "steps_timed": len(times)} for (backend, workers), times in steps.items()]
    best_batched = min(row["median_step_s"] for row in rows if row["backend"] == "batched")
    for row in rows:
        row["source_images_per_s"] = args.batch_size / row["median_step_s"]
        baseline = [r for r in rows if r["backend"] == "no augmentation" and r["workers"] == row["workers"]]
        for statistic in ("median", "fastest"):
            ratio = row[f"{statistic}_step_s"] / baseline[0][f"{statistic}_step_s"] if baseline else ""
            row[f"{statistic}_vs_no_augmentation"] = ratio
        row["median_vs_best_batched"] = row["median_step_s"] / best_batched
    return {"throughput": rows}


# ---------------------------------------------------------------------------------------------------------------------
# pretrain: learning curves of both backends
# ---------------------------------------------------------------------------------------------------------------------

class EpochLog(pl.Callback):
    """Per epoch: mean training loss, the validation probe's accuracies and the wall time of the epoch."""

    def __init__(self) -> None:
        self.rows: List[Row] = []
        self.losses: List[float] = []
        self.start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.losses, self.start = [], time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, *args: Any) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # runs after the epoch's validation, whose metrics are then in callback_metrics
        metrics = trainer.callback_metrics
        self.rows.append({"epoch": trainer.current_epoch + 1, "train_loss": statistics.mean(self.losses),
                          **{name: float(metrics.get(name, float("nan"))) for name in ("valid_class_acc",
                                                                                        "valid_knn_acc")},
                          "epoch_s": time.perf_counter() - self.start})


def pretrain_part(data_path: str, args: argparse.Namespace) -> Dict[str, List[Row]]:
    """Per run and epoch, and per backend and epoch as mean and standard deviation over the seeds."""
    runs = []
    for seed in args.seeds:
        for backend in ("pil", "batched"):
            pl.seed_everything(seed, verbose=False)  # both backends start from the same weights
            params = simclr_params(data_path, args, augmentation_backend=backend, max_epochs=args.pretrain_epochs,
                                   num_data_workers=args.pretrain_workers, seed=seed, data_seed=seed)
            log = EpochLog()
            trainer(args.pretrain_epochs, [log]).fit(SelfSupervisedMethod(params))
            runs += [{"backend": backend, "seed": seed, **row} for row in log.rows]
    summary = []
    for backend in ("pil", "batched"):
        for epoch in range(1, args.pretrain_epochs + 1):
            rows = [r for r in runs if r["backend"] == backend and r["epoch"] == epoch]
            row: Row = {"backend": backend, "epoch": epoch, "seeds": len(rows)}
            for name in ("train_loss", "valid_class_acc", "valid_knn_acc", "epoch_s"):
                values = [r[name] for r in rows]
                row[name] = f"{statistics.mean(values):.3g} ± {statistics.stdev(values) if len(values) > 1 else 0:.2g}"
            summary.append(row)
    return {"pretrain_runs": runs, "pretrain": summary}


# ---------------------------------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------------------------------

def markdown(rows: List[Row]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(row[k]) for k in header) + " |" for row in rows])


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, List[Row]]:
    args = parse_args(argv)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # no per-fit banners between the tables
    parts = {"augment": augment_part, "throughput": throughput_part, "pretrain": pretrain_part}
    results: Dict[str, List[Row]] = {}
    for name in args.parts:
        with tempfile.TemporaryDirectory() as subset:
            train_count = args.pretrain_images if name == "pretrain" else args.num_images
            link_subset(args.data_path, subset, train_count, args.val_images)
            results.update(parts[name](subset, args))
    os.makedirs(args.out, exist_ok=True)
    report = [f"bench_augment.py {' '.join(sys.argv[1:])}: random subsets of {args.data_path}/train (throughput "
              f"{args.num_images}, pretrain {args.pretrain_images} training images, {args.val_images} validation "
              f"images), batch {args.batch_size}, SimCLR preset, resnet18 {'CIFAR' if args.cifar_stem else 'ImageNet'}"
              f" stem, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
              f"{'GPU' if torch.cuda.is_available() else 'CPU'}"]
    for name, rows in results.items():
        with open(os.path.join(args.out, f"bench_augment_{name}.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        report += [f"\n{name}:\n", markdown(rows)]
    text = "\n".join(report)
    with open(os.path.join(args.out, "bench_augment.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return results


if __name__ == "__main__":
    main()
