"""W-MSE (loss_type "wmse"): the mean squared error between L2-normalized embeddings of the views after whitening
them within random sub-batches (Ermolov et al. 2021, arXiv:2007.06346). Whitening gives every sub-batch an identity
covariance, so the embeddings cannot collapse, and the loss needs neither negatives nor a momentum encoder."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.methods.criteria import LossOutput, PairStep, PairwiseCriterion
from selfsup.methods.losses import cosine_metrics
from selfsup.methods.method import Method
from selfsup.methods.options import SharedParams, fail, options_of, suspicious
from selfsup.methods.preset import LARS_WITHOUT_BIAS_AND_NORM, NO_NEGATIVES, Preset
from selfsup.methods.registry import register
from selfsup.options import option


def whiten(x: Tensor, eps: float) -> Tensor:
    """Cholesky whitening of x [N, D] (W-MSE's whitening layer): the centred rows times L^-T, where L L^T is the
    unbiased covariance (shrunk to (1 - eps) C + eps I), so the result has mean 0 and covariance I."""
    centred = x - x.mean(dim=0)
    covariance = centred.T @ centred / (x.shape[0] - 1)  # [D, D]
    if eps:
        covariance = (1 - eps) * covariance + eps * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    lower = torch.linalg.cholesky(covariance)
    return torch.linalg.solve_triangular(lower, centred.T, upper=False).T


def whiten_in_groups(x: Tensor, order: Tensor, size: int, eps: float) -> Tensor:
    """x [B, D] whitened within the sub-batches of ``size`` rows that ``order`` (a permutation of the B rows) cuts,
    each row kept in its place; the same ``order`` for every view whitens corresponding rows together."""
    out = torch.empty_like(x)
    for rows in order.view(-1, size):
        out[rows] = whiten(x[rows], eps)
    return out


def normalized_mse(a: Tensor, b: Tensor) -> Tensor:
    """||a/|a| - b/|b|||^2 = 2 - 2 cos(a, b), averaged over the rows of a, b [N, D]."""
    return 2 - 2 * (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(dim=1).mean()


class WMSECriterion(PairwiseCriterion):
    """W-MSE: each step draws ``iterations`` random partitions of the batch into sub-batches of ``size``; every view
    is whitened within them and the pair loss is the normalized MSE between the whitened views, averaged over the
    partitions (the whitened views of all partitions are stacked along the batch)."""

    def __init__(self, pairs: Sequence[Tuple[int, int]], reduction: str, factor: float, size: int, iterations: int,
                 eps: float) -> None:
        super().__init__(pairs, reduction, factor)
        self.size, self.iterations, self.eps = size, iterations, eps

    def prepare(self, step: PairStep) -> PairStep:
        # The partitions draw from torch's global RNG (on the embeddings' device), which a resume restores.
        reference = next(v for v in (*step.queries, *step.keys) if v is not None)
        orders = [torch.randperm(reference.shape[0], device=reference.device) for _ in range(self.iterations)]
        return step._replace(queries=self._whitened(step.queries, orders), keys=self._whitened(step.keys, orders))

    def _whitened(self, views: Sequence[Optional[Tensor]], orders: Sequence[Tensor]) -> List[Optional[Tensor]]:
        return [None if v is None else torch.cat([whiten_in_groups(v, order, self.size, self.eps) for order in orders])
                for v in views]

    def pair_loss(self, s: int, t: int, step: PairStep) -> LossOutput:
        query, key = step.queries[s], step.keys[t]
        assert query is not None and key is not None
        return LossOutput(normalized_mse(query, key), cosine_metrics(query, key))


@attrs.frozen(kw_only=True, slots=False)
class WMSEOptions:
    """W-MSE"""

    wmse_whitening_size: int = option(128, "W-MSE: rows whitened together (the paper: 128 for CIFAR, 256 for STL-10 "
                                           "and Tiny ImageNet); divides batch_size, exceeds dim", low=2)
    wmse_whitening_iterations: int = option(1, "W-MSE: random partitions of the batch per step, losses averaged",
                                            low=1)
    wmse_whitening_eps: float = option(0.0, "W-MSE: covariance shrinkage (1 - eps) C + eps I before whitening", low=0,
                                       high=1)


WMSE_PRESET = Preset(
    name="WMSEParams", key="wmse", paper="W-MSE, arXiv:2007.06346",
    summary="normalized MSE between views whitened in sub-batches of 128, 2-layer BN projector to 64 dims, no "
    "negatives or EMA",
    doc="W-MSE 2 (Ermolov et al. 2021, arXiv:2007.06346): the embeddings of both views are whitened within random "
    "sub-batches of 128 (Cholesky), then pulled together by the MSE of their L2-normalized rows; projector "
    "512-1024 (BN, ReLU)-64; the paper's CIFAR augmentations (jitter 0.4/0.4/0.4/0.1, no blur). The paper trains "
    "with Adam (lr 3e-3); this library's optimizers are SGD and LARS, so the preset uses LARS as for BYOL.",
    fields=dict(
        loss_type="wmse",
        use_lagging_model=False,
        use_unit_sphere_projection=False,
        view_pair_reduction="mean",
        projection_mlp_layers=2,
        mlp_hidden_dim=1024,
        mlp_normalization="bn",
        dim=64,
        wmse_whitening_size=128,
        transform_apply_blur=False,
        weight_decay=1e-6,
        lars_warmup_epochs=10,
        **NO_NEGATIVES,
        **LARS_WITHOUT_BIAS_AND_NORM,
    ),
)


@register
class WMSE(Method):
    loss_types = ("wmse",)
    options = WMSEOptions
    presets = (WMSE_PRESET,)
    momentum_target = False

    def check(self, p: SharedParams) -> None:
        w = options_of(p, WMSEOptions)
        if p.batch_size % w.wmse_whitening_size != 0:
            fail("wmse_whitening_size", f"{w.wmse_whitening_size} must divide batch_size {p.batch_size} (the batch is "
                                        "cut into whitening sub-batches)")
        if w.wmse_whitening_eps == 0 and w.wmse_whitening_size <= p.dim:
            fail("wmse_whitening_size", f"{w.wmse_whitening_size} rows cannot whiten {p.dim} dimensions: the "
                                        "covariance would be singular; use more rows than dim, or a "
                                        "wmse_whitening_eps above 0")
        if p.use_unit_sphere_projection:
            suspicious("W-MSE whitens raw embeddings, but use_unit_sphere_projection=True normalizes them first")

    def criterion(self, p: SharedParams, pairs: Sequence[Tuple[int, int]], reduction: str,
                  factor: float) -> PairwiseCriterion:
        w = options_of(p, WMSEOptions)
        return WMSECriterion(pairs, reduction, factor, size=w.wmse_whitening_size,
                             iterations=w.wmse_whitening_iterations, eps=w.wmse_whitening_eps)

    def small_run_overrides(self, p: SharedParams, batch_size: int) -> Dict[str, Any]:
        return dict(wmse_whitening_size=batch_size, dim=batch_size // 2)
