"""Supervised contrastive learning (loss_type "supcon"): every other view of the same class is a positive."""

from __future__ import annotations

import functools
from typing import Callable, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup import distributed
from selfsup.methods.contrastive import ContrastiveCriterion, candidates_gather, info_nce_loss, same_view_candidates
from selfsup.methods.criteria import LossOutput, PairStep, PairwiseCriterion
from selfsup.methods.losses import cosine_metrics, fp32, own_rows, split_positive
from selfsup.methods.method import Method
from selfsup.methods.options import SharedParams
from selfsup.methods.preset import Preset
from selfsup.methods.registry import register


def supervised_contrastive_loss(similarity: Tensor, positive_mask: Tensor, temperature: float) -> Tensor:
    """SupCon L_out (Khosla et al. 2020, arXiv:2004.11362): for each anchor the mean over its positives of
    -log(exp(s_p/T) / sum_a exp(s_a/T)); mean over anchors. similarity [B, N] against all candidates except the
    anchor itself; positive_mask [B, N] bool (same label). Anchors without positives are skipped."""
    log_probs = F.log_softmax(fp32(similarity) / temperature, dim=1)
    positives = positive_mask.float()
    count = positives.sum(dim=1)
    has_positive = count > 0
    per_anchor = -(log_probs * positives).sum(dim=1)[has_positive] / count[has_positive]
    return per_anchor.mean()


class SupConCriterion(ContrastiveCriterion):
    """Supervised contrastive L_out: candidates as for NT-Xent, positives = every candidate with the anchor's label."""

    def __init__(
        self,
        pairs: Sequence[Tuple[int, int]],
        reduction: str,
        factor: float,
        temperature: float,
        same_view_negatives: bool,
        gather: Callable[[Tensor], Tensor] = distributed.gather_with_grad,
    ) -> None:
        super().__init__(
            pairs,
            reduction,
            factor,
            loss_fn=functools.partial(info_nce_loss, temperature=temperature),  # unused: pair_loss is SupCon's
            batch_negatives=True,
            same_view_negatives=same_view_negatives,
            gather=gather,
        )
        self.temperature = temperature

    def pair_loss(self, s: int, t: int, step: PairStep) -> LossOutput:
        query, key, labels = step.queries[s], step.keys[t], step.labels
        assert query is not None and key is not None
        if labels is None or bool((labels < 0).any()):
            raise ValueError(
                "loss_type='supcon' needs a label for every training image, but the batch has "
                "unlabeled samples (label -1); use a labelled dataset"
            )
        candidates = self.gather(key)
        own = own_rows(query.shape[0], candidates.shape[0], query.device)
        same_class = labels[:, None] == self.gather(labels)[None, :]  # [B, candidates], gathered like them
        similarities, positives = [query @ candidates.T], [same_class]
        same_view_keys = step.keys[s]
        if self.same_view_negatives and same_view_keys is not None:
            similarities.append(split_positive(query @ self.gather(same_view_keys).T, own)[1])
            positives.append(split_positive(same_class, own)[1])
        similarity, positive = torch.cat(similarities, dim=1), torch.cat(positives, dim=1)
        loss = supervised_contrastive_loss(similarity, positive, self.temperature)
        return LossOutput(loss, cosine_metrics(query, key))


SUPCON = Preset(
    name="SupConParams", key="supcon", paper="SupCon, arXiv:2004.11362",
    summary="supervised contrastive L_out: every other view of the same class is a positive (needs labels)",
    doc="Supervised contrastive learning (Khosla et al. 2020, arXiv:2004.11362), L_out: every other view of the same "
    "class is a positive, averaged outside the log; T=0.1. Needs labelled data.",
    fields=dict(
        loss_type="supcon",
        use_negative_examples_from_batch=True,  # the flags say what the method does (it reads neither)
        use_negative_examples_from_queue=False,
        use_lagging_model=False,
        use_both_augmentations_as_queries=True,
        view_pair_reduction="mean",
        T=0.1,
        K=0,
    ),
)


@register
class SupCon(Method):
    loss_types = ("supcon",)
    presets = (SUPCON,)
    batch_candidates = True
    momentum_target = False

    def criterion(self, p: SharedParams, pairs: Sequence[Tuple[int, int]], reduction: str,
                  factor: float) -> PairwiseCriterion:
        return SupConCriterion(pairs, reduction, factor, temperature=p.T, same_view_negatives=same_view_candidates(p),
                               gather=candidates_gather(p))
