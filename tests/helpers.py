"""Shared test helpers: tiny configurations and a quiet CPU Trainer."""

from __future__ import annotations

import warnings
from os import PathLike
from typing import Any, Callable

import pytorch_lightning as pl
import torch

from selfsup.config import ModelParams, small_run_overrides
from selfsup.methods import PairwiseCriterion
from selfsup.train.module import SelfSupervisedMethod

# Small enough for a CPU step in well under a second, large enough for BatchNorm and a queue.
TINY = dict(
    dataset_name="synthetic",
    batch_size=8,
    synthetic_train_size=32,
    synthetic_val_size=32,
    synthetic_image_size=32,
    use_cifar_stem=False,
    num_data_workers=0,
    mlp_hidden_dim=64,
    dim=32,
    max_epochs=1,
)


def tiny(preset: Callable[..., ModelParams], **overrides: Any) -> ModelParams:
    """A preset shrunk for CPU tests (model_params.small_run_overrides at batch 8, synthetic 32 px data)."""
    return preset(**{**TINY, **small_run_overrides(preset(), TINY["batch_size"]), **overrides})


def cpu_trainer(**kwargs: Any) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        max_epochs=1,
    )
    defaults.update(kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pl.Trainer(**defaults)


def reloaded(trainer: pl.Trainer, path: PathLike) -> SelfSupervisedMethod:
    """The trainer's module saved as a checkpoint at ``path`` and loaded back, asserted equal to it tensor by
    tensor."""
    trainer.save_checkpoint(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's notes on loading a checkpoint without its Trainer
        loaded = SelfSupervisedMethod.load_from_checkpoint(path)
    original, restored = trainer.lightning_module.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    return loaded


def build_criterion(params: ModelParams) -> PairwiseCriterion:
    """The criterion of ``params``, as its method's joint-embedding step builds it."""
    return params.method.build_criterion(params)
