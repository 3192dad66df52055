"""What the command lines share, built on jsonargparse (the argument parser under Lightning's LightningCLI).

- Every field of a params class is a flag of the same name, with the help text, type and default of its declaration
  (``--lr 0.3``, ``--use_lagging_model false``, ``--transform_crop_size null``, ``--global_crop_scale [0.08,1]``).
  Flags not given stay unset, so a preset or a checkpoint supplies them.
- Every ``pl.Trainer`` argument is a flag under ``--trainer.``, as in LightningCLI, with its class selection for
  ``--trainer.logger`` (TensorBoard by default; ``CSVLogger``, ``WandbLogger`` when wandb is installed) and
  ``--trainer.callbacks+``.
- ``--config run.yaml`` reads any of them from a file (later flags override it), ``--print_config`` prints the
  configuration and exits, and each run saves its resolved configuration, which reruns it exactly.
- The flat flags of earlier versions still work: ``--accelerator gpu`` means ``--trainer.accelerator gpu``,
  ``none`` means ``null``, ``--global_crop_scale 0.08 1`` means ``--global_crop_scale [0.08,1]``.

LightningCLI itself would put the params under ``--model.params.*``; building on jsonargparse keeps the fields
top-level flags and lets ``--preset`` supply defaults that the saved configuration records.
"""

from __future__ import annotations

import argparse
import json
import os
import typing
from typing import Any, Dict, List, Optional, Sequence

import attr
import pytorch_lightning as pl
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from selfsup.options import HELP, option_groups

# The Trainer flags of earlier versions, which were top-level; they now live under --trainer.
LEGACY_TRAINER_FLAGS = ("accelerator", "devices", "strategy", "num_nodes", "precision", "limit_train_batches",
                        "limit_val_batches", "log_every_n_steps", "accumulate_grad_batches", "max_steps")
CONFIG_FILE = "config.yaml"


def new_parser(prog: str, description: Optional[str]) -> ArgumentParser:
    """A parser with ``--config`` (and the ``--print_config`` that jsonargparse adds with it)."""
    parser = ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action=ActionConfigFile,
                        help="a YAML file of any of these arguments; flags after it override it")
    return parser


def add_fields(parser: ArgumentParser, cls: type) -> None:
    """One flag per field of the attrs params class ``cls``, grouped as its option groups, unset unless given."""
    hints = typing.get_type_hints(cls)
    for title, fields in option_groups(cls).items():
        group = parser.add_argument_group(f"{cls.__name__}: {title}")
        for field in fields:
            default = field.default.factory() if isinstance(field.default, attr.Factory) else field.default  # type: ignore[arg-type]
            help_text = f"{field.metadata.get(HELP, '')} (default: {default!r})".replace("%", "%%")  # argparse formats
            group.add_argument(f"--{field.name}", type=hints[field.name], default=argparse.SUPPRESS, help=help_text)


def add_trainer(parser: ArgumentParser) -> None:
    """The ``pl.Trainer`` arguments under ``--trainer.`` (its root folder is the command's ``--root_dir``)."""
    parser.add_class_arguments(pl.Trainer, "trainer", skip={"default_root_dir"}, instantiate=False,
                               fail_untyped=False)


def given_fields(config: Namespace, cls: type) -> Dict[str, Any]:
    """The fields of ``cls`` that the command line or a config file set."""
    return {f.name: config[f.name] for f in attr.fields(cls) if f.name in config}


def trainer_arguments(parser: ArgumentParser, config: Namespace) -> Dict[str, Any]:
    """The Trainer's keyword arguments of ``config``, with loggers and callbacks instantiated; unset ones left out
    (so Lightning's defaults apply)."""
    instantiated = parser.instantiate(config)
    return {name: value for name, value in vars(instantiated.trainer).items() if value is not None}


def migrate_argv(argv: Sequence[str], cls: type) -> List[str]:
    """``argv`` with the flat flags of earlier versions rewritten (module docstring)."""
    hints = typing.get_type_hints(cls)
    fields = attr.fields_dict(cls)
    out: List[str] = []
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        name = word[2:] if word.startswith("--") else None
        i += 1
        if name in LEGACY_TRAINER_FLAGS and name not in fields:
            out.append(f"--trainer.{name}")
            continue
        out.append(word)
        if name not in fields:
            continue
        origin = typing.get_origin(hints[name])
        values = []
        while i < len(words) and not words[i].startswith("--"):
            values.append(words[i])
            i += 1
        if origin in (tuple, list) and (len(values) != 1 or not values[0].startswith("[")):
            integers = int in typing.get_args(hints[name])  # e.g. Tuple[int, ...]: 0 stays 0, not 0.0
            out.append(json.dumps([_number_or_text(v, integers) for v in values]))
        else:
            out += ["null" if v.lower() == "none" else v for v in values]
    return out


def _number_or_text(text: str, integer: bool) -> Any:
    try:
        return int(text) if integer else float(text)
    except ValueError:
        return text


def save_config(parser: ArgumentParser, config: Namespace, root_dir: str) -> str:
    """Write ``config`` (every argument, unset ones as null) to ``<root_dir>/config.yaml``; returns the path."""
    config = config.clone()
    config.pop("config", None)  # the files it came from: their contents are in it
    os.makedirs(root_dir, exist_ok=True)
    path = os.path.join(root_dir, CONFIG_FILE)
    with open(path, "w") as f:
        f.write(parser.dump(config, skip_none=False, skip_validation=True))
    return path
