"""Command line for self-supervised pretraining.

    selfsup-train --preset byol --dataset_name cifar10 --batch_size 256 --devices 8 --strategy ddp
    python train.py ...   # the same, from a checkout

``--preset`` picks a named preset (selfsup.config.PRESETS); every ModelParams field is a flag of the same name
(``--lr 0.1``, ``--use_lagging_model false``, ``--transform_crop_size none``, ``--global_crop_scale 0.2 1``); only
flags given on the command line override the preset. ``--max_epochs`` sets both ModelParams.max_epochs and the
Trainer. The run ends by writing a checkpoint and printing its path.

Long runs: ``<root_dir>/checkpoints`` receives ``last.ckpt`` after every epoch (``--save_last_every_n_steps``: every
that many steps instead) and ``epoch=E-step=S.ckpt`` every ``--save_every_n_epochs`` epochs, all written atomically.
``--resume auto`` continues from the newest complete checkpoint there (or starts afresh if there is none), so the same
command line restarts a preempted job; ``--resume PATH`` from a given file. ``--seed`` (ModelParams.seed) seeds the
weight initialization and every global RNG (``pl.seed_everything``) besides the data order and augmentations.
"""

from __future__ import annotations

import argparse
import os
import typing
from typing import Any, Callable, Dict, List, Optional, Sequence

import attr
import pytorch_lightning as pl

from selfsup.config.fields import ModelParams
from selfsup.config.presets import PRESETS
from selfsup.train import longrun
from selfsup.train.module import SelfSupervisedMethod

TRAINER_FLAGS = (
    "accelerator",
    "devices",
    "strategy",
    "num_nodes",
    "precision",
    "limit_train_batches",
    "limit_val_batches",
    "log_every_n_steps",
    "accumulate_grad_batches",
    "max_steps",
)


def parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_optional(text: str) -> Any:
        return None if text.lower() == "none" else parse(text)

    parse_optional.__name__ = getattr(parse, "__name__", "value")
    return parse_optional


def add_field(parser: argparse._ActionsContainer, field: attr.Attribute, annotation: Any) -> None:
    """One flag per ModelParams field, typed after its annotation; absent flags leave the preset's value."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    optional = origin is typing.Union and type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else annotation
    # attrs' stubs declare Factory as a function returning the produced value; at runtime it is a class.
    from_factory = isinstance(field.default, attr.Factory)  # type: ignore[arg-type]
    kwargs: Dict[str, Any] = dict(
        default=argparse.SUPPRESS,
        help=f"(default: {field.default!r})" if not from_factory else "(default: [])",
    )
    base_origin = typing.get_origin(base)
    if base_origin in (tuple, typing.Tuple):
        kwargs.update(nargs=len(typing.get_args(base)), type=float, metavar=("LOW", "HIGH"))
    elif base_origin in (list, typing.List):
        kwargs.update(nargs="*", type=str)
    else:
        parsers: Dict[Any, Callable[[str], Any]] = {bool: parse_bool, int: int, float: float, str: str}
        parse = parsers[base]
        kwargs["type"] = _optional(parse) if optional else parse
    parser.add_argument(f"--{field.name}", **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="moco_v2", choices=sorted(PRESETS), help="named preset (default moco_v2)")
    parser.add_argument("--checkpoint", default=None, help="output checkpoint path (default <root_dir>/<preset>.ckpt)")
    parser.add_argument("--root_dir", default="runs", help="directory for logs and checkpoints (default runs)")
    parser.add_argument("--resume", default=None, metavar="PATH|auto",
                        help="continue from a checkpoint; auto: the newest complete one of <root_dir>/checkpoints")
    parser.add_argument("--save_every_n_epochs", type=int, default=10,
                        help="keep a checkpoint every N epochs in <root_dir>/checkpoints (0: none; default 10)")
    parser.add_argument("--save_last_every_n_steps", type=int, default=0,
                        help="write last.ckpt every N optimizer steps instead of after every epoch (default 0)")
    trainer = parser.add_argument_group("Trainer")
    trainer.add_argument("--accelerator", default="auto")
    trainer.add_argument("--devices", default="auto", help="number of devices, a list, or auto")
    trainer.add_argument("--strategy", default="auto", help="e.g. ddp")
    trainer.add_argument("--num_nodes", type=int, default=1)
    trainer.add_argument("--precision", default="32-true", help="e.g. 16-mixed, bf16-mixed (GPU)")
    trainer.add_argument("--limit_train_batches", type=float, default=None)
    trainer.add_argument("--limit_val_batches", type=float, default=None)
    trainer.add_argument("--log_every_n_steps", type=int, default=50)
    trainer.add_argument("--accumulate_grad_batches", type=int, default=1)
    trainer.add_argument("--max_steps", type=int, default=-1)
    fields = parser.add_argument_group("ModelParams fields (override the preset)")
    hints = typing.get_type_hints(ModelParams)
    for field in attr.fields(ModelParams):
        add_field(fields, field, hints[field.name])
    return parser


def parse_devices(text: str) -> Any:
    return int(text) if text.isdigit() else text


def params_from_args(args: argparse.Namespace) -> ModelParams:
    overrides = {f.name: getattr(args, f.name) for f in attr.fields(ModelParams) if hasattr(args, f.name)}
    return PRESETS[args.preset](**overrides)


def resume_path(resume: Optional[str], directory: str) -> Optional[str]:
    """The checkpoint to resume from: ``resume`` itself (checked to be complete), or for "auto" the newest complete
    checkpoint of ``directory`` (None when there is none yet)."""
    if resume is None:
        return None
    if resume != "auto":
        longrun.check_checkpoint_file(resume)
        return resume
    path = longrun.find_resume_checkpoint(directory)
    print(f"resume: {path}" if path else f"resume: no checkpoint in {directory} yet, starting afresh")
    return path


def main(argv: Optional[Sequence[str]] = None) -> str:
    args = build_parser().parse_args(argv)
    params = params_from_args(args)
    directory = os.path.join(args.root_dir, "checkpoints")
    ckpt_path = resume_path(args.resume, directory)
    pl.seed_everything(params.seed, verbose=False)  # weights and global RNG draws (the loader seeds itself)
    model = SelfSupervisedMethod(params)
    trainer_kwargs: Dict[str, Any] = {name: getattr(args, name) for name in TRAINER_FLAGS}
    trainer_kwargs["devices"] = parse_devices(args.devices)
    trainer_kwargs = {k: v for k, v in trainer_kwargs.items() if v is not None}
    callbacks: List[pl.Callback] = [
        *longrun.checkpoint_callbacks(directory, args.save_every_n_epochs, args.save_last_every_n_steps)
    ]
    trainer = pl.Trainer(max_epochs=params.max_epochs, default_root_dir=args.root_dir, callbacks=callbacks,
                         plugins=[longrun.AtomicCheckpointIO()], **trainer_kwargs)
    trainer.fit(model, ckpt_path=ckpt_path)
    path = args.checkpoint or os.path.join(args.root_dir, f"{args.preset}.ckpt")
    trainer.save_checkpoint(path)
    if trainer.is_global_zero:
        metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
        print(f"metrics: {metrics}")
        print(f"checkpoint: {path}")
    return path


def run() -> None:
    """Console entry point (``selfsup-train``)."""
    main()
