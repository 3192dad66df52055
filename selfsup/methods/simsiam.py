"""SimSiam (loss_type "simsiam", formerly "neg_cos"): the negative cosine between one view's prediction and the
other view's projection, with a stop-gradient on the projection and no momentum encoder."""

from __future__ import annotations

from typing import Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor

from selfsup.methods.criteria import PairFunctionCriterion, PairwiseCriterion, as_terms
from selfsup.methods.losses import fp32
from selfsup.methods.method import Method
from selfsup.methods.options import SharedParams, suspicious
from selfsup.methods.preset import NO_NEGATIVES, Preset
from selfsup.methods.registry import register


def negative_cosine_loss(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam's D(p, z) = -cos(p, z) averaged over the batch (Chen & He 2020, arXiv:2011.10566); p, z [B, D].

    The stop-gradient on z is the caller's (the target network); -1 for aligned, 0 for orthogonal vectors.
    """
    return -F.cosine_similarity(fp32(p), fp32(z), dim=1).mean()


SIMSIAM = Preset(
    name="SimSiamParams", key="simsiam", paper="SimSiam, arXiv:2011.10566",
    summary="-cos(p, stopgrad(z)), no EMA, 3-layer projector with BN output, bottleneck predictor with a constant "
    "learning rate",
    doc="SimSiam (Chen & He 2020, arXiv:2011.10566): -cos(p, stopgrad(z)) averaged over both orderings, no momentum "
    "encoder, 3-layer projector with BN on its output, bottleneck predictor (2048-512-2048) whose learning rate is "
    "not scheduled; SGD lr 0.05 per 256 images.",
    fields=dict(
        loss_type="simsiam",
        use_lagging_model=False,
        use_target_stop_gradient=True,
        use_both_augmentations_as_queries=True,
        view_pair_reduction="mean",
        use_unit_sphere_projection=False,
        projection_mlp_layers=3,
        mlp_normalization="bn",
        projection_output_batch_norm=True,
        mlp_hidden_dim=2048,
        dim=2048,
        prediction_mlp_layers=2,
        prediction_mlp_hidden_dim=512,
        use_constant_prediction_lr=True,
        lr=0.05,
        weight_decay=1e-4,
        **NO_NEGATIVES,
    ),
)


@register
class SimSiam(Method):
    loss_types = ("simsiam",)
    aliases = {"neg_cos": "simsiam"}
    presets = (SIMSIAM,)

    def check(self, p: SharedParams) -> None:
        if not (p.use_lagging_model or p.use_target_stop_gradient):
            suspicious("a loss without negatives, without a lagging model and without a stop-gradient collapses")

    def criterion(self, p: SharedParams, pairs: Sequence[Tuple[int, int]], reduction: str,
                  factor: float) -> PairwiseCriterion:
        return PairFunctionCriterion(pairs, reduction, factor, as_terms(negative_cosine_loss))
