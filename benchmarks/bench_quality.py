"""Representation quality of every preset at a fixed pretraining budget: kNN and linear-probe accuracy on held-out
images, next to a randomly initialised encoder.

Data: a class-balanced subset of an ImageFolder (default: the CIFAR-10 training split in ../shared/datasets/cifar10),
split once with a fixed seed into ``--train-per-class`` pretraining images and ``--holdout-per-class`` held-out images
per class. The subset is laid out as symbolic links in
``<--work-dir>/data_seed<seed>_<train-per-class>_<holdout-per-class>/{train,val}/<class>/``, so pretraining goes
through the same ``dataset_name="imagefolder"`` path a user's run does (decoding, the default augmentation backend,
the loader). Each preset pretrains with its own defaults and the overrides below for ``--epochs`` epochs;
after every epoch the encoder's embeddings (eval mode, deterministic eval transform) of the pretraining images are
the bank of a weighted kNN (k=200, cosine, temperature 0.1) that classifies the held-out images; after the last
epoch a logistic regression (a linear probe) is fit on the same embeddings and scored on the held-out images. The
random-init row is the same encoder before any training. Outputs: a CSV per epoch, a markdown table, a PNG plot.

Short-run overrides (the budget is minutes, not days): queues and support sets hold ``--queue-size`` keys (65536
keys of a 10,000-image run would be up to 6 epochs old), and ``model_params.short_run_overrides`` caps the
presets' warmups, prototype freezing and EMA momentum to fit ``--epochs`` and gives the SGD presets a tenth of their
peak lr (``--paper-schedules`` keeps them all); everything else is the preset's.

Example (the default-run table in docs/benchmarks.md; 44 minutes on a 2-core CPU with AVX-512):
    python benchmarks/bench_quality.py

The ViT presets at CPU scale (docs/benchmarks.md, "Vision Transformers"), next to a random ViT-Tiny/4 and lightly:
    python benchmarks/bench_quality.py --presets mae_tiny ijepa_tiny moco_v3_vit_tiny dino_vit_tiny --peer \
        --encoder-arch timm:vit_tiny_patch16_224 --embedding-dim 192 --set patch_size=4 \
        --train-per-class 500 --holdout-per-class 100 --batch-size 128
"""

from __future__ import annotations

import argparse
import csv
import os
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple, cast

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from selfsup import data
from selfsup.config import PRESETS, ModelParams
from selfsup.config.recipes import with_short_run_recipe
from selfsup.eval import probes
from selfsup.train.module import SelfSupervisedMethod
from selfsup.train.pipeline import PretrainingDataModule

try:
    from benchmarks import peers
except ImportError:  # run as a script: Python puts benchmarks/ itself, not the repository, on sys.path
    import peers  # type: ignore[no-redef]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA_PATH = os.path.normpath(os.path.join(REPO, "..", "shared", "datasets", "cifar10"))
BUDGETS = {"default": 4, "long": 16}  # epochs
IMPLEMENTATIONS = {"ours": "ours", "lightly": "peer"}  # the CSV's implementation column: the row's key


def new_row(preset: str, **halves: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """A table row: the preset and the result of each implementation (None until measured)."""
    return {"preset": preset, **{key: None for key in IMPLEMENTATIONS.values()}, **halves}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--data-path", default=DEFAULT_DATA_PATH, help="folder holding train/<class>/<image>")
    parser.add_argument("--synthetic", action="store_true",
                        help="use the built-in synthetic dataset (32 px) instead of --data-path (no files needed)")
    parser.add_argument("--presets", nargs="+", default=sorted(p for p in PRESETS if p != "supcon"),
                        choices=sorted(PRESETS), help="supcon is supervised, so it is left out by default")
    parser.add_argument("--train-per-class", type=int, default=1000, help="pretraining (and kNN bank) images per class")
    parser.add_argument("--holdout-per-class", type=int, default=500, help="held-out (query) images per class")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="default",
                        help="default: every preset for a few epochs; long: a learning curve of one preset at a time "
                        "(the epoch at which it crosses the random encoder)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per preset (default: the budget's: "
                        + ", ".join(f"{k} {v}" for k, v in sorted(BUDGETS.items())) + ")")
    parser.add_argument("--peer", action="store_true",
                        help="also train each preset's method as implemented by lightly (pip install -e .[peer]) with "
                        "the same data, backbone, optimizer, schedule and epochs, evaluated by the same code")
    parser.add_argument("--peer-only", action="store_true",
                        help="train lightly's implementation alone: completes a pair whose peer run was lost "
                        "(--merge joins the two runs' CSVs)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--encoder-arch", default="resnet18")
    parser.add_argument("--embedding-dim", type=int, default=512)
    parser.add_argument("--cifar-stem", action="store_true", help="3x3 stride-1 stem: better at 32 px, 8x the compute")
    parser.add_argument("--queue-size", type=int, default=4096, help="K of presets with a queue or support set")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and of every run")
    parser.add_argument("--paper-schedules", action="store_true",
                        help="keep the presets' warmups, prototype freezing, EMA momentum and SGD lr as written for "
                        "long runs (default: model_params.short_run_overrides scales them to --epochs)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="extra ModelParams overrides for every preset, e.g. lr=0.3 (Python literals)")
    parser.add_argument("--work-dir", default=os.path.join(REPO, "benchmarks", "results", "quality"))
    parser.add_argument("--save-checkpoints", action="store_true",
                        help="write each trained preset's checkpoint to <work-dir>/<preset>.ckpt (for selfsup-eval)")
    parser.add_argument("--merge", nargs="+", default=None, metavar="CSV",
                        help="train nothing: combine the bench_quality.csv files of earlier runs on the same split "
                        "into one CSV, table and plot in --work-dir (a later file's run of a preset replaces an "
                        "earlier one's, implementation by implementation: ours alone, or --peer-only, keeps the other "
                        "half)")
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = BUDGETS[args.budget]
    if args.budget == "long" and len(args.presets) != 1:
        parser.error(f"--budget long trains one preset at a time; got --presets {' '.join(args.presets)}")
    if (args.peer or args.peer_only) and not peers.available():
        parser.error("--peer and --peer-only need the lightly library: pip install -e .[peer]")
    if args.peer_only and not set(args.presets) <= set(peers.PEERS):
        parser.error(f"--peer-only: lightly implements {', '.join(sorted(peers.PEERS))}; got --presets "
                     f"{' '.join(args.presets)}")
    return args


def link_subset(source: str, target: str, per_class: Tuple[int, int], seed: int) -> None:
    """Symlink a class-balanced random subset of ``source/train`` into ``target/train`` and ``target/val``."""
    index = data.index_image_folder(os.path.join(source, "train"))
    rng = np.random.default_rng(seed)
    by_label: Dict[int, List[str]] = {}
    for path, label in index.samples:
        by_label.setdefault(label, []).append(path)
    for label, paths in sorted(by_label.items()):
        needed = sum(per_class)
        if len(paths) < needed:
            raise ValueError(f"class {index.classes[label]!r} has {len(paths)} images; {needed} are needed")
        chosen = rng.choice(paths, size=needed, replace=False)
        for split, files in (("train", chosen[: per_class[0]]), ("val", chosen[per_class[0] :])):
            folder = os.path.join(target, split, index.classes[label])
            os.makedirs(folder, exist_ok=True)
            for i, path in enumerate(files):
                os.symlink(os.path.abspath(path), os.path.join(folder, f"{i:05d}{os.path.splitext(path)[1]}"))


def parse_overrides(pairs: Sequence[str]) -> Dict[str, Any]:
    import ast

    out = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            out[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[name] = value
    return out


def preset_params(name: str, args: argparse.Namespace, data_path: Optional[str]) -> Tuple[ModelParams, str]:
    """The preset for the benchmark's data (an image folder at ``data_path``, or synthetic images when None), and a
    description of the short-run recipe applied to it."""
    dataset: Dict[str, Any] = (
        dict(dataset_name="imagefolder", data_path=data_path)
        if data_path is not None
        else dict(
            dataset_name="synthetic",
            synthetic_train_size=10 * args.train_per_class,
            synthetic_val_size=10 * args.holdout_per_class,
        )
    )
    overrides: Dict[str, Any] = dict(
        **dataset,
        encoder_arch=args.encoder_arch,
        embedding_dim=args.embedding_dim,
        use_cifar_stem=args.cifar_stem,
        batch_size=args.batch_size,
        max_epochs=args.epochs,
        num_data_workers=args.workers,
        data_seed=args.seed,
    )
    if PRESETS[name]().uses_queue:
        overrides["K"] = args.queue_size
    given = parse_overrides(args.set)  # the recipe leaves these fields as given (and does not report them)
    overrides.update(given)
    if args.paper_schedules:
        return PRESETS[name](**overrides), "none"
    return with_short_run_recipe(PRESETS[name], overrides, keep=given)


def load_all(dataset: Any) -> Tuple[Tensor, Tensor]:
    loader = data.make_loader(dataset, batch_size=512, shuffle=False, drop_last=False, num_workers=0, pin_memory=False)
    images, labels = zip(*loader)
    return torch.cat(images), torch.cat(labels)


@torch.no_grad()
def embed(encoder: torch.nn.Module, images: Tensor) -> Tensor:
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    out = torch.cat([encoder(chunk.to(device)).float().cpu() for chunk in images.split(512)])
    encoder.train(was_training)
    return out


class EpochProbe(pl.Callback):
    """kNN accuracy of the held-out images against the pretraining images' embeddings after every epoch, and the
    training time of every epoch (without this measurement; rows report the median, robust to a disturbed epoch)."""

    def __init__(self, bank: Tuple[Tensor, Tensor], queries: Tuple[Tensor, Tensor]) -> None:
        self.bank, self.queries = bank, queries
        self.knn: List[float] = []
        self.losses: List[float] = []  # the last step's loss of every epoch
        self.epoch_seconds: List[float] = []
        self.embeddings: Optional[Tuple[Tensor, Tensor]] = None  # (bank, queries) of the latest measurement
        self._epoch_start = 0.0

    def measure(self, encoder: torch.nn.Module) -> Tuple[Tensor, Tensor]:
        bank, queries = embed(encoder, self.bank[0]), embed(encoder, self.queries[0])
        self.knn.append(probes.knn_accuracy(bank, self.bank[1], queries, self.queries[1]))
        self.embeddings = bank, queries
        return bank, queries

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.epoch_seconds.append(time.perf_counter() - self._epoch_start)
        self.losses.append(float(trainer.callback_metrics["step_train_loss"]))
        self.measure(cast(torch.nn.Module, module.model))
        # a long run shows its curve as it goes, and an interrupted one keeps what it measured in the log
        print(f"epoch {trainer.current_epoch + 1}: kNN {self.knn[-1]:.2f}%, loss {self.losses[-1]:.4f}, "
              f"{self.epoch_seconds[-1]:.0f} s", flush=True)


def train_and_probe(
    name: str,
    module: pl.LightningModule,
    bank: Tuple[Tensor, Tensor],
    queries: Tuple[Tensor, Tensor],
    args: argparse.Namespace,
    datamodule: Optional[pl.LightningDataModule] = None,
    train: bool = True,
) -> Dict[str, Any]:
    """Pretrain ``module`` (unless ``train`` is False: the random-init row) with kNN after every epoch, then the
    linear probe. ``module.model`` is the encoder."""
    probe = EpochProbe(bank, queries)
    start = time.perf_counter()
    if train:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = pl.Trainer(
                accelerator=args.accelerator,
                devices=1,
                max_epochs=args.epochs,
                limit_val_batches=0,
                logger=pl.loggers.CSVLogger(args.work_dir, name=name),
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                callbacks=[probe],
            )
            trainer.fit(module, datamodule=datamodule)
            if args.save_checkpoints:
                trainer.save_checkpoint(os.path.join(args.work_dir, f"{name}.ckpt"))
    minutes = (time.perf_counter() - start) / 60
    bank_embeddings, query_embeddings = probe.embeddings or probe.measure(cast(torch.nn.Module, module.model))
    (linear,) = probes.logistic_regression_accuracies(
        (bank_embeddings.numpy(), bank[1].numpy()), (query_embeddings.numpy(), queries[1].numpy())
    )
    return {"knn": probe.knn, "linear": linear, "minutes": minutes, "losses": probe.losses,
            "epoch_seconds": float(np.median(probe.epoch_seconds)) if probe.epoch_seconds else float("nan"),
            "final_loss": probe.losses[-1] if probe.losses else float("nan")}


def run_preset(
    name: str, bank: Tuple[Tensor, Tensor], queries: Tuple[Tensor, Tensor], args: argparse.Namespace,
    data_path: Optional[str], rows: List[Dict[str, Any]],
) -> Dict[str, Any]:
    """One preset's row, appended to ``rows``: our implementation (unless ``--peer-only``) and, with ``--peer`` or
    ``--peer-only``, lightly's implementation of its method, each from the same seed, params and data. The outputs in
    ``--work-dir`` are rewritten after each half, so a run stopped during the peer's half keeps ours for ``--merge``
    to join to a ``--peer-only`` run."""
    params, recipe = preset_params(name, args, data_path)
    print(f"{name}: short-run recipe applied: {recipe}", flush=True)
    row = {**new_row(name), "recipe": recipe}
    rows.append(row)
    if not args.peer_only:
        pl.seed_everything(args.seed, workers=True)
        row["ours"] = train_and_probe(name, SelfSupervisedMethod(params), bank, queries, args)
        report(name, row["ours"])
        write_outputs(rows, args.work_dir)
    if (args.peer or args.peer_only) and name in peers.PEERS:
        pl.seed_everything(args.seed, workers=True)
        row["peer"] = train_and_probe(f"{name}_peer", peers.PeerMethod(name, params), bank, queries, args,
                                      datamodule=PretrainingDataModule(params))
        report(f"{name} (lightly)", row["peer"])
        write_outputs(rows, args.work_dir)
    return row


def report(label: str, result: Dict[str, Any]) -> None:
    print(f"{label}: kNN per epoch {[round(a, 1) for a in result['knn']]}, loss per epoch "
          f"{[round(a, 3) for a in result['losses']]}, linear {result['linear']:.1f}%, "
          f"{result['epoch_seconds']:.0f} s/epoch, {result['minutes']:.1f} min", flush=True)


def crossing_epoch(knn: Sequence[float], threshold: float) -> Optional[int]:
    """The first epoch (1-based) from which the kNN accuracy stays at or above ``threshold``."""
    for epoch in range(len(knn)):
        if all(a >= threshold for a in knn[epoch:]):
            return epoch + 1
    return None


def plot(rows: List[Dict[str, Any]], path: str, random_knn: float) -> None:
    """One panel per preset: kNN per epoch of ours and, where measured, the peer's, and the random encoder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(len(rows), 4)
    lines = -(-len(rows) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(3.2 * columns, 2.6 * lines), squeeze=False, sharey=True)
    for ax, row in zip(axes.flat, rows):
        for (label, key), (marker, style) in zip(IMPLEMENTATIONS.items(), (("o", "-"), ("s", "--"))):
            if row[key] is not None:
                knn = row[key]["knn"]
                ax.plot(range(1, len(knn) + 1), knn, marker=marker, markersize=3, linestyle=style, label=label)
        ax.axhline(random_knn, color="black", linewidth=0.8, linestyle=":", label="random init")
        ax.set_title(row["preset"], fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("kNN accuracy (%)")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_csv(rows: List[Dict[str, Any]], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["preset", "implementation", "epoch", "knn_acc", "loss", "linear_acc", "seconds_per_epoch",
                         "minutes"])
        for row in rows:
            first = 0 if row["preset"] == "random_init" else 1
            for implementation, key in IMPLEMENTATIONS.items():
                result = row[key]
                if result is None:
                    continue
                losses = result["losses"] or [float("nan")]
                for epoch, (knn, loss) in enumerate(zip(result["knn"], losses), start=first):
                    last = epoch == len(result["knn"]) - 1 + first
                    writer.writerow([row["preset"], implementation, epoch, round(knn, 2), round(loss, 4),
                                     round(result["linear"], 2) if last else "",
                                     round(result["epoch_seconds"], 1), round(result["minutes"], 2)])


def read_csv(path: str) -> List[Dict[str, Any]]:
    """The rows of a CSV that :func:`write_csv` wrote (random_init first), as :func:`run_preset` returns them (without
    the recipe, which the CSV does not hold)."""
    rows: Dict[str, Dict[str, Any]] = {}
    with open(path, newline="") as f:
        for line in csv.DictReader(f):
            row = rows.setdefault(line["preset"], new_row(line["preset"]))
            key = IMPLEMENTATIONS.get(line["implementation"])
            if key is None:
                raise ValueError(f"{path}: implementation {line['implementation']!r}; expected one of "
                                 f"{', '.join(IMPLEMENTATIONS)}")
            if row[key] is None:
                row[key] = dict(knn=[], losses=[], linear=float("nan"))
            result = row[key]
            result["knn"].append(float(line["knn_acc"]))
            result["losses"].append(float(line["loss"]))
            if line["linear_acc"]:
                result["linear"] = float(line["linear_acc"])
            result["epoch_seconds"], result["minutes"] = float(line["seconds_per_epoch"]), float(line["minutes"])
    if not rows or next(iter(rows)) != "random_init":
        raise ValueError(f"{path}: expected a bench_quality.csv whose first rows are the random_init encoder's")
    return list(rows.values())


def merge(paths: Sequence[str]) -> List[Dict[str, Any]]:
    """The rows of several runs' CSVs: one random_init row (every file's must agree: the same split and seed) and
    each preset once. A later file's run replaces an earlier one's implementation by implementation, so a pair can
    be completed from two runs: ours alone (or ``--peer-only``) keeps the other file's other half."""
    runs = [read_csv(path) for path in paths]
    reference = runs[0][0]["ours"]
    for path, rows in zip(paths, runs):
        random_init = rows[0]["ours"]
        if (random_init["knn"], random_init["linear"]) != (reference["knn"], reference["linear"]):
            raise ValueError(f"{path}: random_init kNN/linear {random_init['knn'][-1]}/{random_init['linear']} "
                             f"differ from {paths[0]}'s {reference['knn'][-1]}/{reference['linear']}: not the same "
                             "split and seed")
    presets: Dict[str, Dict[str, Any]] = {}
    for rows in runs:
        for row in rows[1:]:
            merged = presets.setdefault(row["preset"], new_row(row["preset"]))
            merged.update({key: value for key, value in row.items() if value is not None})
    return [runs[0][0], *presets.values()]


def write_outputs(rows: List[Dict[str, Any]], work_dir: str) -> str:
    """bench_quality.csv, .png and .md in ``work_dir``; returns the markdown table."""
    random_knn, random_linear = rows[0]["ours"]["knn"][-1], rows[0]["ours"]["linear"]
    os.makedirs(work_dir, exist_ok=True)
    write_csv(rows, os.path.join(work_dir, "bench_quality.csv"))
    plot(rows[1:], os.path.join(work_dir, "bench_quality.png"), random_knn)
    report = table(rows, random_knn, random_linear)
    with open(os.path.join(work_dir, "bench_quality.md"), "w") as f:
        f.write(report + "\n")
    return report


def table(rows: List[Dict[str, Any]], random_knn: float, random_linear: float) -> str:
    """The markdown table: ours, the peer's where measured, against the random encoder."""
    def cells(result: Optional[Dict[str, Any]], with_gains: bool = False) -> str:
        if result is None:
            return " | | | | |" if with_gains else " | | |"
        knn, linear = result["knn"][-1], result["linear"]
        gains = f" {knn - random_knn:+.1f} | {linear - random_linear:+.1f} |" if with_gains else ""
        return f" {knn:.1f} | {linear:.1f} |{gains} {result['epoch_seconds']:.0f} |"

    out = ["| preset | kNN % | linear % | kNN - random | linear - random | s/epoch | lightly kNN % | lightly linear % "
           "| lightly s/epoch | minutes (ours + lightly) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows[1:]:
        minutes = sum(row[key]["minutes"] for key in IMPLEMENTATIONS.values() if row[key] is not None)
        out.append(f"| {row['preset']} |{cells(row['ours'], with_gains=True)}{cells(row['peer'])} {minutes:.1f} |")
    out.append(f"| random init | {random_knn:.1f} | {random_linear:.1f} | | | | | | | |")
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    args = parse_args(argv)
    if args.merge:
        rows = merge(args.merge)
        print(write_outputs(rows, args.work_dir))
        return rows
    if args.synthetic:
        source = "the synthetic dataset"
        subset = None
    else:
        source = args.data_path
        subset = os.path.join(args.work_dir, f"data_seed{args.seed}_{args.train_per_class}_{args.holdout_per_class}")
        if not os.path.isdir(subset):
            link_subset(args.data_path, subset, (args.train_per_class, args.holdout_per_class), args.seed)
    base, _ = preset_params("moco_v2", args, subset)
    bank_set, query_set = data.eval_datasets(base)
    bank, queries = load_all(bank_set), load_all(query_set)

    pl.seed_everything(args.seed, workers=True)
    random_init = train_and_probe("random_init", SelfSupervisedMethod(base), bank, queries, args, train=False)
    rows = [new_row("random_init", ours=random_init)]
    random_knn, random_linear = random_init["knn"][-1], random_init["linear"]
    print(f"random_init: kNN {random_knn:.1f}%, linear {random_linear:.1f}%", flush=True)
    for name in args.presets:
        row = run_preset(name, bank, queries, args, subset, rows)
        for label, result in ((name, row["ours"]), (f"{name} (lightly)", row["peer"])):
            if args.budget == "long" and result is not None:
                epoch = crossing_epoch(result["knn"], random_knn + 2)
                print(f"{label}: kNN stays at or above random + 2 ({random_knn + 2:.1f}%) from epoch "
                      f"{epoch if epoch is not None else f'> {args.epochs}'}", flush=True)

    report = table(rows, random_knn, random_linear)  # run_preset wrote the outputs
    print(f"\n{args.encoder_arch} ({'CIFAR' if args.cifar_stem else 'ImageNet'} stem), {args.epochs} epochs on "
          f"{len(bank[1])} images of {source}, batch {args.batch_size}; kNN (k=200, T=0.1) and "
          f"linear probe on {len(queries[1])} held-out images. Outputs in {args.work_dir}\n")
    print(report)
    return rows


if __name__ == "__main__":
    main()
