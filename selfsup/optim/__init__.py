"""Optimization: LARS, the per-step learning-rate schedule, the parameter groups, and the options that select the
optimizer (``options``) and the optimizer they select (``optimizers``)."""

from selfsup.optim.groups import is_bias_or_norm, named_parameters_with_owner, parameter_groups
from selfsup.optim.lars import LARS
from selfsup.optim.optimizers import optimizer_and_schedule
from selfsup.optim.options import OPTIMIZERS, OptimOptions
from selfsup.optim.schedules import WarmupCosineSchedule

__all__ = ["LARS", "OPTIMIZERS", "OptimOptions", "WarmupCosineSchedule", "is_bias_or_norm",
           "named_parameters_with_owner", "optimizer_and_schedule", "parameter_groups"]
