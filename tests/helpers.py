"""Shared test helpers: tiny configurations and a quiet CPU Trainer."""

from __future__ import annotations

import warnings
from typing import Any, Callable

import pytorch_lightning as pl

from model_params import ModelParams

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
    """A preset shrunk for CPU tests: narrow heads, few prototypes and local crops, a queue of 4 batches."""
    fields = dict(TINY)
    full = preset()
    if full.uses_queue:
        fields["K"] = 32
    if full.loss_type in ("dino", "swav"):
        fields.update(
            num_prototypes=16,
            swav_queue_length=16 if full.swav_queue_length else 0,
            num_local_crops=min(full.num_local_crops, 2),
        )
    if full.prediction_mlp_hidden_dim is not None:
        fields["prediction_mlp_hidden_dim"] = 16
    fields.update(overrides)
    return preset(**fields)


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
