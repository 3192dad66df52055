"""The method registry: one file per method family, each registering a :class:`~selfsup.methods.base.Method` under
its ``loss_type`` values. Every module of this package is imported here, so a new method is one new file (plus its
preset line in ``selfsup.config.presets``); see docs/adding_a_method.md."""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Tuple

from selfsup.methods.base import REGISTRY, LossOutput, Method, PairwiseCriterion, Step, method_of, view_pairs

if TYPE_CHECKING:
    from selfsup.config.fields import ModelParams

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def loss_types() -> Tuple[str, ...]:
    """The registered loss_type values."""
    return tuple(REGISTRY)


def build_criterion(p: ModelParams) -> PairwiseCriterion:
    """The criterion of params ``p``: its method's loss over the view pairs that the symmetry and multi-crop fields
    give, combined by ``view_pair_reduction`` and scaled by ``loss_constant_factor``."""
    pairs = view_pairs(p.num_global_crops, p.num_local_crops, p.use_both_augmentations_as_queries)
    return method_of(p.loss_type).criterion(p, pairs, p.view_pair_reduction, p.loss_constant_factor)


__all__ = ["REGISTRY", "LossOutput", "Method", "PairwiseCriterion", "Step", "build_criterion", "loss_types",
           "method_of", "view_pairs"]
