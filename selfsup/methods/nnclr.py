"""NNCLR (loss_type "nnclr"): the nearest neighbour of a view's projection in a support set of past projections is
the positive of the other view's prediction."""

from __future__ import annotations

from typing import Callable, Sequence, Tuple

import torch
from torch import Tensor

from selfsup import distributed
from selfsup.methods.contrastive import candidates_gather, info_nce_loss
from selfsup.methods.criteria import LossOutput, PairStep, PairwiseCriterion
from selfsup.methods.losses import accuracy_metrics, cosine_metrics, own_rows, split_positive
from selfsup.methods.method import Method
from selfsup.methods.options import SharedParams
from selfsup.methods.preset import BYOL_VIEWS, LARS_WITHOUT_BIAS_AND_NORM, Preset
from selfsup.methods.registry import register


class NNCLRCriterion(PairwiseCriterion):
    """NNCLR: the nearest neighbour of key t in the support set (the step's memory, one slot of past keys) is the
    anchor; the candidates are the queries of view s of every image in the batch (gathered with gradient), the
    positive being the same image."""

    def __init__(
        self,
        pairs: Sequence[Tuple[int, int]],
        reduction: str,
        factor: float,
        temperature: float,
        gather: Callable[[Tensor], Tensor] = distributed.gather_with_grad,
    ) -> None:
        super().__init__(pairs, reduction, factor)
        self.temperature = temperature
        self.gather = gather

    def pair_loss(self, s: int, t: int, step: PairStep) -> LossOutput:
        query, key, memory = step.queries[s], step.keys[t], step.memory
        assert query is not None and key is not None and memory is not None, "NNCLR needs its support set"
        support = memory[0]  # [K, D]
        with torch.no_grad():
            # the first step has an empty support set: each key is its own neighbour (detached as any neighbour: the
            # key may carry gradient when the target is the online network without a stop-gradient)
            neighbours = support[(key @ support.T).argmax(dim=1)] if support.shape[0] else key.detach()  # [B, D]
        candidates = self.gather(query)
        own = own_rows(query.shape[0], candidates.shape[0], query.device)
        pos, neg = split_positive(neighbours @ candidates.T, own)
        metrics = {**cosine_metrics(query, key), **accuracy_metrics(pos.detach(), neg.detach())}
        return LossOutput(info_nce_loss(pos, neg, self.temperature), metrics)


NNCLR_PRESET = Preset(
    name="NNCLRParams", key="nnclr", paper="NNCLR, arXiv:2104.14548",
    summary="nearest neighbour from a 65536-entry support set as the positive, InfoNCE against the batch's "
    "predictions, BYOL's augmentations, crop scale 0.08-1",
    doc="NNCLR (Dwibedi et al. 2021, arXiv:2104.14548): the positive of each image is the nearest neighbour of its "
    "projection in a 65536-entry support set; InfoNCE (T=0.1) of that neighbour against the other view's "
    "predictions in the batch, averaged over both orderings; 3-layer BN projector, 4096-wide predictor, LARS.",
    fields=dict(
        loss_type="nnclr",
        use_negative_examples_from_batch=True,  # the flags say what the method does (it reads neither)
        use_negative_examples_from_queue=False,
        use_lagging_model=False,
        use_target_stop_gradient=True,
        use_both_augmentations_as_queries=True,
        view_pair_reduction="mean",
        T=0.1,
        K=65536,
        projection_mlp_layers=3,
        mlp_normalization="bn",
        projection_output_batch_norm=True,
        mlp_hidden_dim=2048,
        dim=256,
        prediction_mlp_layers=2,
        prediction_mlp_hidden_dim=4096,
        lr=0.3,
        weight_decay=1e-6,
        lars_warmup_epochs=10,
        **BYOL_VIEWS,
        **LARS_WITHOUT_BIAS_AND_NORM,
    ),
)


@register
class NNCLR(Method):
    loss_types = ("nnclr",)
    presets = (NNCLR_PRESET,)
    batch_candidates = True
    momentum_target = False

    def uses_queue(self, p: SharedParams) -> bool:
        return True  # the support set

    def criterion(self, p: SharedParams, pairs: Sequence[Tuple[int, int]], reduction: str,
                  factor: float) -> PairwiseCriterion:
        return NNCLRCriterion(pairs, reduction, factor, temperature=p.T, gather=candidates_gather(p))
