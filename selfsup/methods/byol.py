"""BYOL (loss_type "byol", formerly "ip"): the inner-product loss of the original repository, which is BYOL's
2 - 2cos with ``loss_constant_factor`` 2 and no negatives, and a contrastive inner-product loss when negatives are
given (the BYOL blog's ablations)."""

from __future__ import annotations

from typing import Sequence, Tuple

from torch import Tensor

from selfsup.methods.contrastive import ContrastiveCriterion, candidates_gather, same_view_negatives
from selfsup.methods.criteria import PairwiseCriterion
from selfsup.methods.losses import fp32
from selfsup.methods.method import Method
from selfsup.methods.options import SharedParams, suspicious
from selfsup.methods.preset import BYOL_VIEWS, LARS_WITHOUT_BIAS_AND_NORM, Preset
from selfsup.methods.registry import register


def inner_product_loss(pos: Tensor, neg: Tensor) -> Tensor:
    """Sum over columns of (1 - s) for the positive and (1 + s) for negatives, mean over B.

    Without negatives and on unit vectors this is 1 - cos(p, z); twice it is BYOL's ||p - z||^2 = 2 - 2cos
    (Grill et al. 2020, arXiv:2006.07733).
    """
    return ((1 - fp32(pos)) + (1 + fp32(neg)).sum(dim=1)).mean()


BYOL_PRESET = Preset(
    name="BYOLParams", key="byol", paper="BYOL, arXiv:2006.07733",
    summary="BN projector + predictor, 2-2cos per ordering summed, m cosine-scheduled to 1 per step, LARS without "
    "bias/norm, BYOL's asymmetric augmentations, crop scale 0.08-1",
    doc="BYOL (Grill et al. 2020, arXiv:2006.07733): predictor, BN heads, 2-2cos per ordering summed over both "
    "orderings, EMA momentum cosine-scheduled to 1 per step, LARS with biases and norm layers excluded. Heads are "
    "ResNet-18 sized (512 hidden, 128 out) instead of the paper's 4096/256.",
    fields=dict(
        prediction_mlp_layers=2,
        mlp_normalization="bn",
        loss_type="byol",
        use_negative_examples_from_queue=False,
        use_both_augmentations_as_queries=True,
        use_momentum_schedule=True,
        loss_constant_factor=2,
        **BYOL_VIEWS,
        **LARS_WITHOUT_BIAS_AND_NORM,
    ),
)


@register
class BYOL(Method):
    loss_types = ("byol",)
    aliases = {"ip": "byol"}
    presets = (BYOL_PRESET,)
    reads_negatives = True

    def uses_queue(self, p: SharedParams) -> bool:
        return p.use_negative_examples_from_queue

    def check(self, p: SharedParams) -> None:
        has_negatives = p.use_negative_examples_from_batch or p.use_negative_examples_from_queue
        if not (has_negatives or p.use_lagging_model or p.use_target_stop_gradient):
            suspicious("a loss without negatives, without a lagging model and without a stop-gradient collapses")

    def criterion(self, p: SharedParams, pairs: Sequence[Tuple[int, int]], reduction: str,
                  factor: float) -> PairwiseCriterion:
        return ContrastiveCriterion(pairs, reduction, factor, inner_product_loss, p.use_negative_examples_from_batch,
                                    same_view_negatives(p), candidates_gather(p))
