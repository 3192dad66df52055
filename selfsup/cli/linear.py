"""Command line of the linear probe.

    selfsup-linear --checkpoint example.ckpt [--max_epochs N] [--data_path P] [--precompute_features true]
    selfsup-linear --config probe.yaml --trainer.devices 2
    python linear_classifier.py ...   # the same, from a checkout

prints the final top-1 / top-5 test accuracy of the probe and the weighted-kNN accuracy of the frozen features
(training set as the bank, test set as the queries). Every :class:`LinearClassifierMethodParams` field is a flag of
the same name; fields not given come from the checkpoint (encoder and data) or the defaults (optimization). Trainer
arguments, config files and the saved ``<root_dir>/config.yaml`` work as for ``selfsup-train`` (cli.common).
"""

from __future__ import annotations

import sys
from typing import Dict, Optional, Sequence

import attr
import pytorch_lightning as pl
from jsonargparse import ArgumentParser

from selfsup.cli.common import (
    add_fields,
    add_trainer,
    given_fields,
    migrate_argv,
    new_parser,
    save_config,
    trainer_arguments,
)
from selfsup.eval import probes
from selfsup.eval.linear import LinearClassifierMethod, LinearClassifierMethodParams


def build_parser() -> ArgumentParser:
    parser = new_parser("selfsup-linear", __doc__)
    parser.add_argument("--checkpoint", required=True,
                        help="SelfSupervisedMethod checkpoint (selfsup-train writes one)")
    parser.add_argument("--root_dir", default="runs/linear", help="folder for logs and config.yaml")
    parser.add_argument("--seed", type=int, default=0, help="seed of the classifier initialization")
    add_fields(parser, LinearClassifierMethodParams)
    add_trainer(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """Train the probe, print and return the final valid_acc1 / valid_acc5 and the kNN accuracy (rank zero)."""
    parser = build_parser()
    config = parser.parse_args(migrate_argv(sys.argv[1:] if argv is None else argv, LinearClassifierMethodParams))
    pl.seed_everything(config.seed, workers=True)
    method = LinearClassifierMethod.from_moco_checkpoint(
        config.checkpoint, **given_fields(config, LinearClassifierMethodParams))
    trainer_kwargs = trainer_arguments(parser, config)
    trainer_kwargs.setdefault("max_epochs", method.params.max_epochs)
    trainer_kwargs.setdefault("enable_checkpointing", False)
    trainer = pl.Trainer(default_root_dir=config.root_dir, **trainer_kwargs)
    if trainer.is_global_zero:
        resolved = config.clone()
        for name, value in attr.asdict(method.params, recurse=False).items():
            resolved[name] = value
        save_config(parser, resolved, config.root_dir)
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


if __name__ == "__main__":  # python -m selfsup.cli.linear, as the console script
    run()
