"""Replication of the BYOL batch-norm ablation (Fetterman & Albrecht 2020, untitled-ai blog "Understanding
self-supervised and contrastive learning with Bootstrap Your Own Latent"). The post found that BYOL, which has no
negatives, learned only with batch norm in its MLP heads and otherwise collapsed (every embedding alike: positive and
negative cosines both near 1); this script reruns its configurations.

    python train_blog.py --epochs 10 --seeds 0 1 2 --dataset_name cifar10 --data_path /data --accelerator gpu
    python train_blog.py --small --epochs 5 --batch_size 64   # CPU-sized: synthetic 32 px, ResNet-18, ImageNet stem
    python train_blog.py --data-path ../shared/datasets/cifar10 --configs base no_norm --seeds 0 1 2

Configurations (CONFIGS), each a few overrides of BLOG_BASE (BYOLParams with the blog's SGD at lr 0.8):

    base        BN in the projection and prediction MLPs
    pred_only   BN only in the prediction MLP
    proj_only   BN only in the projection MLP
    no_norm     no normalization in either MLP
    layer_norm  LayerNorm instead of BN in both
    xent        no normalization, but a contrastive cross-entropy loss with a queue of negatives (lr 0.02)

plus ``random_init``: the validation probes on the untrained encoder, the reference a useful run must beat. Every run
logs to TensorBoard under ``<out_dir>/<config>/seed_<seed>``. At the end ``<out_dir>/summary.csv`` holds one row per
run (final valid_class_acc, valid_knn_acc, and step_pos_cos / step_neg_cos averaged over the last epoch's steps) and
``<out_dir>/summary.png`` shows the accuracies per configuration and the cosine curves.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import attr
import pytorch_lightning as pl
from matplotlib.figure import Figure  # rendered by the Agg canvas, no GUI backend or pyplot state
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only

from selfsup.config.params import ModelParams
from selfsup.config.presets import BYOLParams
from selfsup.config.recipes import SHORT_RUN_MAX_EPOCHS, describe_overrides, with_short_run_recipe
from selfsup.train.module import SelfSupervisedMethod

BLOG_BASE: Dict[str, Any] = dict(optimizer_name="sgd", exclude_bias_and_norm_from_lars=False, lr=0.8)
CONFIGS: Dict[str, Dict[str, Any]] = {
    "base": {},
    "pred_only": dict(mlp_normalization=None, prediction_mlp_normalization="bn"),
    "proj_only": dict(prediction_mlp_normalization=None),
    "no_norm": dict(mlp_normalization=None),
    "layer_norm": dict(mlp_normalization="ln"),
    "xent": dict(mlp_normalization=None, loss_type="contrastive", use_negative_examples_from_queue=True, lr=0.02),
}
RANDOM_INIT = "random_init"
# --small: a few CPU minutes per configuration; a 1024-key queue (65536 would stay mostly random on 2048 images).
SMALL: Dict[str, Any] = dict(
    dataset_name="synthetic",
    use_cifar_stem=False,
    synthetic_train_size=2048,
    synthetic_val_size=512,
    batch_size=128,
    K=1024,
    num_data_workers=2,
)
# ModelParams fields with a flag of the same name (None = not given: the preset's, or --small's value).
DATA_FLAGS = (
    "dataset_name",
    "data_path",
    "batch_size",
    "num_data_workers",
    "synthetic_train_size",
    "synthetic_val_size",
)
METRICS = ("valid_class_acc", "valid_knn_acc", "final_pos_cos", "final_neg_cos")


def blog_params(config: str, overrides: Mapping[str, Any], short_run: bool = False) -> ModelParams:
    """The validated params of one configuration; ``overrides`` (data, scale) apply to every configuration. With
    ``short_run``, a run of fewer than SHORT_RUN_MAX_EPOCHS epochs gets BYOL's short-run recipe (config.recipes) for
    the fields neither the configuration nor ``overrides`` set (the blog's SGD lr included: it was chosen for full
    runs)."""
    fields = {**BLOG_BASE, **overrides, **CONFIGS[config]}
    if not short_run:
        return BYOLParams(**fields)
    return with_short_run_recipe(BYOLParams, fields, keep={*CONFIGS[config], *overrides})[0]


class CosineCurves(pl.Callback):
    """Records (epoch, step, step_pos_cos, step_neg_cos) after every training step."""

    def __init__(self) -> None:
        self.rows: List[Tuple[int, int, float, float]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        metrics = trainer.callback_metrics
        self.rows.append(
            (trainer.current_epoch, trainer.global_step, float(metrics["step_pos_cos"]), float(metrics["step_neg_cos"]))
        )

    def final(self, column: int) -> float:
        """Mean of a column over the steps of the last epoch."""
        last = [row[column] for row in self.rows if row[0] == self.rows[-1][0]]
        return sum(last) / len(last)


def _metric(trainer: pl.Trainer, name: str) -> float:
    value = trainer.callback_metrics.get(name)
    return math.nan if value is None else float(value)


def run_blog(
    configs: Sequence[str],
    seeds: Sequence[int],
    overrides: Mapping[str, Any],
    out_dir: str,
    trainer_kwargs: Optional[Mapping[str, Any]] = None,
    short_run: bool = False,
) -> List[Dict[str, Any]]:
    """Pretrain every (configuration, seed), then the random-init reference per seed; write the summary CSV and
    figure (on rank zero) and return the summary rows. ``overrides`` are ModelParams fields for every run
    (max_epochs included); ``trainer_kwargs`` go to every pl.Trainer (accelerator, devices, limit_train_batches...);
    ``short_run``: see :func:`blog_params`."""
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise ValueError(f"configs: unknown {unknown}; expected names from {list(CONFIGS)}")
    # all validated before any training
    runs = [(config, blog_params(config, overrides, short_run)) for config in configs]
    for config, params in runs:
        published = blog_params(config, overrides)
        print(f"{config}: recipe: {describe_overrides(published, attr.asdict(params, recurse=False))}", flush=True)
    reference = blog_params("base", overrides, short_run)
    rows: List[Dict[str, Any]] = []
    curves: Dict[Tuple[str, int], CosineCurves] = {}
    for seed in seeds:
        for config, params in runs:
            pl.seed_everything(seed, workers=True)
            recorder = CosineCurves()
            trainer = _trainer(params, out_dir, config, seed, [recorder], trainer_kwargs)
            trainer.fit(SelfSupervisedMethod(params))
            curves[config, seed] = recorder
            rows.append(_summary_row(config, seed, trainer, recorder.final(2), recorder.final(3)))
        pl.seed_everything(seed, workers=True)
        trainer = _trainer(reference, out_dir, RANDOM_INIT, seed, [], trainer_kwargs)
        trainer.validate(SelfSupervisedMethod(reference), verbose=False)
        rows.append(_summary_row(RANDOM_INIT, seed, trainer, math.nan, math.nan))
    write_summary(rows, curves, out_dir)
    return rows


def _summary_row(config: str, seed: int, trainer: pl.Trainer, pos_cos: float, neg_cos: float) -> Dict[str, Any]:
    return dict(
        config=config,
        seed=seed,
        valid_class_acc=_metric(trainer, "valid_class_acc"),
        valid_knn_acc=_metric(trainer, "valid_knn_acc"),
        final_pos_cos=pos_cos,
        final_neg_cos=neg_cos,
    )


def _trainer(
    params: ModelParams,
    out_dir: str,
    config: str,
    seed: int,
    callbacks: List[pl.Callback],
    trainer_kwargs: Optional[Mapping[str, Any]],
) -> pl.Trainer:
    settings: Dict[str, Any] = dict(log_every_n_steps=10, enable_checkpointing=False, enable_model_summary=False)
    settings.update(trainer_kwargs or {})
    return pl.Trainer(
        max_epochs=params.max_epochs,
        logger=TensorBoardLogger(out_dir, name=config, version=f"seed_{seed}"),
        callbacks=callbacks,
        **settings,
    )


def mean_by_config(rows: Sequence[Mapping[str, Any]]) -> Dict[str, Dict[str, float]]:
    """Per configuration (in order of appearance), the mean of each summary metric over seeds."""
    table: Dict[str, Dict[str, float]] = {}
    for config in dict.fromkeys(row["config"] for row in rows):
        own = [row for row in rows if row["config"] == config]
        table[config] = {name: sum(row[name] for row in own) / len(own) for name in METRICS}
    return table


@rank_zero_only
def write_summary(
    rows: Sequence[Mapping[str, Any]], curves: Mapping[Tuple[str, int], CosineCurves], out_dir: str
) -> None:
    """summary.csv (one row per run) and summary.png (accuracies, cosine curves); prints the per-config means."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "summary.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["config", "seed", *METRICS])
        writer.writeheader()
        writer.writerows(rows)
    table = mean_by_config(rows)
    print(f"{'config':<12}" + "".join(f"{name:>17}" for name in METRICS))
    for config, values in table.items():
        print(f"{config:<12}" + "".join(f"{values[name]:>17.3f}" for name in METRICS))

    figure = Figure(figsize=(17, 4.5), layout="tight")
    bars, positive, negative = figure.subplots(1, 3)
    names = [c for c in table if c != RANDOM_INIT]
    for offset, metric in ((-0.2, "valid_class_acc"), (0.2, "valid_knn_acc")):
        bars.bar([i + offset for i in range(len(names))], [table[c][metric] for c in names], 0.4, label=metric)
        if RANDOM_INIT in table:
            bars.axhline(table[RANDOM_INIT][metric], linestyle="--", color="C0" if offset < 0 else "C1",
                         label=f"{metric}, random init")
    bars.set_xticks(range(len(names)), names, rotation=30)
    bars.set_ylabel("accuracy (%)")
    bars.set_title("final validation probes")
    bars.legend(fontsize=7)
    for axis, column, title in ((positive, 2, "step_pos_cos"), (negative, 3, "step_neg_cos")):
        for index, config in enumerate(names):
            runs = [recorder for (name, _), recorder in curves.items() if name == config]
            for run, recorder in enumerate(runs):  # one line per seed, one colour and legend entry per config
                axis.plot([row[1] for row in recorder.rows], [row[column] for row in recorder.rows],
                          color=f"C{index}", alpha=0.8, label=config if run == 0 else None)
        axis.set_xlabel("step")
        axis.set_title(title)
        axis.set_ylim(-0.1, 1.05)
        axis.legend(fontsize=7)
    figure.savefig(os.path.join(out_dir, "summary.png"), dpi=120)


def parse_devices(text: str) -> Any:
    """A device count, or Lightning's other forms ("auto", "0,1")."""
    return int(text) if text.isdigit() else text


def _count_or_fraction(text: str) -> float | int:
    return int(text) if text.isdigit() else float(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfsup-blog", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10, help="pretraining epochs per run (default 10)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds, one run per config each")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), metavar="CONFIG",
                        help=f"subset of {', '.join(CONFIGS)} (default all)")
    parser.add_argument("--small", action="store_true",
                        help=f"CPU-sized runs: {SMALL} (other flags override; --data-path replaces its images)")
    parser.add_argument("--dataset_name", default=None, help="default synthetic")
    parser.add_argument("--data_path", "--data-path", default=None,
                        help="an image folder (train/<class>/..., val/ optional: else holdout_fraction of train is "
                             "held out for the probes); sets --dataset_name imagefolder unless it is given")
    parser.add_argument("--recipe", default="auto", choices=["auto", "paper"],
                        help=f"auto: runs under {SHORT_RUN_MAX_EPOCHS} epochs get BYOL's short-run recipe for the "
                             "fields a configuration does not set (printed per configuration); paper: as published")
    parser.add_argument("--batch_size", type=int, default=None, help="per device (default 256, --small 128)")
    parser.add_argument("--num_data_workers", type=int, default=None)
    parser.add_argument("--synthetic_train_size", type=int, default=None, help="synthetic: training images")
    parser.add_argument("--synthetic_val_size", type=int, default=None, help="synthetic: validation images")
    parser.add_argument("--out_dir", default="runs/blog", help="TensorBoard logs, summary.csv, summary.png")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--devices", default="auto", help="number of devices, a list, or auto")
    parser.add_argument("--strategy", default="auto", help="e.g. ddp")
    parser.add_argument("--limit_train_batches", type=_count_or_fraction, default=None,
                        help="training batches per epoch: a count (2) or a fraction (0.25)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    args = build_parser().parse_args(argv)
    trainer_kwargs: Dict[str, Any] = dict(
        accelerator=args.accelerator, devices=parse_devices(args.devices), strategy=args.strategy
    )
    if args.limit_train_batches is not None:
        trainer_kwargs["limit_train_batches"] = args.limit_train_batches
    return run_blog(args.configs, args.seeds, run_overrides(args), args.out_dir, trainer_kwargs, args.recipe == "auto")


def run_overrides(args: argparse.Namespace) -> Dict[str, Any]:
    """The ModelParams fields every configuration gets from the command line: --small's sizes, then a --data-path
    folder in place of --small's synthetic images, then the flags given explicitly."""
    overrides: Dict[str, Any] = {"dataset_name": "synthetic", **(SMALL if args.small else {})}
    if args.data_path is not None:
        overrides["dataset_name"] = "imagefolder"
    given = {name: getattr(args, name) for name in DATA_FLAGS}
    overrides.update({name: value for name, value in given.items() if value is not None}, max_epochs=args.epochs)
    return overrides


def run() -> None:
    """Console entry point (``selfsup-blog``)."""
    main()


if __name__ == "__main__":  # python -m selfsup.cli.blog, as the console script
    run()
