"""Command line of the evaluation suite (selfsup.eval.suite).

    selfsup-eval --checkpoint simclr.ckpt byol.ckpt --protocols knn linear finetune lowshot --out_dir runs/eval
    selfsup-eval --checkpoint run.ckpt --data_path /data/flowers --dataset_name imagefolder   # transfer
    selfsup-eval --checkpoint run.ckpt --random_baseline true --label_fractions 0.01 0.1 --trainer.accelerator gpu

evaluates each checkpoint (one report row each; ``--random_baseline true`` adds the first one's architecture with
random weights) by every protocol asked and writes ``<out_dir>/eval.json`` (every number, the settings, the
checkpoints' pretraining fields, the seeds) and ``<out_dir>/eval.md`` (the table), printing the table. The data is the
checkpoint's unless ``--dataset_name`` / ``--data_path`` say otherwise. The linear probe's flags are
``selfsup-linear``'s (``--lr``, ``--max_epochs``, ``--batch_size``, ...), fine-tuning's start with ``finetune_``;
``--trainer.*`` flags apply to every Trainer of the run (the protocols set max_epochs themselves).
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, List, Optional, Sequence

import pytorch_lightning as pl
from jsonargparse import ArgumentParser
from pytorch_lightning.utilities import rank_zero_only

from selfsup.cli.common import (
    add_fields,
    add_trainer,
    given_fields,
    migrate_argv,
    new_parser,
    save_config,
    trainer_arguments,
)
from selfsup.data.sources import DataSourceOptions
from selfsup.eval.finetune import FineTuneOptions
from selfsup.eval.linear import ProbeOptions
from selfsup.eval.suite import Evaluation, SuiteOptions, markdown

FIELD_GROUPS = (SuiteOptions, ProbeOptions, FineTuneOptions, DataSourceOptions)


def build_parser() -> ArgumentParser:
    parser = new_parser("selfsup-eval", __doc__)
    parser.add_argument("--checkpoint", type=List[str], required=True,
                        help="one or more SelfSupervisedMethod checkpoints (selfsup-train writes them)")
    parser.add_argument("--out_dir", default="runs/eval", help="folder for eval.json, eval.md and config.yaml")
    parser.add_argument("--encoder_image_size", type=Optional[int], default=None,
                        help="a ViT's image size when the evaluation images are another size than its pretraining "
                        "images (its position embeddings are interpolated); None: the checkpoint's")
    for cls in FIELD_GROUPS:
        add_fields(parser, cls)
    add_trainer(parser)
    return parser


def migrate(argv: Sequence[str]) -> List[str]:
    """``--checkpoint a b`` and the list fields written as words (``--protocols knn linear``) as JSON lists."""
    words = list(argv)
    for cls in FIELD_GROUPS:
        words = migrate_argv(words, cls)
    out: List[str] = []
    i = 0
    while i < len(words):
        out.append(words[i])
        i += 1
        if out[-1] == "--checkpoint":
            paths = []
            while i < len(words) and not words[i].startswith("--"):
                paths.append(words[i])
                i += 1
            out.append(paths[0] if len(paths) == 1 and paths[0].startswith("[") else json.dumps(paths))
    return out


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the suite; print the table and return the report."""
    parser = build_parser()
    config = parser.parse_args(migrate(sys.argv[1:] if argv is None else argv))
    if not config.checkpoint:
        parser.error("--checkpoint: expected one or more checkpoint files")
    trainer_kwargs = trainer_arguments(parser, config)
    if "max_epochs" in trainer_kwargs:
        parser.error("--trainer.max_epochs: each protocol sets its own length; use --max_epochs (the linear probe) "
                     "and --finetune_epochs")
    if trainer_kwargs.get("limit_val_batches") == 0:
        parser.error("--trainer.limit_val_batches 0: the linear and fine-tuning protocols are scored on the test split")
    data_fields = given_fields(config, DataSourceOptions)
    if config.encoder_image_size is not None:
        data_fields["encoder_image_size"] = config.encoder_image_size
    suite = SuiteOptions(**given_fields(config, SuiteOptions))

    def make_trainer(max_epochs: int, root_dir: str) -> pl.Trainer:
        defaults = {"logger": False, "enable_checkpointing": False, "enable_model_summary": False,
                    "check_val_every_n_epoch": max_epochs}
        return pl.Trainer(**{**defaults, **trainer_kwargs, "max_epochs": max_epochs, "default_root_dir": root_dir})

    evaluation = Evaluation(config.checkpoint, suite, config.out_dir, make_trainer,
                            {**given_fields(config, ProbeOptions), **data_fields},
                            {**given_fields(config, FineTuneOptions), **data_fields})
    if rank_zero_only.rank == 0:  # type: ignore[attr-defined]
        save_config(parser, config, config.out_dir)
    report = evaluation.run()
    if rank_zero_only.rank == 0:  # type: ignore[attr-defined]  # (set from the environment)
        print(markdown(report))
        print(f"report: {config.out_dir}/eval.json, {config.out_dir}/eval.md")
    return report


def run() -> None:
    """Console entry point (``selfsup-eval``)."""
    main()


if __name__ == "__main__":  # python -m selfsup.cli.eval, as the console script
    run()
