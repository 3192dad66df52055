"""Criteria: the loss of a whole training step, built once from ModelParams.

A step produces one query per query view (online prediction) and one key per key view (target projection). A
criterion applies a per-pair loss to every (query view s, key view t) pair with s != t and combines them by sum or
mean, times ``loss_constant_factor``: two views with ``use_both_augmentations_as_queries`` give the orderings
(0 -> 1) and (1 -> 0); without it only (0 -> 1); local crops are queries against every global view.
"""

from __future__ import annotations

import functools
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

import distributed
import losses
from model_params import ModelParams

PairLoss = Callable[[Tensor, Tensor], Tensor]


class LossOutput(NamedTuple):
    loss: Tensor
    metrics: Dict[str, Tensor]  # detached scalars, logged under these names


def view_pairs(num_global: int, num_local: int, symmetric: bool) -> List[Tuple[int, int]]:
    """(query view, key view) pairs. Views 0..num_global-1 are global crops, the rest local crops."""
    key_views = range(num_global) if symmetric else range(1, num_global)
    query_views = [*(range(num_global) if symmetric else [0]), *range(num_global, num_global + num_local)]
    return [(s, t) for s in query_views for t in key_views if s != t]


class PairwiseCriterion(nn.Module):
    """Sums or averages a per-pair loss over view pairs; subclasses define :meth:`pair_loss`."""

    def __init__(self, pairs: Sequence[Tuple[int, int]], reduction: str, factor: float) -> None:
        super().__init__()
        self.pairs = list(pairs)
        self.query_views = sorted({s for s, _ in self.pairs})
        self.key_views = sorted({t for _, t in self.pairs})
        self.reduce = torch.sum if reduction == "sum" else torch.mean
        self.factor = factor

    def forward(self, queries: Sequence[Optional[Tensor]], keys: Sequence[Optional[Tensor]],
                memory: Optional[Tensor]) -> LossOutput:
        """queries/keys: one [B, D] entry per view (None where unused); memory: queue [D, K] or None."""
        outputs = [self.pair_loss(s, t, queries, keys, memory) for s, t in self.pairs]
        loss = self.factor * self.reduce(torch.stack([out.loss for out in outputs]))
        metrics = {name: torch.stack([out.metrics[name] for out in outputs]).mean() for name in outputs[0].metrics}
        return LossOutput(loss, metrics)

    def pair_loss(self, s: int, t: int, queries: Sequence[Optional[Tensor]], keys: Sequence[Optional[Tensor]],
                  memory: Optional[Tensor]) -> LossOutput:
        raise NotImplementedError


class ContrastiveCriterion(PairwiseCriterion):
    """Positive = the key of the same image in view t; negatives from the batch and/or a queue.

    In-batch negatives are the other images' keys of view t and, when ``same_view_negatives`` (the target is the
    online network, as in SimCLR), the other images' keys of the query's own view s: NT-Xent's 2B-2 negatives.
    ``gather`` collects candidates from every process (identity in a single process); positives sit at this
    process's offset in the gathered candidates.
    """

    def __init__(self, pairs: Sequence[Tuple[int, int]], reduction: str, factor: float, loss_fn: PairLoss,
                 batch_negatives: bool, same_view_negatives: bool,
                 gather: Callable[[Tensor], Tensor] = distributed.gather_with_grad) -> None:
        super().__init__(pairs, reduction, factor)
        self.loss_fn = loss_fn
        self.batch_negatives = batch_negatives
        self.same_view_negatives = same_view_negatives
        self.gather = gather

    def pair_loss(self, s: int, t: int, queries: Sequence[Optional[Tensor]], keys: Sequence[Optional[Tensor]],
                  memory: Optional[Tensor]) -> LossOutput:
        q, k = queries[s], keys[t]
        assert q is not None and k is not None
        positive_index = torch.arange(q.shape[0], device=q.device) + distributed.rank() * q.shape[0]
        negatives = []
        if self.batch_negatives:
            pos, cross_view = losses.split_positive(q @ self.gather(k).T, positive_index)
            negatives.append(cross_view)
        else:
            pos = (q * k).sum(dim=1)
        if self.same_view_negatives and keys[s] is not None:
            negatives.append(losses.split_positive(q @ self.gather(keys[s]).T, positive_index)[1])
        if memory is not None:
            negatives.append(q @ memory)  # [B, K]
        neg = torch.cat(negatives, dim=1) if negatives else q.new_zeros(q.shape[0], 0)
        metrics = dict(zip(("step_pos_cos", "step_neg_cos"), losses.positive_negative_cosine(q, k)))
        if neg.shape[1] > 0:
            metrics.update(zip(("step_train_acc1", "step_train_acc5"), losses.contrastive_accuracy(pos, neg)))
        return LossOutput(self.loss_fn(pos, neg), metrics)


class VICRegCriterion(PairwiseCriterion):
    """VICReg between the query of view s and the key of view t (both raw online embeddings, with gradient)."""

    def __init__(self, pairs: Sequence[Tuple[int, int]], reduction: str, factor: float,
                 vicreg: Callable[[Tensor, Tensor], Dict[str, Tensor]]) -> None:
        super().__init__(pairs, reduction, factor)
        self.vicreg = vicreg

    def pair_loss(self, s: int, t: int, queries: Sequence[Optional[Tensor]], keys: Sequence[Optional[Tensor]],
                  memory: Optional[Tensor]) -> LossOutput:
        q, k = queries[s], keys[t]
        assert q is not None and k is not None
        terms = self.vicreg(q, k)
        metrics = {name: value.detach() for name, value in terms.items() if name != "loss"}
        metrics.update(zip(("step_pos_cos", "step_neg_cos"), losses.positive_negative_cosine(q, k)))
        return LossOutput(terms["loss"], metrics)


def contrastive_loss_fn(params: ModelParams) -> PairLoss:
    """The (pos, neg) -> loss function selected by loss_type and use_eqco_margin."""
    if params.use_eqco_margin:
        return functools.partial(losses.eqco_loss, temperature=params.T, alpha=params.eqco_alpha)
    return {
        "ce": functools.partial(losses.info_nce_loss, temperature=params.T),
        "bce": functools.partial(losses.binary_contrastive_loss, temperature=params.T),
        "ip": losses.inner_product_loss,
    }[params.loss_type]


def build_criterion(params: ModelParams) -> PairwiseCriterion:
    """Resolve loss_type and the negative / symmetry flags into a criterion."""
    pairs = view_pairs(params.num_global_crops, params.num_local_crops, params.use_both_augmentations_as_queries)
    common = dict(pairs=pairs, reduction=params.view_pair_reduction, factor=params.loss_constant_factor)
    if params.loss_type == "vic":
        vicreg = functools.partial(
            losses.vicreg_loss, invariance_weight=params.invariance_loss_weight,
            variance_weight=params.variance_loss_weight, covariance_weight=params.covariance_loss_weight,
            eps=params.variance_loss_epsilon)
        return VICRegCriterion(**common, vicreg=vicreg)
    same_view = (params.use_negative_examples_from_batch and not params.use_lagging_model
                 and params.use_both_augmentations_as_queries)
    return ContrastiveCriterion(**common, loss_fn=contrastive_loss_fn(params),
                                batch_negatives=params.use_negative_examples_from_batch,
                                same_view_negatives=same_view)
