"""BatchNorm over the global batch on any device (gloo on CPU included), as a drop-in for nn.BatchNorm layers."""

from __future__ import annotations

import itertools

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules._functions import SyncBatchNorm as _NativeSyncBatchNorm  # what nn.SyncBatchNorm runs

from selfsup.distributed.collectives import all_reduce_with_grad, is_distributed


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
            assert self.num_batches_tracked is not None  # registered by BatchNorm when it tracks running statistics
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
            assert self.running_mean is not None and self.running_var is not None  # as num_batches_tracked
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
