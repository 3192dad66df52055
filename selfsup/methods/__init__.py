"""The methods: one file per method family, each declaring and registering its
:class:`~selfsup.methods.method.Method` (names, option group, presets, checks, step). Every module of this package is
imported here, so a new method is one new file; see docs/adding_a_method.md."""

from __future__ import annotations

import importlib
import pkgutil

from selfsup.methods.criteria import LossOutput, PairStep, PairwiseCriterion, view_pairs
from selfsup.methods.method import Method
from selfsup.methods.options import SharedParams, loss_types
from selfsup.methods.preset import Preset
from selfsup.methods.registry import (
    REGISTRY,
    method_of,
    methods,
    model_params_bases,
    option_groups,
    preset_specs,
    register,
)
from selfsup.methods.steps import JointEmbeddingStep, Progress, StepOutput, TrainingStep

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY", "JointEmbeddingStep", "LossOutput", "Method", "PairStep", "PairwiseCriterion", "Preset",
           "Progress", "SharedParams", "StepOutput", "TrainingStep", "loss_types", "method_of", "methods",
           "model_params_bases", "option_groups", "preset_specs", "register", "view_pairs"]
