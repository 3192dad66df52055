"""VICReg (loss_type "vicreg", formerly "vic"): variance-invariance-covariance regularization of raw embeddings."""

from __future__ import annotations

import functools
from typing import Callable, Dict, Sequence, Tuple

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup import distributed
from selfsup.methods.criteria import PairFunctionCriterion, PairwiseCriterion
from selfsup.methods.losses import fp32
from selfsup.methods.method import Method
from selfsup.methods.options import SharedParams, fail, options_of, suspicious
from selfsup.methods.preset import LARS_WITHOUT_BIAS_AND_NORM, Preset
from selfsup.methods.registry import register
from selfsup.options import option

VARIANCE_REDUCTIONS = ("mean", "sum")


def vicreg_loss(
    z_a: Tensor,
    z_b: Tensor,
    invariance_weight: float,
    variance_weight: float,
    covariance_weight: float,
    eps: float,
    gather: Callable[[Tensor], Tensor] = distributed.identity,
    variance_reduction: str = "mean",
) -> Dict[str, Tensor]:
    """VICReg (Bardes et al. 2021, arXiv:2105.04906) on raw embeddings z_a, z_b [N, D].

    invariance = MSE(z_a, z_b); variance = the mean (``variance_reduction`` "mean", the official code's) or the sum
    ("sum", the paper's formula) over both branches of mean_j relu(1 - sqrt(Var(z_j) + eps)) (unbiased variance);
    covariance = sum over both branches of sum_{i != j} C_ij^2 / D. Returns the weighted terms ``loss_invariance``,
    ``loss_variance``, ``loss_covariance`` and their sum ``loss``. The published weights 25/25/1 were tuned with the
    official code, whose variance term is half the paper's.

    ``gather`` maps a branch [N, D] to the batch the variance and covariance are computed on: the identity, or the
    concatenation over processes [world*N, D] (with gradient), as the official code does; the invariance term stays
    on this process's pairs.
    """
    z_a, z_b = fp32(z_a), fp32(z_b)
    invariance = F.mse_loss(z_a, z_b)
    all_a, all_b = gather(z_a), gather(z_b)
    branches = torch.stack([variance_hinge(all_a, eps), variance_hinge(all_b, eps)])
    variance = branches.mean() if variance_reduction == "mean" else branches.sum()
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

    use_vicreg_loss: bool = option(False, "True exactly when loss_type is 'vicreg' (kept from the original interface)")
    invariance_loss_weight: float = option(25.0, "VICReg lambda (mean squared error between views)", low=0)
    variance_loss_weight: float = option(25.0, "VICReg mu (hinge on per-dimension std)", low=0)
    covariance_loss_weight: float = option(1.0, "VICReg nu (off-diagonal covariance)", low=0)
    variance_loss_epsilon: float = option(1e-4, "VICReg epsilon inside the std", low=0, low_open=True)
    vicreg_gather_across_devices: bool = option(
        True, "VICReg variance and covariance on the batch of every process, with gradient (the invariance term "
        "stays per pair)")
    vicreg_variance_reduction: str = option(
        "mean", "VICReg variance term over the two branches: 'mean' (the official code and lightly, with which the "
        "25/25/1 weights were tuned) or 'sum' (the paper's formula, twice the weight)", choices=VARIANCE_REDUCTIONS)


VICREG = Preset(
    name="VICRegParams", key="vicreg", paper="VICReg, arXiv:2105.04906",
    summary="25/25/1 loss on raw embeddings, 3-layer BN expander 2048 wide, LARS, 10 warmup epochs",
    doc="VICReg (Bardes et al. 2021, arXiv:2105.04906): invariance/variance/covariance 25/25/1 on raw embeddings of a "
    "3-layer BN expander (2048 wide for ResNet-18 instead of 8192: the paper finds accuracy grows with the "
    "expander's width; docs/benchmarks.md has what a narrower one cost here), the variance term averaged over the "
    "two branches as in the official code, LARS with biases and norm layers excluded, 10 warmup epochs, cosine to "
    "0.002.",
    fields=dict(
        use_vicreg_loss=True,
        loss_type="vicreg",
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
    loss_types = ("vicreg",)
    aliases = {"vic": "vicreg"}
    options = VICRegOptions
    legacy_defaults = {"vicreg_variance_reduction": "sum"}  # the paper's form, before the official code's
    presets = (VICREG,)

    def check(self, p: SharedParams) -> None:
        if p.use_unit_sphere_projection:
            suspicious("VICReg expects raw embeddings, but use_unit_sphere_projection=True normalizes them")

    def check_options(self, p: SharedParams) -> None:
        use_vicreg_loss = options_of(p, VICRegOptions).use_vicreg_loss
        if use_vicreg_loss != self.active(p):
            fail("use_vicreg_loss", f"is {use_vicreg_loss} but loss_type is {p.loss_type!r}; "
                                    "use_vicreg_loss=True goes with loss_type='vicreg' and only with it")

    def criterion(self, p: SharedParams, pairs: Sequence[Tuple[int, int]], reduction: str,
                  factor: float) -> PairwiseCriterion:
        v = options_of(p, VICRegOptions)
        loss = functools.partial(
            vicreg_loss,
            invariance_weight=v.invariance_loss_weight,
            variance_weight=v.variance_loss_weight,
            covariance_weight=v.covariance_loss_weight,
            eps=v.variance_loss_epsilon,
            gather=distributed.gather_with_grad if v.vicreg_gather_across_devices else distributed.identity,
            variance_reduction=v.vicreg_variance_reduction,
        )
        return PairFunctionCriterion(pairs, reduction, factor, loss)
