"""The optimizer and per-step schedule a run's optimization options select, for any module (the pretraining
LightningModule, or a benchmark's peer model trained with the same recipe)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence, Tuple

import torch
from torch import nn

from selfsup.optim.groups import parameter_groups
from selfsup.optim.lars import LARS
from selfsup.optim.options import OptimOptions
from selfsup.optim.schedules import CosineValue, LrAndWeightDecaySchedule, WarmupCosineSchedule

if TYPE_CHECKING:  # Lightning's type only: choosing an optimizer imports no training library
    from pytorch_lightning.utilities.types import OptimizerLRSchedulerConfig

def optimizer_and_schedule(
    module: nn.Module,
    params: OptimOptions,
    total_steps: int,
    epochs: int,
    constant_lr_modules: Sequence[nn.Module] = (),
    separate_modules: Sequence[nn.Module] = (),
) -> OptimizerLRSchedulerConfig:
    """SGD, LARS or AdamW over ``module``'s parameter groups with a per-step cosine schedule of ``total_steps`` steps
    (after ``params.lars_warmup_epochs`` of linear warmup for LARS and AdamW), and a cosine weight-decay schedule to
    ``params.final_weight_decay`` if set; ``constant_lr_modules`` keep their lr, ``separate_modules`` (trained by an
    optimizer of their own) are left out."""
    groups = parameter_groups(
        module,
        params.weight_decay,
        params.exclude_matching_parameters_from_lars,
        params.exclude_bias_and_norm_from_lars,
        constant_lr_modules=constant_lr_modules,
        separate_modules=separate_modules,
    )
    optimizer: torch.optim.Optimizer
    if params.optimizer_name == "lars":
        optimizer = LARS(groups, lr=params.lr, momentum=params.momentum, eta=params.lars_eta)
    elif params.optimizer_name == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=params.lr, betas=params.adamw_betas, foreach=True)
    else:
        optimizer = torch.optim.SGD(groups, lr=params.lr, momentum=params.momentum, foreach=True)
    warmup_epochs = 0 if params.optimizer_name == "sgd" else params.lars_warmup_epochs
    warmup_steps = round(warmup_epochs * total_steps / epochs)
    schedule = WarmupCosineSchedule(warmup_steps, total_steps, params.final_lr_schedule_value / params.lr)
    constant = WarmupCosineSchedule(0, total_steps, 1.0)
    weight_decay = (None if params.final_weight_decay is None
                    else CosineValue(params.weight_decay, params.final_weight_decay, total_steps))
    scheduler = LrAndWeightDecaySchedule(
        optimizer, [constant if group["constant_lr"] else schedule for group in groups], weight_decay
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def gradient_clipping(params: OptimOptions, trainer_value: Optional[float],
                      trainer_algorithm: Optional[str]) -> Tuple[Optional[float], Optional[str]]:
    """(value, algorithm) for Lightning's ``clip_gradients``: the Trainer's clipping if it sets one, else
    ``params.gradient_clip_norm`` as a global L2 norm (None, None: no clipping)."""
    if trainer_value is None and params.gradient_clip_norm > 0:
        return params.gradient_clip_norm, "norm"
    return trainer_value, trainer_algorithm
