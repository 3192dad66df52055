"""SwAV (loss_type "swav"): swapped prediction of Sinkhorn-Knopp codes over learned prototypes."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, Dict, Sequence, Tuple

import attrs
import torch
from torch import Tensor

from selfsup import dist
from selfsup.config.options import option
from selfsup.methods.base import (
    LARS_WITHOUT_BIAS_AND_NORM,
    NO_NEGATIVES,
    LossOutput,
    Method,
    PairwiseCriterion,
    Preset,
    Step,
    Views,
    cross_entropy_with_soft_targets,
    fail,
    fp32,
    identity,
    register,
)
from selfsup.methods.dino import SHORT_RUN_FREEZE_FRACTION
from selfsup.nn.heads import PrototypeLayer

if TYPE_CHECKING:
    from selfsup.config.fields import ModelParams


@torch.no_grad()
def sinkhorn_knopp(
    scores: Tensor,
    epsilon: float,
    iterations: int,
    sum_over_processes: Callable[[Tensor], Tensor] = identity,
    max_over_processes: Callable[[Tensor], Tensor] = identity,
) -> Tensor:
    """SwAV codes (Caron et al. 2020, arXiv:2006.09882): an equipartitioned soft assignment of B samples to K
    prototypes from scores [B, K], computed in fp32. Rows of the result sum to 1; columns to B/K.

    Under DDP the two reductions make the partition constraint hold over the global batch; the exponent is shifted
    by the global maximum score (it cancels in the normalizations, and exp(s / 0.05) overflows otherwise).
    """
    scores = fp32(scores)
    q = torch.exp((scores - max_over_processes(scores.max())) / epsilon).T  # [K, B]
    total_batch = sum_over_processes(torch.tensor(float(q.shape[1]), device=q.device))
    num_prototypes = q.shape[0]
    q /= sum_over_processes(q.sum())
    for _ in range(iterations):
        q /= sum_over_processes(q.sum(dim=1, keepdim=True)) * num_prototypes  # each prototype gets 1/K of the mass
        q /= q.sum(dim=0, keepdim=True) * total_batch  # each sample gets 1/B of the mass
    return (q * total_batch).T  # [B, K], rows sum to 1


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
        self.prototypes = PrototypeLayer(dim, num_prototypes)
        self.temperature = temperature
        self.sinkhorn = functools.partial(
            sinkhorn_knopp,
            epsilon=epsilon,
            iterations=iterations,
            sum_over_processes=dist.all_reduce_sum,
            max_over_processes=dist.all_reduce_max,
        )
        self.queue_start_epoch = queue_start_epoch
        self.queue_active = False
        self.feature_queue: Tensor
        self.queue_filled: Tensor
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
        assert codes is not None and query is not None
        loss = cross_entropy_with_soft_targets(codes, self.prototypes(query), self.temperature)
        return LossOutput(loss, {})

    @torch.no_grad()
    def after_step(self, keys: Views) -> None:
        if not self.queue_active:
            return
        for view in range(self.feature_queue.shape[0]):
            features = dist.gather(keys[view].detach()).to(self.feature_queue.dtype)  # type: ignore[union-attr]
            queue = self.feature_queue[view]
            queue.copy_(torch.cat([features, queue[: queue.shape[0] - features.shape[0]]]))
        self.queue_filled.add_(features.shape[0])


@attrs.frozen(kw_only=True, slots=False)
class SwAVOptions:
    """SwAV"""

    sinkhorn_epsilon: float = option(0.05, "SwAV entropy regularization of the Sinkhorn-Knopp codes", low=0,
                                     low_open=True)
    sinkhorn_iterations: int = option(3, "SwAV Sinkhorn-Knopp iterations", low=1)
    swav_queue_length: int = option(0, "SwAV: stored features per global view that enlarge the Sinkhorn batch "
                                    "(0 = none)", low=0)
    swav_queue_start_epoch: int = option(15, "SwAV: first epoch that uses the feature queue", low=0)


SWAV = Preset(
    name="SwAVParams", key="swav", paper="SwAV, arXiv:2006.09882",
    summary="swapped prediction of Sinkhorn-Knopp codes over 3000 prototypes, 2 global + 6 local crops, feature "
    "queue from epoch 15, prototypes frozen for the first epoch, colour jitter strength s=1",
    doc="SwAV (Caron et al. 2020, arXiv:2006.09882): swapped prediction of Sinkhorn-Knopp codes (epsilon 0.05, 3 "
    "iterations, fp32) over 3000 normalized prototypes, T=0.1, codes from the 2 global crops predicted by every "
    "other crop (6 local crops), a 3840-feature queue from epoch 15, prototypes frozen for the first epoch, LARS "
    "lr 0.6 to 0.0006 (the batch-256 recipe).",
    fields=dict(
        loss_type="swav",
        use_lagging_model=False,
        use_target_stop_gradient=True,
        use_both_augmentations_as_queries=True,
        view_pair_reduction="mean",
        projection_mlp_layers=2,
        mlp_normalization="bn",
        mlp_hidden_dim=2048,
        dim=128,
        num_prototypes=3000,
        T=0.1,
        sinkhorn_epsilon=0.05,
        sinkhorn_iterations=3,
        freeze_prototypes_epochs=1,
        swav_queue_length=3840,
        swav_queue_start_epoch=15,
        num_local_crops=6,
        transform_s=1.0,
        global_crop_scale=(0.14, 1.0),
        local_crop_scale=(0.05, 0.14),
        lr=0.6,
        final_lr_schedule_value=0.0006,
        weight_decay=1e-6,
        lars_warmup_epochs=0,
        **NO_NEGATIVES,
        **LARS_WITHOUT_BIAS_AND_NORM,
    ),
)


@register
class SwAV(Method):
    loss_types = ("swav",)
    presets = (SWAV,)
    momentum_target = False

    def check(self, p: ModelParams) -> None:
        if p.swav_queue_length % p.batch_size != 0:
            fail("swav_queue_length", f"{p.swav_queue_length} must be a multiple of batch_size {p.batch_size}")

    def check_global_batch(self, p: ModelParams, global_batch: int) -> None:
        if p.swav_queue_length % global_batch != 0:
            raise ValueError(
                f"ModelParams.swav_queue_length={p.swav_queue_length} must be a multiple of the global batch "
                f"{global_batch} (batch_size {p.batch_size} x {global_batch // p.batch_size} processes): every step "
                "enqueues the features of all processes"
            )

    def criterion(self, p: ModelParams, pairs: Sequence[Tuple[int, int]], reduction: str,
                  factor: float) -> PairwiseCriterion:
        return SwAVCriterion(
            pairs, reduction, factor,
            dim=p.dim,
            num_prototypes=p.num_prototypes,
            temperature=p.T,
            epsilon=p.sinkhorn_epsilon,
            iterations=p.sinkhorn_iterations,
            num_global_views=p.num_global_crops,
            queue_length=p.swav_queue_length,
            queue_start_epoch=p.swav_queue_start_epoch,
        )

    def short_run_overrides(self, p: ModelParams) -> Dict[str, Any]:
        return dict(freeze_prototypes_epochs=min(p.freeze_prototypes_epochs,
                                                 int(SHORT_RUN_FREEZE_FRACTION * p.max_epochs)))

    def small_run_overrides(self, p: ModelParams, batch_size: int) -> Dict[str, Any]:
        return dict(num_prototypes=16, swav_queue_length=2 * batch_size if p.swav_queue_length else 0,
                    num_local_crops=min(p.num_local_crops, 2))
