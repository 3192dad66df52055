"""The criterion of a joint-embedding step: a per-pair loss applied to every (query view, key view) pair and
combined over the pairs.

A step produces one query per query view (online prediction) and one key per key view (target projection). A
criterion applies a per-pair loss to every (query view s, key view t) pair with s != t and combines them by sum or
mean, times ``loss_constant_factor``: two views with ``use_both_augmentations_as_queries`` give the orderings
(0 -> 1) and (1 -> 0); without it only (0 -> 1); local crops are queries against every global view.
"""

from __future__ import annotations

from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from selfsup.methods.losses import cosine_metrics, fp32
from selfsup.nn.memory import Views

PairLoss = Callable[[Tensor, Tensor], Tensor]


class PairStep(NamedTuple):
    """What a criterion sees of one training step."""

    queries: Views  # one [B, D] online prediction per query view, None elsewhere
    keys: Views  # one [B, D] target projection per key view, None elsewhere
    memory: Optional[Tensor] = None  # the method's memory (nn.memory.Memory.read): [slots, rows, D]
    labels: Optional[Tensor] = None  # [B] class labels, -1 where unknown (SupCon only)


class LossOutput(NamedTuple):
    loss: Tensor
    metrics: Dict[str, Tensor]  # detached scalars, logged under these names


def view_pairs(num_global: int, num_local: int, symmetric: bool) -> List[Tuple[int, int]]:
    """(query view, key view) pairs. Views 0..num_global-1 are global crops, the rest local crops."""
    key_views = range(num_global) if symmetric else range(1, num_global)
    query_views = [*(range(num_global) if symmetric else [0]), *range(num_global, num_global + num_local)]
    return [(s, t) for s in query_views for t in key_views if s != t]


def _fp32_or_none(x: Optional[Tensor]) -> Optional[Tensor]:
    return None if x is None else fp32(x)


class PairwiseCriterion(nn.Module):
    """Sums or averages a per-pair loss over view pairs; subclasses define :meth:`pair_loss`.

    Hooks for stateful criteria: :meth:`set_epoch` before each training epoch and :meth:`after_step` with the whole
    step (its queries, keys, memory and labels) and its output, once the loss no longer reads them.
    """

    def __init__(self, pairs: Sequence[Tuple[int, int]], reduction: str, factor: float) -> None:
        super().__init__()
        self.pairs = list(pairs)
        self.query_views = sorted({s for s, _ in self.pairs})
        self.key_views = sorted({t for _, t in self.pairs})
        self.reduce = torch.sum if reduction == "sum" else torch.mean
        self.factor = factor

    def forward(
        self, queries: Views, keys: Views, memory: Optional[Tensor] = None, labels: Optional[Tensor] = None
    ) -> LossOutput:
        """The combined loss of a step; see :class:`PairStep` for the arguments.

        Runs in float32 with autocast switched off: under mixed precision autocast would run the similarity and
        covariance matmuls (and SwAV's / DINO's prototype scores) in half precision again, however the inputs are
        cast, and exp(s / T), Sinkhorn's exp(s / 0.05) and Barlow's 1 - C_ii need the full mantissa.
        """
        device = next(v for v in queries if v is not None).device
        with torch.autocast(device.type, enabled=False):
            step = PairStep([_fp32_or_none(q) for q in queries], [_fp32_or_none(k) for k in keys],
                            _fp32_or_none(memory), labels)
            step = self.prepare(step)
            outputs = [self.pair_loss(s, t, step) for s, t in self.pairs]
        loss = self.factor * self.reduce(torch.stack([out.loss for out in outputs]))
        metrics = {name: torch.stack([out.metrics[name] for out in outputs]).mean() for name in outputs[0].metrics}
        return LossOutput(loss, metrics)

    def prepare(self, step: PairStep) -> PairStep:
        """The step as the pair losses see it (SwAV replaces the keys by their codes)."""
        return step

    def pair_loss(self, s: int, t: int, step: PairStep) -> LossOutput:
        """The loss of query view ``s`` against key view ``t``."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Called before each training epoch (epoch-based schedules)."""

    def after_step(self, step: PairStep, output: LossOutput) -> None:
        """Called after the backward pass with the step as the criterion received it and its output (running
        statistics of the keys or queries)."""


class PairFunctionCriterion(PairwiseCriterion):
    """A loss that is a function of the two views' embeddings only (VICReg, Barlow Twins, SimSiam).

    ``fn(query, key)`` returns a dict holding "loss" and optional extra terms, which are logged.
    """

    def __init__(
        self,
        pairs: Sequence[Tuple[int, int]],
        reduction: str,
        factor: float,
        fn: Callable[[Tensor, Tensor], Dict[str, Tensor]],
    ) -> None:
        super().__init__(pairs, reduction, factor)
        self.fn = fn

    def pair_loss(self, s: int, t: int, step: PairStep) -> LossOutput:
        query, key = step.queries[s], step.keys[t]
        terms = self.fn(query, key)  # type: ignore[arg-type]
        metrics = {name: value.detach() for name, value in terms.items() if name != "loss"}
        return LossOutput(terms["loss"], {**metrics, **cosine_metrics(query, key)})  # type: ignore[arg-type]


def as_terms(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Dict[str, Tensor]]:
    """A loss ``fn(query, key) -> Tensor`` as a function returning ``{"loss": ...}``, for PairFunctionCriterion."""
    return lambda q, k: {"loss": fn(q, k)}
