"""What every method shares: the step's views and the criterion that combines per-pair losses, small loss helpers,
and :class:`Method`, the spec a method file registers (its loss types, config checks, heads, recipe).

A step produces one query per query view (online prediction) and one key per key view (target projection). A
criterion applies a per-pair loss to every (query view s, key view t) pair with s != t and combines them by sum or
mean, times ``loss_constant_factor``: two views with ``use_both_augmentations_as_queries`` give the orderings
(0 -> 1) and (1 -> 0); without it only (0 -> 1); local crops are queries against every global view.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import attr
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import dist

if TYPE_CHECKING:
    from selfsup.config.fields import ModelParams

PairLoss = Callable[[Tensor, Tensor], Tensor]
Views = Sequence[Optional[Tensor]]
VIEW_PAIR_REDUCTIONS = ("sum", "mean")


# --- loss helpers -----------------------------------------------------------------------------------------------------


def fp32(x: Tensor) -> Tensor:
    """At least float32: half-precision logits overflow in exp and lose the small differences that matter."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def identity(x: Tensor) -> Tensor:
    return x


def split_positive(similarity: Tensor, positive_index: Tensor) -> Tuple[Tensor, Tensor]:
    """Split [B, N] similarities into the positive column of each row, [B], and the other columns, [B, N-1]."""
    rows = torch.arange(similarity.shape[0], device=similarity.device)
    pos = similarity[rows, positive_index]
    keep = torch.ones_like(similarity, dtype=torch.bool)
    keep[rows, positive_index] = False
    return pos, similarity[keep].view(similarity.shape[0], similarity.shape[1] - 1)


@torch.no_grad()
def contrastive_accuracy(pos: Tensor, neg: Tensor) -> Tuple[Tensor, Tensor]:
    """Top-1 and top-5 accuracy (percent) of picking the positive among [pos, neg]; ties count against it.

    The positive is in the top k when it beats the k-th largest negative, so with N < k negatives it always is.
    """
    top = neg.topk(min(5, neg.shape[1]), dim=1).values  # one pass over [B, N], no [B, N] temporary
    below_all = torch.full_like(pos, -math.inf)
    first, fifth = (top[:, k] if top.shape[1] > k else below_all for k in (0, 4))
    return (first < pos).float().mean() * 100, (fifth < pos).float().mean() * 100


@torch.no_grad()
def positive_negative_cosine(query: Tensor, key: Tensor) -> Tuple[Tensor, Tensor]:
    """Mean cosine of each query [B, D] with its own key [B, D], and with the keys of the other B-1 samples.

    Both near 1 is the signature of collapse (all embeddings equal). O(B*D): the off-diagonal sum is
    (sum of queries) . (sum of keys) minus the diagonal.
    """
    q, k = F.normalize(fp32(query), dim=1), F.normalize(fp32(key), dim=1)
    b = q.shape[0]
    diagonal = (q * k).sum(dim=1)
    off_diagonal = (q.sum(dim=0) @ k.sum(dim=0) - diagonal.sum()) / max(b * (b - 1), 1)
    return diagonal.mean(), off_diagonal


def cross_entropy_with_soft_targets(target_probs: Tensor, logits: Tensor, temperature: float) -> Tensor:
    """-sum_k P_k log softmax(logits / T)_k, mean over the batch; target_probs, logits [B, K] (DINO, SwAV)."""
    return -(target_probs * F.log_softmax(fp32(logits) / temperature, dim=1)).sum(dim=1).mean()


def cosine_metrics(query: Tensor, key: Tensor) -> Dict[str, Tensor]:
    return dict(zip(("step_pos_cos", "step_neg_cos"), positive_negative_cosine(query, key)))


def accuracy_metrics(pos: Tensor, neg: Tensor) -> Dict[str, Tensor]:
    return dict(zip(("step_train_acc1", "step_train_acc5"), contrastive_accuracy(pos, neg)))


def own_rows(batch_size: int, num_candidates: int, device: torch.device) -> Tensor:
    """Indices of this process's ``batch_size`` samples among ``num_candidates`` candidates: at offset rank x
    batch_size when the candidates were gathered from every process (rank order), at 0 when they are local."""
    offset = dist.rank() * batch_size if num_candidates > batch_size else 0
    return torch.arange(batch_size, device=device) + offset


# --- criteria ---------------------------------------------------------------------------------------------------------


class Step(NamedTuple):
    """What a criterion sees of one training step."""

    queries: Views  # one [B, D] online prediction per query view, None elsewhere
    keys: Views  # one [B, D] target projection per key view, None elsewhere
    memory: Optional[Tensor] = None  # queue of past keys [D, K]
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

    Hooks for stateful criteria: :meth:`set_epoch` before each training epoch and :meth:`after_step` with the
    step's keys after each optimizer step.
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
        """The combined loss of a step; see :class:`Step` for the arguments.

        Runs in float32 with autocast switched off: under mixed precision autocast would run the similarity and
        covariance matmuls (and SwAV's / DINO's prototype scores) in half precision again, however the inputs are
        cast, and exp(s / T), Sinkhorn's exp(s / 0.05) and Barlow's 1 - C_ii need the full mantissa.
        """
        device = next(v for v in queries if v is not None).device
        with torch.autocast(device.type, enabled=False):
            step = Step([_fp32_or_none(q) for q in queries], [_fp32_or_none(k) for k in keys],
                        _fp32_or_none(memory), labels)
            step = self.prepare(step)
            outputs = [self.pair_loss(s, t, step) for s, t in self.pairs]
        loss = self.factor * self.reduce(torch.stack([out.loss for out in outputs]))
        metrics = {name: torch.stack([out.metrics[name] for out in outputs]).mean() for name in outputs[0].metrics}
        return LossOutput(loss, metrics)

    def prepare(self, step: Step) -> Step:
        """The step as the pair losses see it (SwAV replaces the keys by their codes)."""
        return step

    def pair_loss(self, s: int, t: int, step: Step) -> LossOutput:
        """The loss of query view ``s`` against key view ``t``."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Called before each training epoch (epoch-based schedules)."""

    def after_step(self, keys: Views) -> None:
        """Called with the step's keys after each optimizer step (running statistics, feature queues)."""


class PairFunctionCriterion(PairwiseCriterion):
    """A loss that is a function of the two views' embeddings only (VICReg, Barlow Twins, SimSiam, W-MSE).

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

    def pair_loss(self, s: int, t: int, step: Step) -> LossOutput:
        query, key = step.queries[s], step.keys[t]
        terms = self.fn(query, key)  # type: ignore[arg-type]
        metrics = {name: value.detach() for name, value in terms.items() if name != "loss"}
        return LossOutput(terms["loss"], {**metrics, **cosine_metrics(query, key)})  # type: ignore[arg-type]


def as_terms(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Dict[str, Tensor]]:
    """A loss ``fn(query, key) -> Tensor`` as a function returning ``{"loss": ...}``, for PairFunctionCriterion."""
    return lambda q, k: {"loss": fn(q, k)}


# --- method specs and their registry ----------------------------------------------------------------------------------


@attr.s(auto_attribs=True, frozen=True, kw_only=True)
class Preset:
    """A named recipe: the ModelParams fields that make a method, with the paper it follows.

    ``derive`` computes fields that follow others (MoCo v3's loss factor is 2T) from the caller's overrides.
    """

    name: str  # the public function name, e.g. "BYOLParams"
    key: str  # the command-line / PRESETS name, e.g. "byol"
    paper: str  # "BYOL, arXiv:2006.07733"
    summary: str  # one line for the preset table
    doc: str  # the docstring of the preset function
    fields: Mapping[str, Any] = attr.ib(factory=dict)
    derive: Optional[Callable[[Mapping[str, Any]], Dict[str, Any]]] = None

    def resolve(self, overrides: Mapping[str, Any]) -> Dict[str, Any]:
        """The preset's fields with ``overrides`` on top."""
        derived = self.derive(overrides) if self.derive is not None else {}
        return {**self.fields, **derived, **overrides}


def fail(field: str, message: str) -> None:
    """Raise the ValueError of an impossible ModelParams setting."""
    raise ValueError(f"ModelParams.{field}: {message}")


def suspicious(message: str) -> None:
    """Warn about a legal but suspicious ModelParams setting."""
    warnings.warn(f"Suspicious configuration: {message}", UserWarning, stacklevel=5)


class Method:
    """What one method knows, registered under its ``loss_type`` values by :func:`register`.

    The defaults describe a method that reads no negatives, keeps no queue and adds no head, checks or recipe of its
    own; a method file overrides what differs and implements :meth:`criterion`.
    """

    loss_types: ClassVar[Tuple[str, ...]] = ()
    presets: ClassVar[Tuple[Preset, ...]] = ()  # the named recipes of this method family
    reads_negatives: ClassVar[bool] = False  # the use_negative_examples_from_* flags matter
    momentum_target: ClassVar[Optional[bool]] = None  # True / False: defined with / without an EMA target

    def active(self, p: ModelParams) -> bool:
        """Whether params ``p`` select this method (by their loss_type)."""
        return REGISTRY.get(p.loss_type) is self

    def uses_queue(self, p: ModelParams) -> bool:
        """Whether a queue of past keys (``K``) is kept."""
        return False

    def head_prototypes(self, p: ModelParams) -> int:
        """Width of a prototype layer that ends the projection head (DINO), 0 for none."""
        return 0

    def check(self, p: ModelParams) -> None:
        """Raise (:func:`fail`) or warn (:func:`suspicious`) about settings of this method; called when it is the
        params' loss_type."""

    def check_options(self, p: ModelParams) -> None:
        """Checks of this method's own fields that apply whatever the loss_type; called for every method."""

    def check_global_batch(self, p: ModelParams, global_batch: int) -> None:
        """Checks that need the number of processes, when fit starts."""

    def criterion(self, p: ModelParams, pairs: Sequence[Tuple[int, int]], reduction: str,
                  factor: float) -> PairwiseCriterion:
        """The step's loss for params ``p``, over the (query view, key view) ``pairs``."""
        raise NotImplementedError

    def short_run_overrides(self, p: ModelParams) -> Dict[str, Any]:
        """Field overrides of this method for runs shorter than its paper's schedules (config.recipes)."""
        return {}

    def small_run_overrides(self, p: ModelParams, batch_size: int) -> Dict[str, Any]:
        """Field overrides of this method that shrink it for CPU tests (config.recipes)."""
        return {}


REGISTRY: Dict[str, Method] = {}


def register(cls: type) -> type:
    """Class decorator: register an instance of a :class:`Method` subclass under each of its loss_types."""
    method = cls()
    for name in cls.loss_types:  # type: ignore[attr-defined]
        if name in REGISTRY:
            raise ValueError(f"loss_type {name!r} is registered twice: {type(REGISTRY[name]).__name__}, {cls.__name__}")
        REGISTRY[name] = method
    return cls


def preset_specs() -> Dict[str, Preset]:
    """Every registered method's presets, by command-line name."""
    return {spec.key: spec for method in dict.fromkeys(REGISTRY.values()) for spec in method.presets}


def method_of(loss_type: str) -> Method:
    """The registered method of ``loss_type``."""
    try:
        return REGISTRY[loss_type]
    except KeyError:
        raise ValueError(f"loss_type {loss_type!r} is not registered; registered: {', '.join(REGISTRY)}") from None


# Recipe fragments several presets share.
LARS_WITHOUT_BIAS_AND_NORM: Dict[str, Any] = dict(optimizer_name="lars", exclude_bias_and_norm_from_lars=True)
NO_NEGATIVES: Dict[str, Any] = dict(use_negative_examples_from_queue=False, use_negative_examples_from_batch=False)
BYOL_VIEWS: Dict[str, Any] = dict(transform_type="byol", global_crop_scale=(0.08, 1.0))
