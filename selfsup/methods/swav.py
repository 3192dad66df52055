"""SwAV (loss_type "swav"): swapped prediction of Sinkhorn-Knopp codes over learned prototypes."""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import attrs
import torch
from torch import Tensor

from selfsup import distributed
from selfsup.methods.criteria import LossOutput, PairStep, PairwiseCriterion
from selfsup.methods.dino import SHORT_RUN_FREEZE_FRACTION
from selfsup.methods.losses import cross_entropy_with_soft_targets, fp32
from selfsup.methods.method import Method
from selfsup.methods.options import SharedParams, options_of
from selfsup.methods.preset import LARS_WITHOUT_BIAS_AND_NORM, NO_NEGATIVES, Preset
from selfsup.methods.registry import register
from selfsup.methods.steps import StateDict
from selfsup.nn.heads import PrototypeLayer
from selfsup.nn.memory import Memory, check_length
from selfsup.options import option


@torch.no_grad()
def sinkhorn_knopp(
    scores: Tensor,
    epsilon: float,
    iterations: int,
    sum_over_processes: Callable[[Tensor], Tensor] = distributed.identity,
    max_over_processes: Callable[[Tensor], Tensor] = distributed.identity,
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
    scores of view s. Owns the prototypes; the step's memory (SwAV's feature queue, one slot per global view), once
    full, enlarges the batch the codes are computed on."""

    def __init__(
        self,
        pairs: Sequence[Tuple[int, int]],
        reduction: str,
        factor: float,
        prototypes: PrototypeLayer,
        temperature: float,
        epsilon: float,
        iterations: int,
    ) -> None:
        super().__init__(pairs, reduction, factor)
        self.prototypes = prototypes
        self.temperature = temperature
        self.sinkhorn = functools.partial(
            sinkhorn_knopp,
            epsilon=epsilon,
            iterations=iterations,
            sum_over_processes=distributed.all_reduce_sum,
            max_over_processes=distributed.all_reduce_max,
        )

    def prepare(self, step: PairStep) -> PairStep:
        codes = [None if k is None else self._codes(k, None if step.memory is None else step.memory[i])
                 for i, k in enumerate(step.keys)]
        return step._replace(keys=codes)

    @torch.no_grad()
    def _codes(self, features: Tensor, queue: Optional[Tensor]) -> Tensor:
        scores = self.prototypes(features.detach())
        if queue is not None:
            scores = torch.cat([scores, self.prototypes(queue)])
        return self.sinkhorn(scores)[: features.shape[0]]

    def pair_loss(self, s: int, t: int, step: PairStep) -> LossOutput:
        codes, query = step.keys[t], step.queries[s]
        assert codes is not None and query is not None
        loss = cross_entropy_with_soft_targets(codes, self.prototypes(query), self.temperature)
        return LossOutput(loss, {})


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
    options = SwAVOptions
    presets = (SWAV,)
    momentum_target = False

    def check_memory(self, p: SharedParams) -> None:
        length = options_of(p, SwAVOptions).swav_queue_length
        if length:
            check_length("ModelParams.swav_queue_length", length, p.batch_size)

    def criterion(self, p: SharedParams, pairs: Sequence[Tuple[int, int]], reduction: str,
                  factor: float) -> PairwiseCriterion:
        s = options_of(p, SwAVOptions)
        return SwAVCriterion(
            pairs, reduction, factor,
            prototypes=PrototypeLayer(p.dim, p.num_prototypes, frozen_epochs=p.freeze_prototypes_epochs),
            temperature=p.T,
            epsilon=s.sinkhorn_epsilon,
            iterations=s.sinkhorn_iterations,
        )

    def memory(self, p: SharedParams, pairs: Sequence[Tuple[int, int]]) -> Optional[Memory]:
        """The feature queue: the last swav_queue_length features of every global view, from every process, scored
        with the codes from swav_queue_start_epoch on, once full."""
        s = options_of(p, SwAVOptions)
        if not s.swav_queue_length:
            return None
        return Memory(p.dim, s.swav_queue_length, views=range(p.num_global_crops),
                      field="ModelParams.swav_queue_length", gather=True, start_epoch=s.swav_queue_start_epoch,
                      whole=True)

    def upgrade_legacy_state(self, state: StateDict, prefix: str) -> None:
        # Before the step's memory, the criterion kept the queue newest batch first, [views, length, dim], with a
        # count of rows written. The ring below holds the same rows, reversed (row order within the queue does not
        # change the codes), so that the next write overwrites the oldest rows first.
        queue = state.pop(prefix + "criterion.feature_queue", None)
        count = state.pop(prefix + "criterion.queue_filled", None)
        if queue is None or count is None or queue.shape[1] == 0:  # a run without a feature queue has no memory
            return
        filled = min(int(count), queue.shape[1])
        rows = torch.zeros_like(queue)
        rows[:, :filled] = queue[:, :filled].flip(1)
        state[prefix + "memory.rows"] = rows
        state[prefix + "memory.ptr"] = torch.tensor(filled % queue.shape[1])
        state[prefix + "memory.filled"] = torch.tensor(filled)

    def short_run_overrides(self, p: SharedParams) -> Dict[str, Any]:
        return dict(freeze_prototypes_epochs=min(p.freeze_prototypes_epochs,
                                                 int(SHORT_RUN_FREEZE_FRACTION * p.max_epochs)))

    def small_run_overrides(self, p: SharedParams, batch_size: int) -> Dict[str, Any]:
        queue = options_of(p, SwAVOptions).swav_queue_length
        return dict(num_prototypes=16, swav_queue_length=2 * batch_size if queue else 0,
                    num_local_crops=min(p.num_local_crops, 2))
