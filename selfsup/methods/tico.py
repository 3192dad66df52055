"""TiCo (loss_type "tico"): transformation invariance and covariance contrast (Zhu et al. 2022, arXiv:2206.10698).

The views of an image are pulled together (-cos), and the embeddings of a batch are pushed away from the directions
the past batches occupied: the quadratic form of each embedding under an exponential moving average of the covariance
of the normalized embeddings, which the paper reads as MoCo with an implicit, unbounded memory of negatives.
"""

from __future__ import annotations

import functools
from typing import Callable, Dict, Sequence, Tuple

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup import distributed
from selfsup.methods.criteria import LossOutput, PairStep, PairwiseCriterion
from selfsup.methods.losses import cosine_metrics, fp32
from selfsup.methods.method import Method
from selfsup.methods.options import SharedParams, options_of
from selfsup.methods.preset import BYOL_VIEWS, LARS_WITHOUT_BIAS_AND_NORM, NO_NEGATIVES, Preset
from selfsup.methods.registry import register
from selfsup.options import option


def batch_covariance(z: Tensor) -> Tensor:
    """z^T z / N of the L2-normalized rows of z [N, D] (uncentred, as TiCo's B): [D, D]."""
    z = F.normalize(fp32(z), dim=1)
    return z.T @ z / z.shape[0]


def covariance_update(covariance: Tensor, z: Tensor, beta: float) -> Tensor:
    """TiCo's running covariance: beta C + (1 - beta) B(z) for a batch z [N, D] and C [D, D] of the batches before."""
    return beta * covariance + (1 - beta) * batch_covariance(z)


def tico_loss(z_1: Tensor, z_2: Tensor, covariance: Tensor, beta: float, rho: float,
              gather: Callable[[Tensor], Tensor] = distributed.identity) -> Dict[str, Tensor]:
    """TiCo (Zhu et al. 2022, arXiv:2206.10698, eq. 5 and Algorithm 1) on the embeddings z_1, z_2 [N, D] of two views
    and the running covariance C [D, D] of the batches before this one.

    With z the L2-normalized rows and C_t = beta C + (1 - beta) z_1^T z_1 / N (``covariance_update``, over the batch
    ``gather`` returns: this process's rows, or every process's, with gradient):
    loss = -mean_i <z_1i, z_2i> (``loss_invariance``) + rho mean_i z_1i^T C_t z_1i (``loss_covariance``). C is a
    constant of the step and C_t carries this batch's gradient, as in the paper's Algorithm 1, which detaches C only
    after the step (lightly's TiCoLoss also detaches this batch's term and adds the constant 1: the same values up to
    that 1, other gradients).
    """
    z_1, z_2 = F.normalize(fp32(z_1), dim=1), F.normalize(fp32(z_2), dim=1)
    current = covariance_update(covariance.detach(), gather(z_1), beta)
    invariance = -(z_1 * z_2).sum(dim=1).mean()
    contrast = rho * ((z_1 @ current) * z_1).sum(dim=1).mean()
    return {"loss": invariance + contrast, "loss_invariance": invariance, "loss_covariance": contrast}


class TiCoCriterion(PairwiseCriterion):
    """TiCo over view pairs: each ordering's query view is the paper's z_1 (whose batch enters the covariance), its key
    view z_2. After the step the running covariance takes the mean of the query views' batch covariances."""

    covariance: Tensor  # [D, D], the running covariance of the batches so far (zeros before the first)

    def __init__(self, pairs: Sequence[Tuple[int, int]], reduction: str, factor: float, dim: int, beta: float,
                 rho: float, gather: Callable[[Tensor], Tensor]) -> None:
        super().__init__(pairs, reduction, factor)
        self.beta, self.gather = beta, gather
        self.loss = functools.partial(tico_loss, beta=beta, rho=rho, gather=gather)
        self.register_buffer("covariance", torch.zeros(dim, dim))

    def pair_loss(self, s: int, t: int, step: PairStep) -> LossOutput:
        query, key = step.queries[s], step.keys[t]
        assert query is not None and key is not None
        terms = self.loss(query, key, self.covariance)
        metrics = {name: terms[name].detach() for name in ("loss_invariance", "loss_covariance")}
        return LossOutput(terms["loss"], {**metrics, **cosine_metrics(query, key)})

    @torch.no_grad()
    def after_step(self, step: PairStep, output: LossOutput) -> None:
        queries = [self.gather(q.detach()) for q in step.queries if q is not None]
        batch = torch.stack([batch_covariance(q) for q in queries]).mean(dim=0)
        self.covariance.mul_(self.beta).add_(batch.to(self.covariance.dtype), alpha=1 - self.beta)


@attrs.frozen(kw_only=True, slots=False)
class TiCoOptions:
    """TiCo"""

    tico_beta: float = option(0.9, "TiCo: EMA coefficient of the running covariance of the normalized embeddings",
                              low=0, high=1)
    tico_rho: float = option(20.0, "TiCo: weight of the covariance contrast term", low=0)


TICO = Preset(
    name="TiCoParams", key="tico", paper="TiCo, arXiv:2206.10698",
    summary="-cos(z1, z2) + rho z1^T C z1 under a running covariance (beta 0.9, rho 20), EMA target, BN projector "
    "4096-256, LARS, BYOL's augmentations",
    doc="TiCo (Zhu et al. 2022, arXiv:2206.10698): transformation invariance (-cos of the two views) plus rho = 20 "
    "times the quadratic form of the first view's embedding under a running covariance (EMA beta = 0.9) of the "
    "normalized embeddings; one ordering per step as in the paper's Algorithm 1; an EMA target (0.99 cosine to 1) "
    "and a 2-layer BN projector to 256 as lightly's reference implementation; LARS lr 0.2 per 256 images, 10 warmup "
    "epochs, wd 1.5e-6; BYOL's augmentations.",
    fields=dict(
        loss_type="tico",
        tico_beta=0.9,
        tico_rho=20.0,
        use_both_augmentations_as_queries=False,
        m=0.99,
        use_momentum_schedule=True,
        projection_mlp_layers=2,
        mlp_normalization="bn",
        mlp_hidden_dim=4096,
        dim=256,
        lr=0.2,
        weight_decay=1.5e-6,
        lars_warmup_epochs=10,
        **BYOL_VIEWS,
        **NO_NEGATIVES,
        **LARS_WITHOUT_BIAS_AND_NORM,
    ),
)


@register
class TiCo(Method):
    loss_types = ("tico",)
    options = TiCoOptions
    presets = (TICO,)

    def criterion(self, p: SharedParams, pairs: Sequence[Tuple[int, int]], reduction: str,
                  factor: float) -> PairwiseCriterion:
        t = options_of(p, TiCoOptions)
        return TiCoCriterion(pairs, reduction, factor, dim=p.dim, beta=t.tico_beta, rho=t.tico_rho,
                             gather=distributed.gather_with_grad)
