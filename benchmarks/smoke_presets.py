"""Smoke run of every preset: a few optimizer steps on the synthetic data and, when given, an ImageFolder, printing
the training loss of every step as a markdown table (a quick check that each method trains on a dataset).

Example (the trajectories in the methods issue's closing note):
    python benchmarks/smoke_presets.py --data-path benchmarks/results/quality/data_seed0_1000_500
"""

from __future__ import annotations

import argparse
import os
import warnings
from typing import Any, Dict, List, Optional, Sequence

import pytorch_lightning as pl

from selfsup.config import PRESETS, small_run_overrides
from selfsup.train.module import SelfSupervisedMethod

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=sorted(PRESETS), choices=sorted(PRESETS))
    parser.add_argument("--data-path", default=None, help="also run on this ImageFolder (train/<class>/<image>)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


class StepLosses(pl.Callback):
    def __init__(self) -> None:
        self.values: List[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.values.append(float(trainer.callback_metrics["step_train_loss"]))


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    datasets: Dict[str, Dict[str, Any]] = {
        "synthetic": dict(dataset_name="synthetic", synthetic_train_size=args.steps * args.batch_size)
    }
    if args.data_path:
        datasets["imagefolder"] = dict(dataset_name="imagefolder", data_path=args.data_path)
    print(f"| preset | data | step_train_loss, steps 1-{args.steps} |\n|---|---|---|")
    for name in args.presets:
        for label, dataset in datasets.items():
            pl.seed_everything(args.seed, verbose=False)
            fields = small_run_overrides(PRESETS[name](), args.batch_size)
            fields.update(use_cifar_stem=False, num_data_workers=0)
            model = SelfSupervisedMethod(PRESETS[name](**fields, **dataset, max_epochs=1))
            losses = StepLosses()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trainer = pl.Trainer(
                    accelerator="cpu",
                    max_steps=args.steps,
                    limit_val_batches=0,
                    logger=False,
                    enable_checkpointing=False,
                    enable_progress_bar=False,
                    enable_model_summary=False,
                    callbacks=[losses],
                )
                trainer.fit(model)
            print(f"| {name} | {label} | {' → '.join(f'{v:.4g}' for v in losses.values)} |", flush=True)


if __name__ == "__main__":
    main()
