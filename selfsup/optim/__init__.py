"""Optimization: LARS, the per-step learning-rate schedule and the parameter groups."""

from selfsup.optim.groups import OPTIMIZERS, is_bias_or_norm, named_parameters_with_owner, parameter_groups
from selfsup.optim.lars import LARS
from selfsup.optim.schedules import WarmupCosineSchedule

__all__ = ["LARS", "OPTIMIZERS", "WarmupCosineSchedule", "is_bias_or_norm", "named_parameters_with_owner",
           "parameter_groups"]
