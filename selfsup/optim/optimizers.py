"""The optimization options of a run and the optimizer and per-step schedule they select, for any module (the
pretraining LightningModule, or a benchmark's peer model trained with the same recipe)."""

from __future__ import annotations

from typing import List, Sequence

import attrs
import torch
from pytorch_lightning.utilities.types import OptimizerLRSchedulerConfig
from torch import nn

from selfsup.optim.groups import parameter_groups
from selfsup.optim.lars import LARS
from selfsup.optim.schedules import WarmupCosineSchedule
from selfsup.options import option

OPTIMIZERS = ("sgd", "lars")


@attrs.frozen(kw_only=True, slots=False)
class OptimOptions:
    """Optimization"""

    lr: float = option(0.5, "peak learning rate (after warmup)", low=0, low_open=True)
    momentum: float = option(0.9, "SGD / LARS momentum", low=0, high=1)
    weight_decay: float = option(1e-4, "L2 weight decay (not applied to parameters excluded from LARS)", low=0)
    max_epochs: int = option(320, "training length in epochs (the command line passes it to the Trainer)", low=1)
    final_lr_schedule_value: float = option(0.0, "learning rate at the end of the cosine schedule", low=0)
    optimizer_name: str = option("sgd", "'sgd' or 'lars'", choices=OPTIMIZERS)
    lars_warmup_epochs: float = option(1, "LARS only: linear learning-rate warmup length in epochs (applied per "
                                          "step)", low=0)
    lars_eta: float = option(1e-3, "LARS trust coefficient", low=0, low_open=True)
    exclude_matching_parameters_from_lars: List[str] = option(
        help="parameters whose name contains one of these substrings: no LARS, no weight decay", factory=list,
        converter=list)
    exclude_bias_and_norm_from_lars: bool = option(False, "every bias and normalization-layer parameter: no LARS, "
                                                          "no decay")
    use_constant_prediction_lr: bool = option(False, "the prediction MLP keeps the peak learning rate (SimSiam)")


def optimizer_and_schedule(
    module: nn.Module,
    params: OptimOptions,
    total_steps: int,
    epochs: int,
    constant_lr_modules: Sequence[nn.Module] = (),
) -> OptimizerLRSchedulerConfig:
    """SGD or LARS over ``module``'s parameter groups with a per-step cosine schedule of ``total_steps`` steps (after
    ``params.lars_warmup_epochs`` of linear warmup for LARS); ``constant_lr_modules`` keep their lr."""
    groups = parameter_groups(
        module,
        params.weight_decay,
        params.exclude_matching_parameters_from_lars,
        params.exclude_bias_and_norm_from_lars,
        constant_lr_modules=constant_lr_modules,
    )
    optimizer: torch.optim.Optimizer
    if params.optimizer_name == "lars":
        optimizer = LARS(groups, lr=params.lr, momentum=params.momentum, eta=params.lars_eta)
        warmup_steps = round(params.lars_warmup_epochs * total_steps / epochs)
    else:
        optimizer = torch.optim.SGD(groups, lr=params.lr, momentum=params.momentum, foreach=True)
        warmup_steps = 0
    schedule = WarmupCosineSchedule(warmup_steps, total_steps, params.final_lr_schedule_value / params.lr)
    constant = WarmupCosineSchedule(0, total_steps, 1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [constant if group["constant_lr"] else schedule for group in groups]
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
