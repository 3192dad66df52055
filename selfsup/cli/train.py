"""Command line for self-supervised pretraining.

    selfsup-train --preset byol --dataset_name cifar10 --batch_size 256 --trainer.devices 8 --trainer.strategy ddp
    selfsup-train --config run.yaml --lr 0.1          # a saved or hand-written configuration, then overrides
    selfsup-train --preset simclr --print_config > run.yaml
    python train.py ...                                # the same, from a checkout

``--preset`` picks a named preset (selfsup.config.PRESETS); every ModelParams field is a flag of the same name and
overrides it; runs shorter than 100 epochs get the preset's short-run recipe for the fields not given (``--recipe
paper`` keeps the published recipe; the run log prints which applied); every ``pl.Trainer`` argument is a flag under
``--trainer.`` (loggers: ``--trainer.logger CSVLogger``, TensorBoard by default; callbacks: ``--trainer.callbacks+
LearningRateMonitor``). ``--max_epochs`` sets both
ModelParams.max_epochs and the Trainer, unless ``--trainer.max_epochs`` is given. The flat flags of earlier versions
(``--accelerator gpu``, ``--transform_crop_size none``, ``--global_crop_scale 0.2 1``) still work (cli.common).

Every run writes ``<root_dir>/config.yaml``: the preset, every ModelParams field as resolved, the Trainer and run
arguments; ``selfsup-train --config <root_dir>/config.yaml`` reruns it exactly. The run ends by writing a checkpoint
and an embedding plot (``<root_dir>/embeddings/``: t-SNE of the validation embeddings coloured by label, a
nearest-neighbour retrieval grid, the probe accuracy per epoch) and printing what was learned: the validation kNN and
probe against the untrained encoder's (``--random_baseline``: one validation pass before training), and the paths.
A run holds ``<root_dir>/.selfsup.lock`` while it writes there, so a second run into the same folder stops before
it writes anything (train.lock).

Long runs: ``<root_dir>/checkpoints`` receives ``last.ckpt`` after every epoch (``--save_last_every_n_steps``: every
that many steps instead) and ``epoch=E-step=S.ckpt`` every ``--save_every_n_epochs`` epochs, all written atomically.
``--resume auto`` continues from the newest complete checkpoint there (or starts afresh if there is none), so the same
command line restarts a preempted job; ``--resume PATH`` from a given file. ``--seed`` (ModelParams.seed) seeds the
weight initialization and every global RNG (``pl.seed_everything``) besides the data order and augmentations.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import attr
import pytorch_lightning as pl
from jsonargparse import ArgumentParser, Namespace

from selfsup.cli.common import (
    add_fields,
    add_trainer,
    given_fields,
    migrate_argv,
    new_parser,
    save_config,
    trainer_arguments,
)
from selfsup.config.params import ModelParams
from selfsup.config.presets import PRESETS
from selfsup.config.recipes import SHORT_RUN_MAX_EPOCHS, with_short_run_recipe
from selfsup.eval.visualize import EMBEDDING_METHODS, EmbeddingPlots, plotting_available
from selfsup.train import checkpoints
from selfsup.train.lock import RunLock
from selfsup.train.module import SelfSupervisedMethod
from selfsup.train.summary import ProbeRecord, summary_block


def build_parser() -> ArgumentParser:
    parser = new_parser("selfsup-train", __doc__)
    parser.add_argument("--preset", default="moco_v2", choices=sorted(PRESETS),
                        help="named preset whose fields the flags override (default moco_v2)")
    parser.add_argument("--recipe", default="auto", choices=["auto", "paper"],
                        help=f"auto: runs under {SHORT_RUN_MAX_EPOCHS} epochs get the preset's short-run recipe "
                             "(shorter warmups, lower EMA momentum and SGD lr; the run log lists it) for the fields "
                             "not given; paper: the preset as published")
    parser.add_argument("--root_dir", default="runs", help="folder for logs, checkpoints and config.yaml")
    parser.add_argument("--checkpoint", type=Optional[str], default=None,
                        help="output checkpoint path (default <root_dir>/<preset>.ckpt)")
    parser.add_argument("--resume", type=Optional[str], default=None,
                        help="continue from a checkpoint; auto: the newest complete one of <root_dir>/checkpoints")
    parser.add_argument("--save_every_n_epochs", type=int, default=10,
                        help="keep a checkpoint every N epochs in <root_dir>/checkpoints (0: none)")
    parser.add_argument("--save_last_every_n_steps", type=int, default=0,
                        help="write last.ckpt every N optimizer steps instead of after every epoch")
    parser.add_argument("--embedding_plot", default="tsne" if plotting_available() else "none",
                        choices=[*EMBEDDING_METHODS, "none"],
                        help="2-D map of the validation embeddings written at the end of training (needs matplotlib, "
                             "the plot extra; umap also needs umap-learn)")
    parser.add_argument("--embedding_plot_every_n_epochs", type=int, default=0,
                        help="also write the plots every N epochs (0: at the end only)")
    parser.add_argument("--random_baseline", type=bool, default=True,
                        help="validate the untrained encoder before training (one validation pass), so the run's "
                             "closing summary and probe_accuracy.png compare the trained encoder with it")
    add_fields(parser, ModelParams)
    add_trainer(parser)
    return parser


def parse(parser: ArgumentParser, argv: Optional[Sequence[str]] = None) -> Namespace:
    """The parsed command line (``sys.argv`` by default), with the flat flags of earlier versions rewritten."""
    return parser.parse_args(migrate_argv(sys.argv[1:] if argv is None else argv, ModelParams))


def params_from_config(config: Namespace) -> ModelParams:
    """The preset with every field the command line or config file set, and the recipe ``--recipe`` selects."""
    return resolve_params(config)[0]


def resolve_params(config: Namespace) -> Tuple[ModelParams, str]:
    """:func:`params_from_config`, and the run-log line that says which recipe applied. With ``--recipe auto`` a run
    of fewer than SHORT_RUN_MAX_EPOCHS epochs gets the preset's short-run recipe (config.recipes) for the fields the
    command line and config file leave unset; a saved config lists every field, so its rerun applies nothing twice."""
    given = given_fields(config, ModelParams)
    build = PRESETS[config.preset]
    auto = config.recipe == "auto"
    params, changes = with_short_run_recipe(build, given, keep=given) if auto else (build(**given), "none")
    if not auto or params.max_epochs >= SHORT_RUN_MAX_EPOCHS:
        return params, f"recipe: {config.preset} as published (max_epochs {params.max_epochs})"
    return params, (
        f"recipe: {config.preset} short-run (max_epochs {params.max_epochs} < {SHORT_RUN_MAX_EPOCHS}; --recipe paper "
        f"keeps the published one): {changes}"
    )


def resume_path(resume: Optional[str], directory: str) -> Optional[str]:
    """The checkpoint to resume from: ``resume`` itself (checked to be complete), or for "auto" the newest complete
    checkpoint of ``directory`` (None when there is none yet)."""
    if resume is None:
        return None
    if resume != "auto":
        checkpoints.check_checkpoint_file(resume)
        return resume
    path = checkpoints.find_resume_checkpoint(directory)
    print(f"resume: {path}" if path else f"resume: no checkpoint in {directory} yet, starting afresh")
    return path


def main(argv: Optional[Sequence[str]] = None) -> str:
    """Pretrain as the command line says; returns the path of the final checkpoint."""
    parser = build_parser()
    config = parse(parser, argv)
    params, recipe = resolve_params(config)
    print(recipe)
    directory = os.path.join(config.root_dir, "checkpoints")
    ckpt_path = resume_path(config.resume, directory)
    pl.seed_everything(params.seed, verbose=False)  # weights and global RNG draws (the loader seeds itself)
    model = SelfSupervisedMethod(params)
    trainer_kwargs: Dict[str, Any] = trainer_arguments(parser, config)
    trainer_kwargs.setdefault("max_epochs", params.max_epochs)
    callbacks: List[pl.Callback] = [
        *trainer_kwargs.pop("callbacks", []),
        *checkpoints.checkpoint_callbacks(directory, config.save_every_n_epochs, config.save_last_every_n_steps),
    ]
    plots = None
    if config.embedding_plot != "none":
        info = model.pipeline.info
        plots = EmbeddingPlots(os.path.join(config.root_dir, "embeddings"), info.mean, info.std,
                               config.embedding_plot, config.embedding_plot_every_n_epochs)
        callbacks.append(plots)
    record = ProbeRecord()
    callbacks.append(record)
    plugins = [*trainer_kwargs.pop("plugins", []), checkpoints.AtomicCheckpointIO()]
    trainer = pl.Trainer(default_root_dir=config.root_dir, callbacks=callbacks, plugins=plugins, **trainer_kwargs)
    # rank 0 holds the root_dir for the whole run, from before config.yaml is written
    with RunLock(config.root_dir) if trainer.is_global_zero else contextlib.nullcontext():
        if trainer.is_global_zero:
            resolved = config.clone()
            for name, value in attr.asdict(params, recurse=False).items():
                resolved[name] = list(value) if isinstance(value, tuple) else value
            print(f"config: {save_config(parser, resolved, config.root_dir)}")
        if config.random_baseline:  # the freshly seeded encoder, also when resuming (fit loads the checkpoint later)
            trainer.validate(model, verbose=False)
        trainer.fit(model, ckpt_path=ckpt_path)
        if record.final_is_stale(trainer):
            trainer.validate(model, verbose=False)
        path = config.checkpoint or os.path.join(config.root_dir, f"{config.preset}.ckpt")
        trainer.save_checkpoint(path)
    if trainer.is_global_zero:
        metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
        print(f"metrics: {metrics}")
        print(summary_block(record, plots.written if plots is not None else [], path))
    return path


def run() -> None:
    """Console entry point (``selfsup-train``)."""
    main()


if __name__ == "__main__":  # python -m selfsup.cli.train, as the console script
    run()
