"""Barlow Twins (loss_type "barlow_twins", formerly "barlow"): the cross-correlation of batch-standardized
projections pushed to the identity."""

from __future__ import annotations

import functools
from typing import Sequence, Tuple

import attrs
import torch
from torch import Tensor

from selfsup.methods.criteria import PairFunctionCriterion, PairwiseCriterion, as_terms
from selfsup.methods.losses import fp32
from selfsup.methods.method import Method
from selfsup.methods.options import SharedParams, options_of
from selfsup.methods.preset import BYOL_VIEWS, LARS_WITHOUT_BIAS_AND_NORM, NO_NEGATIVES, Preset
from selfsup.methods.registry import register
from selfsup.options import option


def barlow_twins_loss(z_a: Tensor, z_b: Tensor, off_diagonal_weight: float, eps: float = 1e-5) -> Tensor:
    """Barlow Twins (Zbontar et al. 2021, arXiv:2103.03230) on z_a, z_b [N, D].

    Each feature is standardized over the batch (biased variance, as BatchNorm without affine), C = z_a^T z_b / N is
    the [D, D] cross-correlation, and L = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2. Collapsed inputs give
    C = 0, i.e. L = D.
    """
    z_a, z_b = fp32(z_a), fp32(z_b)
    n = z_a.shape[0]
    standardize = lambda z: (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + eps)  # noqa: E731
    c = standardize(z_a).T @ standardize(z_b) / n
    on_diagonal = (1 - c.diagonal()).pow(2).sum()
    return on_diagonal + off_diagonal_weight * (c.pow(2).sum() - c.diagonal().pow(2).sum())


@attrs.frozen(kw_only=True, slots=False)
class BarlowTwinsOptions:
    """Barlow Twins"""

    barlow_lambda: float = option(0.0051, "Barlow Twins weight of the off-diagonal cross-correlation terms", low=0)


BARLOW_TWINS = Preset(
    name="BarlowTwinsParams", key="barlow_twins", paper="Barlow Twins, arXiv:2103.03230",
    summary="cross-correlation of batch-standardized projections to the identity (lambda 0.0051), 3-layer BN "
    "projector, LARS, BYOL's asymmetric augmentations with crop scale 0.08-1",
    doc="Barlow Twins (Zbontar et al. 2021, arXiv:2103.03230): cross-correlation of batch-standardized projections "
    "pushed to the identity (lambda=0.0051), 3-layer BN projector (2048 wide for ResNet-18 instead of 8192), LARS "
    "with biases and norm layers excluded.",
    fields=dict(
        loss_type="barlow_twins",
        use_lagging_model=False,
        use_unit_sphere_projection=False,
        projection_mlp_layers=3,
        mlp_normalization="bn",
        mlp_hidden_dim=2048,
        dim=2048,
        barlow_lambda=0.0051,
        lr=0.2,
        weight_decay=1.5e-6,
        lars_warmup_epochs=10,
        **BYOL_VIEWS,
        **NO_NEGATIVES,
        **LARS_WITHOUT_BIAS_AND_NORM,
    ),
)


@register
class BarlowTwins(Method):
    loss_types = ("barlow_twins",)
    aliases = {"barlow": "barlow_twins"}
    options = BarlowTwinsOptions
    presets = (BARLOW_TWINS,)
    momentum_target = False

    def criterion(self, p: SharedParams, pairs: Sequence[Tuple[int, int]], reduction: str,
                  factor: float) -> PairwiseCriterion:
        weight = options_of(p, BarlowTwinsOptions).barlow_lambda
        loss = as_terms(functools.partial(barlow_twins_loss, off_diagonal_weight=weight))
        return PairFunctionCriterion(pairs, reduction, factor, loss)
