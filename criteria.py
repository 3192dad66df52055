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

import components
import distributed
import losses
import utils
from model_params import ModelParams

PairLoss = Callable[[Tensor, Tensor], Tensor]
Views = Sequence[Optional[Tensor]]


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
            step = self.prepare(Step(_fp32_views(queries), _fp32_views(keys), _fp32_or_none(memory), labels))
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


def _fp32_or_none(x: Optional[Tensor]) -> Optional[Tensor]:
    return None if x is None else x.to(torch.promote_types(x.dtype, torch.float32))


def _fp32_views(views: Views) -> List[Optional[Tensor]]:
    return [_fp32_or_none(v) for v in views]


def cosine_metrics(query: Tensor, key: Tensor) -> Dict[str, Tensor]:
    return dict(zip(("step_pos_cos", "step_neg_cos"), losses.positive_negative_cosine(query, key)))


def accuracy_metrics(pos: Tensor, neg: Tensor) -> Dict[str, Tensor]:
    return dict(zip(("step_train_acc1", "step_train_acc5"), losses.contrastive_accuracy(pos, neg)))


def own_rows(batch_size: int, num_candidates: int, device: torch.device) -> Tensor:
    """Indices of this process's ``batch_size`` samples among ``num_candidates`` candidates: at offset rank x
    batch_size when the candidates were gathered from every process (rank order), at 0 when they are local."""
    offset = distributed.rank() * batch_size if num_candidates > batch_size else 0
    return torch.arange(batch_size, device=device) + offset


class ContrastiveCriterion(PairwiseCriterion):
    """Positive = the key of the same image in view t; negatives from the batch and/or a queue.

    In-batch negatives are the other images' keys of view t and, when ``same_view_negatives`` (the target is the
    online network, as in SimCLR), the other images' keys of the query's own view s: NT-Xent's 2B-2 negatives.
    ``gather`` collects candidates from every process with gradient (:func:`distributed.gather_with_grad`,
    identity in a single process) or is the identity (per-device negatives); positives sit at this process's offset
    in the candidates.
    """

    def __init__(
        self,
        pairs: Sequence[Tuple[int, int]],
        reduction: str,
        factor: float,
        loss_fn: PairLoss,
        batch_negatives: bool,
        same_view_negatives: bool,
        gather: Callable[[Tensor], Tensor] = distributed.gather_with_grad,
    ) -> None:
        super().__init__(pairs, reduction, factor)
        self.loss_fn = loss_fn
        self.batch_negatives = batch_negatives
        self.same_view_negatives = same_view_negatives
        self.gather = gather

    def pair_loss(self, s: int, t: int, step: Step) -> LossOutput:
        query, key = step.queries[s], step.keys[t]
        negatives = []
        if self.batch_negatives:
            candidates = self.gather(key)
            positive_index = own_rows(query.shape[0], candidates.shape[0], query.device)
            pos, cross_view = losses.split_positive(query @ candidates.T, positive_index)
            negatives.append(cross_view)
        else:
            pos = (query * key).sum(dim=1)
        same_view_keys = step.keys[s]
        if self.same_view_negatives and same_view_keys is not None:
            candidates = self.gather(same_view_keys)
            own = own_rows(query.shape[0], candidates.shape[0], query.device)
            negatives.append(losses.split_positive(query @ candidates.T, own)[1])
        if step.memory is not None:
            negatives.append(query @ step.memory)  # [B, K]
        neg = torch.cat(negatives, dim=1) if negatives else query.new_zeros(query.shape[0], 0)
        metrics = cosine_metrics(query, key)
        if self.batch_negatives or step.memory is not None:  # logged from the first step, when the queue is empty
            metrics.update(accuracy_metrics(pos, neg))
        return LossOutput(self.loss_fn(pos, neg), metrics)


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
            loss_fn=losses.info_nce_loss,
            batch_negatives=True,
            same_view_negatives=same_view_negatives,
            gather=gather,
        )
        self.temperature = temperature

    def pair_loss(self, s: int, t: int, step: Step) -> LossOutput:
        query, key, labels = step.queries[s], step.keys[t], step.labels
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
            similarities.append(losses.split_positive(query @ self.gather(same_view_keys).T, own)[1])
            positives.append(losses.split_positive(same_class, own)[1])
        loss = losses.supervised_contrastive_loss(
            torch.cat(similarities, dim=1), torch.cat(positives, dim=1), self.temperature
        )
        return LossOutput(loss, cosine_metrics(query, key))


class NNCLRCriterion(PairwiseCriterion):
    """NNCLR: the nearest neighbour of key t in the support set (memory) is the anchor; the candidates are the
    queries of view s of every image in the batch (gathered with gradient), the positive being the same image."""

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

    def pair_loss(self, s: int, t: int, step: Step) -> LossOutput:
        query, key, memory = step.queries[s], step.keys[t], step.memory
        assert memory is not None, "NNCLR needs its support set"
        with torch.no_grad():
            # the first step has an empty support set: each key is its own neighbour
            neighbours = memory.T[(key @ memory).argmax(dim=1)] if memory.shape[1] else key  # [B, D]
        candidates = self.gather(query)
        pos, neg = losses.split_positive(
            neighbours @ candidates.T, own_rows(query.shape[0], candidates.shape[0], query.device)
        )
        metrics = {**cosine_metrics(query, key), **accuracy_metrics(pos.detach(), neg.detach())}
        return LossOutput(losses.info_nce_loss(pos, neg, self.temperature), metrics)


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

    def pair_loss(self, s: int, t: int, step: Step) -> LossOutput:
        query, key = step.queries[s], step.keys[t]
        terms = self.fn(query, key)
        metrics = {name: value.detach() for name, value in terms.items() if name != "loss"}
        return LossOutput(terms["loss"], {**metrics, **cosine_metrics(query, key)})


class DINOCriterion(PairwiseCriterion):
    """DINO self-distillation: cross-entropy of the centered, sharpened teacher output of global view t against
    the student output of view s; the center is an EMA of the teacher outputs over all processes."""

    def __init__(
        self,
        pairs: Sequence[Tuple[int, int]],
        reduction: str,
        factor: float,
        num_prototypes: int,
        student_temperature: float,
        teacher_temperature: float,
        warmup_start: float,
        warmup_epochs: int,
        center_momentum: float,
    ) -> None:
        super().__init__(pairs, reduction, factor)
        self.student_temperature = student_temperature
        self.final_teacher_temperature = teacher_temperature
        self.warmup_start, self.warmup_epochs = warmup_start, warmup_epochs
        self.teacher_temperature = warmup_start if warmup_epochs > 0 else teacher_temperature
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(num_prototypes))

    def set_epoch(self, epoch: int) -> None:
        progress = min(epoch / self.warmup_epochs, 1.0) if self.warmup_epochs > 0 else 1.0
        self.teacher_temperature = self.warmup_start + progress * (self.final_teacher_temperature - self.warmup_start)

    def pair_loss(self, s: int, t: int, step: Step) -> LossOutput:
        query, key = step.queries[s], step.keys[t]
        loss = losses.dino_loss(query, key, self.center, self.student_temperature, self.teacher_temperature)
        return LossOutput(
            loss, {**cosine_metrics(query, key), "teacher_temperature": torch.tensor(self.teacher_temperature)}
        )

    @torch.no_grad()
    def after_step(self, keys: Views) -> None:
        teacher = torch.cat([k for k in keys if k is not None])
        batch_mean = distributed.gather(teacher).float().mean(dim=0)
        self.center.mul_(self.center_momentum).add_(batch_mean, alpha=1 - self.center_momentum)


class SwAVCriterion(PairwiseCriterion):
    """SwAV swapped prediction: Sinkhorn-Knopp codes of global view t (no gradient) predicted from the prototype
    scores of view s. Owns the prototypes and the optional feature queue (per global view) that enlarges the batch
    the codes are computed on."""

    def __init__(
        self,
        pairs: Sequence[Tuple[int, int]],
        reduction: str,
        factor: float,
        dim: int,
        num_prototypes: int,
        temperature: float,
        epsilon: float,
        iterations: int,
        num_global_views: int,
        queue_length: int,
        queue_start_epoch: int,
    ) -> None:
        super().__init__(pairs, reduction, factor)
        self.prototypes = utils.PrototypeLayer(dim, num_prototypes)
        self.temperature = temperature
        self.sinkhorn = functools.partial(
            losses.sinkhorn_knopp,
            epsilon=epsilon,
            iterations=iterations,
            sum_over_processes=distributed.all_reduce_sum,
            max_over_processes=distributed.all_reduce_max,
        )
        self.queue_start_epoch = queue_start_epoch
        self.queue_active = False
        self.register_buffer("feature_queue", torch.zeros(num_global_views, queue_length, dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))

    def set_epoch(self, epoch: int) -> None:
        self.queue_active = self.feature_queue.shape[1] > 0 and epoch >= self.queue_start_epoch

    def prepare(self, step: Step) -> Step:
        return step._replace(keys=[None if k is None else self._codes(i, k) for i, k in enumerate(step.keys)])

    @torch.no_grad()
    def _codes(self, view: int, features: Tensor) -> Tensor:
        scores = self.prototypes(features.detach())
        queue = self.feature_queue[view]
        if self.queue_active and int(self.queue_filled) >= queue.shape[0]:
            scores = torch.cat([scores, self.prototypes(queue)])
        return self.sinkhorn(scores)[: features.shape[0]]

    def pair_loss(self, s: int, t: int, step: Step) -> LossOutput:
        codes, query = step.keys[t], step.queries[s]
        loss = losses.cross_entropy_with_soft_targets(codes, self.prototypes(query), self.temperature)
        return LossOutput(loss, {})

    @torch.no_grad()
    def after_step(self, keys: Views) -> None:
        if not self.queue_active:
            return
        for view in range(self.feature_queue.shape[0]):
            features = distributed.gather(keys[view].detach()).to(self.feature_queue.dtype)  # type: ignore[union-attr]
            queue = self.feature_queue[view]
            queue.copy_(torch.cat([features, queue[: queue.shape[0] - features.shape[0]]]))
        self.queue_filled.add_(features.shape[0])


def contrastive_loss_fn(params: ModelParams) -> PairLoss:
    """The (pos, neg) -> loss function selected by loss_type and use_eqco_margin."""
    if params.use_eqco_margin:
        return functools.partial(losses.eqco_loss, temperature=params.T, alpha=params.eqco_alpha)
    return {
        "ce": functools.partial(losses.info_nce_loss, temperature=params.T),
        "bce": functools.partial(losses.binary_contrastive_loss, temperature=params.T),
        "ip": losses.inner_product_loss,
    }[params.loss_type]


def _as_terms(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Dict[str, Tensor]]:
    return lambda q, k: {"loss": fn(q, k)}


def build_criterion(params: ModelParams) -> PairwiseCriterion:
    """Resolve loss_type and the negative / symmetry flags into a criterion."""
    p = params
    pairs = view_pairs(p.num_global_crops, p.num_local_crops, p.use_both_augmentations_as_queries)
    common = dict(pairs=pairs, reduction=p.view_pair_reduction, factor=p.loss_constant_factor)
    same_view = p.use_negative_examples_from_batch and not p.use_lagging_model and p.use_both_augmentations_as_queries
    # In-batch candidates: the global batch (gradients return to the process that produced each embedding) or this
    # process's batch only.
    gather = distributed.gather_with_grad if p.gather_negatives_across_devices else components.identity
    if p.loss_type in ("ce", "bce", "ip"):
        return ContrastiveCriterion(
            **common,
            loss_fn=contrastive_loss_fn(p),
            batch_negatives=p.use_negative_examples_from_batch,
            same_view_negatives=same_view,
            gather=gather,
        )
    if p.loss_type == "supcon":
        return SupConCriterion(**common, temperature=p.T, same_view_negatives=same_view, gather=gather)
    if p.loss_type == "nnclr":
        return NNCLRCriterion(**common, temperature=p.T, gather=gather)
    if p.loss_type == "dino":
        return DINOCriterion(
            **common,
            num_prototypes=p.num_prototypes,
            student_temperature=p.T,
            teacher_temperature=p.teacher_temperature,
            warmup_start=p.teacher_temperature_warmup_start,
            warmup_epochs=p.teacher_temperature_warmup_epochs,
            center_momentum=p.center_momentum,
        )
    if p.loss_type == "swav":
        return SwAVCriterion(
            **common,
            dim=p.dim,
            num_prototypes=p.num_prototypes,
            temperature=p.T,
            epsilon=p.sinkhorn_epsilon,
            iterations=p.sinkhorn_iterations,
            num_global_views=p.num_global_crops,
            queue_length=p.swav_queue_length,
            queue_start_epoch=p.swav_queue_start_epoch,
        )
    pair_functions: Dict[str, Callable[[Tensor, Tensor], Dict[str, Tensor]]] = {
        "vic": functools.partial(
            losses.vicreg_loss,
            invariance_weight=p.invariance_loss_weight,
            variance_weight=p.variance_loss_weight,
            covariance_weight=p.covariance_loss_weight,
            eps=p.variance_loss_epsilon,
            gather=distributed.gather_with_grad if p.vicreg_gather_across_devices else components.identity,
        ),
        "barlow": _as_terms(functools.partial(losses.barlow_twins_loss, off_diagonal_weight=p.barlow_lambda)),
        "neg_cos": _as_terms(losses.negative_cosine_loss),
    }
    return PairFunctionCriterion(**common, fn=pair_functions[p.loss_type])
