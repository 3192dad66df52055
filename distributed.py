"""Cross-process helpers that are exact no-ops in a single process (so every flag works on one device too).

Gradient convention: each process's loss is a mean over its own samples and DDP averages parameter gradients over
processes, so training follows the gradient of the mean loss over processes. A collective whose output feeds every
process's loss therefore sends each input the gradient summed over processes (``gather_with_grad``,
``all_reduce_with_grad``); DDP's division by the world size then yields exactly the gradient one process holding the
whole global batch would compute.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules._functions import SyncBatchNorm as _NativeSyncBatchNorm  # what nn.SyncBatchNorm runs


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
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
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
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
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


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (any number of dimensions) whose training statistics are those of the global batch, on any device.

    On accelerators the statistics are reduced by PyTorch's fused SyncBatchNorm function. PyTorch's SyncBatchNorm
    layer refuses CPU tensors (and DDP refuses CPU models holding one), so on CPU (gloo) they are reduced here: the
    mean from the summed features and counts, then the biased variance from the summed squared deviations (two
    passes, no cancellation), both through :func:`all_reduce_with_grad`; running statistics take the unbiased
    global variance, as BatchNorm does. In eval mode, or in a single process, it is plain BatchNorm. Parameters and
    buffers are those of BatchNorm, so state dicts are interchangeable with unsynchronized models.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions [N, C, ...], got shape {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        self._check_input_dim(x)
        factor = 0.0  # weight of this batch in the running statistics
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        if x.device.type == "cpu":
            return self._synchronized_on_host(x, factor)
        return _NativeSyncBatchNorm.apply(
            x,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            self.eps,
            factor,
            dist.group.WORLD,
            dist.get_world_size(),
        )

    def _synchronized_on_host(self, x: Tensor, factor: float) -> Tensor:
        dims = [0, *range(2, x.dim())]  # every dimension but the channels
        shape = [1, -1] + [1] * (x.dim() - 2)
        z = x.to(torch.promote_types(x.dtype, torch.float32))
        totals = all_reduce_with_grad(torch.cat([z.sum(dims), z.new_tensor([x.numel() // x.shape[1]])]))
        count = totals[-1]
        mean = totals[:-1] / count
        centered = z - mean.view(shape)
        variance = all_reduce_with_grad(centered.square().sum(dims)) / count
        y = centered * torch.rsqrt(variance + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                unbiased = variance * count / (count - 1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm layer (any dimension, torch.nn.SyncBatchNorm included) replaced by
    :class:`SyncBatchNorm`, sharing its
    parameters and buffers and keeping its mode; other normalizations (BatchRenorm, LayerNorm) stay. Children are
    replaced in place; the result is returned because ``module`` itself may be a BatchNorm layer. Hooks registered
    on a replaced layer do not carry over, so convert before registering any."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        bn = module
        sync = SyncBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        for name, tensor in itertools.chain(bn.named_parameters(recurse=False), bn.named_buffers(recurse=False)):
            setattr(sync, name, tensor)
        return sync.train(bn.training)
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child)
        if converted is not child:
            setattr(module, name, converted)
    return module
