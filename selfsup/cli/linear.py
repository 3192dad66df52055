"""Command line of the linear probe.

    selfsup-linear --checkpoint example.ckpt [--max_epochs N] [--data_path P] [--precompute_features true]
    python linear_classifier.py ...   # the same, from a checkout

prints the final top-1 / top-5 test accuracy of the probe and the weighted-kNN accuracy of the frozen features
(training set as the bank, test set as the queries). Every :class:`LinearClassifierMethodParams` field is a flag of
the same name; fields not given come from the checkpoint (encoder and data) or the defaults (optimization).
"""

from __future__ import annotations

import argparse
import typing
from typing import Dict, Optional, Sequence

import attr
import pytorch_lightning as pl

from selfsup.cli.train import add_field, parse_devices
from selfsup.eval import probes
from selfsup.eval.linear import LinearClassifierMethod, LinearClassifierMethodParams


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="SelfSupervisedMethod checkpoint (train.py writes one)")
    parser.add_argument("--root_dir", default="runs/linear", help="directory for logs (default runs/linear)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the classifier initialization (default 0)")
    trainer = parser.add_argument_group("Trainer")
    trainer.add_argument("--accelerator", default="auto")
    trainer.add_argument("--devices", default="auto", help="number of devices, a list, or auto")
    trainer.add_argument("--strategy", default="auto", help="e.g. ddp")
    trainer.add_argument("--precision", default="32-true", help="e.g. 16-mixed, bf16-mixed (GPU)")
    trainer.add_argument("--limit_train_batches", type=float, default=None)
    trainer.add_argument("--limit_val_batches", type=float, default=None)
    fields = parser.add_argument_group("LinearClassifierMethodParams fields (override the checkpoint and defaults)")
    hints = typing.get_type_hints(LinearClassifierMethodParams)
    for field in attr.fields(LinearClassifierMethodParams):
        add_field(fields, field, hints[field.name])
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """Train the probe, print and return the final valid_acc1 / valid_acc5 and the kNN accuracy (rank zero)."""
    args = build_parser().parse_args(argv)
    pl.seed_everything(args.seed, workers=True)
    fields = attr.fields(LinearClassifierMethodParams)
    overrides = {f.name: getattr(args, f.name) for f in fields if hasattr(args, f.name)}
    method = LinearClassifierMethod.from_moco_checkpoint(args.checkpoint, **overrides)
    limits = {name: getattr(args, name) for name in ("limit_train_batches", "limit_val_batches")}
    trainer = pl.Trainer(
        max_epochs=method.params.max_epochs,
        default_root_dir=args.root_dir,
        accelerator=args.accelerator,
        devices=parse_devices(args.devices),
        strategy=args.strategy,
        precision=args.precision,
        enable_checkpointing=False,
        **{name: value for name, value in limits.items() if value is not None},
    )
    trainer.fit(method)
    results = {name: float(trainer.callback_metrics[name]) for name in ("valid_acc1", "valid_acc5")}
    if trainer.is_global_zero:
        method.to(trainer.strategy.root_device)
        results["knn_acc"] = method.knn_accuracy()
        print(
            f"linear probe: top-1 {results['valid_acc1']:.2f}%, top-5 {results['valid_acc5']:.2f}%; "
            f"kNN (k={probes.KNN_K}, T={probes.KNN_TEMPERATURE}) top-1 {results['knn_acc']:.2f}%"
        )
    return results


def run() -> None:
    """Console entry point (``selfsup-linear``)."""
    main()
