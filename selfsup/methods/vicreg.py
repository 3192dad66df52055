"""VICReg (loss_type "vic"): variance-invariance-covariance regularization of raw embeddings."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable, Dict, Sequence, Tuple

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup import dist
from selfsup.config.options import option
from selfsup.methods.base import (
    LARS_WITHOUT_BIAS_AND_NORM,
    Method,
    PairFunctionCriterion,
    PairwiseCriterion,
    Preset,
    fail,
    fp32,
    identity,
    register,
    suspicious,
)

if TYPE_CHECKING:
    from selfsup.config.fields import ModelParams


def vicreg_loss(
    z_a: Tensor,
    z_b: Tensor,
    invariance_weight: float,
    variance_weight: float,
    covariance_weight: float,
    eps: float,
    gather: Callable[[Tensor], Tensor] = identity,
) -> Dict[str, Tensor]:
    """VICReg (Bardes et al. 2021, arXiv:2105.04906) on raw embeddings z_a, z_b [N, D].

    invariance = MSE(z_a, z_b); variance = sum over both branches of mean_j relu(1 - sqrt(Var(z_j) + eps))
    (unbiased variance); covariance = sum over both branches of sum_{i != j} C_ij^2 / D. Returns the weighted terms
    ``loss_invariance``, ``loss_variance``, ``loss_covariance`` and their sum ``loss``.

    ``gather`` maps a branch [N, D] to the batch the variance and covariance are computed on: the identity, or the
    concatenation over processes [world*N, D] (with gradient), as the official code does; the invariance term stays
    on this process's pairs.
    """
    z_a, z_b = fp32(z_a), fp32(z_b)
    invariance = F.mse_loss(z_a, z_b)
    all_a, all_b = gather(z_a), gather(z_b)
    variance = variance_hinge(all_a, eps) + variance_hinge(all_b, eps)
    covariance = off_diagonal_covariance(all_a) + off_diagonal_covariance(all_b)
    terms = {
        "loss_invariance": invariance_weight * invariance,
        "loss_variance": variance_weight * variance,
        "loss_covariance": covariance_weight * covariance,
    }
    return {"loss": sum(terms.values()), **terms}  # type: ignore[dict-item]


def variance_hinge(z: Tensor, eps: float) -> Tensor:
    """mean_j relu(1 - sqrt(Var(z[:, j]) + eps)) for z [N, D], unbiased variance."""
    return F.relu(1 - torch.sqrt(z.var(dim=0) + eps)).mean()


def off_diagonal_covariance(z: Tensor) -> Tensor:
    """sum_{i != j} C_ij^2 / D with C the unbiased covariance matrix of z [N, D]."""
    n, d = z.shape
    centered = z - z.mean(dim=0)
    cov = centered.T @ centered / (n - 1)  # [D, D]
    return (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / d


@attrs.frozen(kw_only=True, slots=False)
class VICRegOptions:
    """VICReg"""

    use_vicreg_loss: bool = option(False, "True exactly when loss_type is 'vic' (kept from the original interface)")
    invariance_loss_weight: float = option(25.0, "VICReg lambda (mean squared error between views)", low=0)
    variance_loss_weight: float = option(25.0, "VICReg mu (hinge on per-dimension std)", low=0)
    covariance_loss_weight: float = option(1.0, "VICReg nu (off-diagonal covariance)", low=0)
    variance_loss_epsilon: float = option(1e-4, "VICReg epsilon inside the std", low=0, low_open=True)
    vicreg_gather_across_devices: bool = option(
        True, "VICReg variance and covariance on the batch of every process, with gradient (the invariance term "
        "stays per pair)")


VICREG = Preset(
    name="VICRegParams", key="vicreg", paper="VICReg, arXiv:2105.04906",
    summary="25/25/1 loss on raw embeddings, 3-layer BN expander 2048 wide, LARS, 10 warmup epochs",
    doc="VICReg (Bardes et al. 2021, arXiv:2105.04906): invariance/variance/covariance 25/25/1 on raw embeddings of a "
    "3-layer BN expander (2048 wide for ResNet-18 instead of 8192: the paper finds accuracy grows with the "
    "expander's width, and 512 wide lost 4.8 kNN points at 4 epochs), LARS with biases and norm layers excluded, "
    "10 warmup epochs, cosine to 0.002.",
    fields=dict(
        use_vicreg_loss=True,
        loss_type="vic",
        vicreg_gather_across_devices=True,
        use_lagging_model=False,
        use_unit_sphere_projection=False,
        use_negative_examples_from_queue=False,
        projection_mlp_layers=3,
        mlp_normalization="bn",
        mlp_hidden_dim=2048,
        dim=2048,
        final_lr_schedule_value=0.002,
        lars_warmup_epochs=10,
        **LARS_WITHOUT_BIAS_AND_NORM,
    ),
)


@register
class VICReg(Method):
    loss_types = ("vic",)
    presets = (VICREG,)

    def check(self, p: ModelParams) -> None:
        if p.use_unit_sphere_projection:
            suspicious("VICReg expects raw embeddings, but use_unit_sphere_projection=True normalizes them")

    def check_options(self, p: ModelParams) -> None:
        if p.use_vicreg_loss != self.active(p):
            fail("use_vicreg_loss", f"is {p.use_vicreg_loss} but loss_type is {p.loss_type!r}; "
                                    "use_vicreg_loss=True goes with loss_type='vic' and only with it")

    def criterion(self, p: ModelParams, pairs: Sequence[Tuple[int, int]], reduction: str,
                  factor: float) -> PairwiseCriterion:
        loss = functools.partial(
            vicreg_loss,
            invariance_weight=p.invariance_loss_weight,
            variance_weight=p.variance_loss_weight,
            covariance_weight=p.covariance_loss_weight,
            eps=p.variance_loss_epsilon,
            gather=dist.gather_with_grad if p.vicreg_gather_across_devices else identity,
        )
        return PairFunctionCriterion(pairs, reduction, factor, loss)
