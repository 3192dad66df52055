"""The target network of a step: an EMA copy of encoder + projection (MoCo's key encoder, BYOL's target, DINO's
teacher) or the online network itself (SimCLR, VICReg, SimSiam), and the EMA momentum schedule."""

from __future__ import annotations

import copy
import itertools
import math
from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from selfsup import distributed
from selfsup.nn.vit import without_stochastic_depth


@torch.no_grad()
def ema_update_(target: Sequence[Tensor], online: Sequence[Tensor], m: float) -> None:
    """target <- m * target + (1 - m) * online, fused over all tensors: one lerp pass (torch._foreach_lerp_)."""
    torch._foreach_lerp_(list(target), list(online), 1 - m)


def encode_views(encoder: nn.Module, views: Sequence[Tensor]) -> List[Tensor]:
    """Encoder outputs of each view; consecutive views of equal shape go through the encoder as one batch."""
    out: List[Tensor] = []
    for _, group in itertools.groupby(views, key=lambda v: v.shape):
        batch = list(group)
        out.extend(encoder(torch.cat(batch)).chunk(len(batch)))
    return out


class MomentumTarget(nn.Module):
    """Target network = EMA copy of encoder + projection (MoCo key encoder, BYOL target), never given gradients.

    It runs in train mode (batch statistics) but without stochastic depth; its BatchNorm buffers are its own and are
    not averaged. With
    ``shuffle_batch_norm`` the keys are computed on a batch shuffled across processes (MoCo shuffle-BN).
    """

    def __init__(
        self, encoder: nn.Module, projection: nn.Module, key_views: Sequence[int], shuffle_batch_norm: bool
    ) -> None:
        super().__init__()
        self.encoder = without_stochastic_depth(copy.deepcopy(encoder).requires_grad_(False))
        self.projection = copy.deepcopy(projection).requires_grad_(False)
        self.key_views = list(key_views)
        self.shuffle_batch_norm = shuffle_batch_norm

    @torch.no_grad()
    def forward(
        self, views: Sequence[Tensor], online_projections: Sequence[Optional[Tensor]]
    ) -> List[Optional[Tensor]]:
        x = torch.cat([views[i] for i in self.key_views])
        if self.shuffle_batch_norm:
            x, unshuffle = distributed.batch_shuffle(x)
            z = distributed.batch_unshuffle(self.projection(self.encoder(x)), unshuffle)
        else:
            z = self.projection(self.encoder(x))
        keys: List[Optional[Tensor]] = [None] * len(views)
        for i, k in zip(self.key_views, z.chunk(len(self.key_views))):
            keys[i] = k
        return keys

    @torch.no_grad()
    def update(self, online: Sequence[nn.Module], m: float) -> None:
        """EMA step towards the online (encoder, projection), parameters only."""
        target_params = [p for module in (self.encoder, self.projection) for p in module.parameters()]
        online_params = [p for module in online for p in module.parameters()]
        ema_update_(target_params, online_params, m)


class OnlineTarget(nn.Module):
    """Target = the online projections themselves (SimCLR, VICReg, SimSiam), optionally without gradient."""

    def __init__(self, key_views: Sequence[int], stop_gradient: bool) -> None:
        super().__init__()
        self.key_views = list(key_views)
        self.stop_gradient = stop_gradient

    def forward(
        self, views: Sequence[Tensor], online_projections: Sequence[Optional[Tensor]]
    ) -> List[Optional[Tensor]]:
        keys: List[Optional[Tensor]] = [None] * len(views)
        for i in self.key_views:
            z = online_projections[i]
            keys[i] = z.detach() if self.stop_gradient and z is not None else z
        return keys

    def update(self, online: Sequence[nn.Module], m: float) -> None:
        """Nothing to do: the target is the online network."""


class MomentumSchedule:
    """EMA momentum at optimizer step k of K: end - (end - base) * (1 + cos(pi k / K)) / 2 (BYOL, per step).

    With end == base it is constant.
    """

    def __init__(self, base: float, end: float) -> None:
        self.base, self.end = base, end

    def __call__(self, step: int, total_steps: int) -> float:
        progress = min(step / max(total_steps, 1), 1.0)
        return self.end - (self.end - self.base) * (1 + math.cos(math.pi * progress)) / 2
