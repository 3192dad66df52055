"""Stateful pieces of a self-supervised step, each resolved once from ModelParams: the key queue, the target network
(an EMA copy or the online network itself), and the momentum / learning-rate schedules."""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import distributed
import utils


class Queue(nn.Module):
    """FIFO of the last K keys (MoCo, He et al. 2019, arXiv:1911.05722), stored as columns of ``keys`` [D, K].

    It starts empty and :meth:`memory` returns only the columns written so far, so every negative (and every NNCLR
    neighbour) is a real key. MoCo fills the queue with random unit vectors instead; early keys of a randomly
    initialised network lie in a narrow cone, far from such vectors, so "point every query into the cone"
    separates the positive from all of them. At lr 0.5 that shortcut collapsed MoCo v2 within 5 steps on CIFAR-10
    (ResNet-18, K=4096 and K=256). Keys, pointer and fill count are buffers, so checkpoints hold them.
    """

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        self.register_buffer("keys", torch.zeros(dim, size))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self._filled = 0  # host copy of ``filled``: slicing by it needs no device sync

    def memory(self) -> Tensor:
        """The keys enqueued so far, [D, min(enqueued, K)] (a view; the whole buffer once full)."""
        return self.keys if self._filled == self.keys.shape[1] else self.keys[:, : self._filled]

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write keys [N, D] into the next N columns (wrapping around) and advance the pointer; no host sync."""
        size = self.keys.shape[1]
        columns = (self.ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.keys.index_copy_(1, columns, keys.T.to(self.keys.dtype))
        self.ptr.copy_((self.ptr + keys.shape[0]) % size)
        self._filled = min(self._filled + keys.shape[0], size)
        self.filled.fill_(self._filled)

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._filled = int(self.filled)


@torch.no_grad()
def ema_update_(target: Sequence[Tensor], online: Sequence[Tensor], m: float) -> None:
    """target <- m * target + (1 - m) * online, fused over all tensors: one lerp pass (torch._foreach_lerp_)."""
    torch._foreach_lerp_(list(target), list(online), 1 - m)


def encode_views(encoder: nn.Module, views: Sequence[Tensor]) -> List[Tensor]:
    """Encoder outputs of each view; consecutive views of equal shape go through the encoder as one batch."""
    out: List[Tensor] = []
    for _, group in itertools.groupby(views, key=lambda v: v.shape):
        group = list(group)
        out.extend(encoder(torch.cat(group)).chunk(len(group)))
    return out


class MomentumTarget(nn.Module):
    """Target network = EMA copy of encoder + projection (MoCo key encoder, BYOL target), never given gradients.

    It runs in train mode (batch statistics); its BatchNorm buffers are its own and are not averaged. With
    ``shuffle_batch_norm`` the keys are computed on a batch shuffled across processes (MoCo shuffle-BN).
    """

    def __init__(
        self, encoder: nn.Module, projection: nn.Module, key_views: Sequence[int], shuffle_batch_norm: bool
    ) -> None:
        super().__init__()
        self.encoder = copy.deepcopy(encoder).requires_grad_(False)
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


class WarmupCosineSchedule:
    """Learning-rate factor per optimizer step: linear warmup over ``warmup_steps`` up to 1, then cosine decay to
    ``final_factor`` at ``total_steps`` (for torch.optim.lr_scheduler.LambdaLR, stepped every optimizer step)."""

    def __init__(self, warmup_steps: int, total_steps: int, final_factor: float) -> None:
        self.warmup_steps, self.total_steps, self.final_factor = warmup_steps, total_steps, final_factor

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 1.0)
        return self.final_factor + (1 - self.final_factor) * (1 + math.cos(math.pi * progress)) / 2


def parameter_groups(
    module: nn.Module,
    weight_decay: float,
    exclude_name_substrings: Sequence[str],
    exclude_bias_and_norm: bool,
    constant_lr_modules: Sequence[nn.Module] = (),
) -> List[Dict[str, Any]]:
    """Optimizer groups: "regular" (LARS scaling, weight decay) and "excluded" (neither), each split off again for
    parameters of ``constant_lr_modules`` (flag ``constant_lr``: the learning-rate schedule leaves them alone).

    A parameter is excluded when its name contains one of ``exclude_name_substrings`` or, with
    ``exclude_bias_and_norm``, when it is a bias or belongs to a normalization layer (chosen by module type, so
    downsample and MLP norm layers are caught too). Frozen parameters (the EMA target) are left out, and so are
    empty groups.
    """
    constant_ids = {id(p) for m in constant_lr_modules for p in m.parameters()}
    groups: Dict[Tuple[bool, bool], List[nn.Parameter]] = {
        key: [] for key in itertools.product((False, True), repeat=2)
    }
    for name, parameter, owner in utils.named_parameters_with_owner(module):
        by_name = any(sub in name for sub in exclude_name_substrings)
        by_type = exclude_bias_and_norm and utils.is_bias_or_norm(name, owner)
        groups[(by_name or by_type, id(parameter) in constant_ids)].append(parameter)
    return [
        {
            "name": ("excluded" if excluded else "regular") + (" constant lr" if constant else ""),
            "params": params,
            "weight_decay": 0.0 if excluded else weight_decay,
            "use_lars": not excluded,
            "constant_lr": constant,
        }
        for (excluded, constant), params in groups.items()
        if params
    ]


def identity(x: Tensor) -> Tensor:
    return x


def unit_sphere(x: Tensor) -> Tensor:
    return F.normalize(x, dim=1)


Normalizer = Callable[[Tensor], Tensor]
