"""Cross-process helpers that are exact no-ops in a single process (so every flag works on one device too).

Gradient convention: each process's loss is a mean over its own samples and DDP averages parameter gradients over
processes, so training follows the gradient of the mean loss over processes. A collective whose output feeds every
process's loss therefore sends each input the gradient summed over processes (``gather_with_grad``,
``all_reduce_with_grad``); DDP's division by the world size then yields exactly the gradient one process holding the
whole global batch would compute.
"""

from __future__ import annotations

import warnings
from typing import Any, Tuple

import torch
import torch.distributed as dist
from torch import Tensor


def identity(x: Tensor) -> Tensor:
    """The identity: what a gather is when nothing is collected, and any optional transform when it is off."""
    return x


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns to each process the gradient of its own slice, summed over processes.

    Each process's loss depends on every process's embeddings, so the gradient of a slice is the sum of what every
    process's loss contributes to it; DDP then averages parameter gradients, which yields the gradient of the mean
    loss over processes, exactly as one process holding the whole global batch would compute it.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # never reduce autograd's own buffer in place
        dist.all_reduce(grad)
        size = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * size : (dist.get_rank() + 1) * size]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` [B, ...] from all processes in rank order, [world*B, ...]; gradients flow back."""
    return _GatherWithGrad.apply(x) if is_distributed() else x


class _AllReduceWithGrad(torch.autograd.Function):
    """Sum over processes whose backward sums the incoming gradients over processes: every process's loss depends on
    the total, so each process's contribution receives what all of those losses send to the total."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def all_reduce_with_grad(x: Tensor) -> Tensor:
    """Sum of ``x`` over processes (``x`` itself in a single process); gradients flow back to every process."""
    return _AllReduceWithGrad.apply(x) if is_distributed() else x


@torch.no_grad()
def gather(x: Tensor) -> Tensor:
    """Concatenate ``x`` [B, ...] from all processes in rank order, [world*B, ...], without gradient."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum of ``x`` over processes (a new tensor; ``x`` itself in a single process)."""
    if not is_distributed():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x


@torch.no_grad()
def all_reduce_max(x: Tensor) -> Tensor:
    """Element-wise maximum of ``x`` over processes (``x`` itself in a single process)."""
    if not is_distributed():
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


_warned_single_process_shuffle = False


@torch.no_grad()
def batch_shuffle(x: Tensor) -> Tuple[Tensor, Tensor]:
    """MoCo shuffle-BN: give each process a random slice of the global batch; returns (slice, unshuffle index).

    In a single process there is nothing to shuffle across, so the batch is returned unchanged (with one warning):
    a within-process permutation would not change BatchNorm statistics.
    """
    if not is_distributed():
        global _warned_single_process_shuffle
        if not _warned_single_process_shuffle:
            warnings.warn(
                "shuffle_batch_norm has no effect in a single process (it shuffles across processes)", stacklevel=2
            )
            _warned_single_process_shuffle = True
        return x, torch.arange(x.shape[0], device=x.device)
    full = gather(x)
    permutation = torch.randperm(full.shape[0], device=x.device)
    dist.broadcast(permutation, src=0)
    local = full.shape[0] // dist.get_world_size()
    own = permutation.view(dist.get_world_size(), local)[dist.get_rank()]
    return full[own], torch.argsort(permutation)


@torch.no_grad()
def batch_unshuffle(x: Tensor, unshuffle_index: Tensor) -> Tensor:
    """Inverse of :func:`batch_shuffle`: this process's original samples, in their original order."""
    if not is_distributed():
        return x
    full = gather(x)
    local = full.shape[0] // dist.get_world_size()
    own = unshuffle_index.view(dist.get_world_size(), local)[dist.get_rank()]
    return full[own]


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded by (run seed, optimizer step): per-step randomness that is the same on every
    process and after a resume, whatever the global random state."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed * 1_000_003 + step)
    return generator


def this_process_rows(x: Tensor) -> Tensor:
    """This process's share of ``x`` [world * B, ...], made identically on every process: rows rank, rank + world,
    rank + 2 world, ... . A distributed sampler deals the samples of a global batch out in this interleaved order, so
    per-sample random draws made for the whole global batch and split this way give every sample the same draw for
    any number of processes, and a run on N processes equals one process holding the whole batch.
    """
    return x[rank()::world_size()]
