"""Weight-standardized layers and ResNets with GroupNorm.

Provenance: S. Qiao, H. Wang, C. Liu, W. Shen, A. Yuille, "Micro-Batch Training with Batch-Channel Normalization and
Weight Standardization", arXiv:1903.10520, written from the paper's formula. Each output unit's weights are
standardized over their whole fan-in with the official code's convention (methods.md 3.3): torch's unbiased std, and
eps = 1e-5 added to the std rather than to the variance. The ResNets are torchvision's, with every conv swapped for
a WSConv2d and every BatchNorm2d built as GroupNorm(32, C), so module names (conv1, bn1, layer1.0.downsample.1, ...)
and torchvision's initialisation are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models import ResNet

WS_EPS = 1e-5


def standardize_weight(weight: Tensor, eps: float = WS_EPS) -> Tensor:
    """(W_i - mean(W_i)) / (std(W_i) + eps) per output unit i (dim 0) over all other dims; differentiable.

    weight: [out, ...] (e.g. [out, in/groups, kh, kw] or [out, in]) -> same shape. Needs a fan-in of at least 2.
    """
    flat = weight.flatten(1)  # [out, fan_in]
    std, mean = torch.std_mean(flat, dim=1, keepdim=True, correction=1)  # [out, 1] each; unbiased, as in the WS code
    return ((flat - mean) / (std + eps)).view_as(weight)


class WSConv2d(nn.Conv2d):
    """nn.Conv2d (same constructor arguments) whose forward uses the standardized weight.

    Use it wherever a ws_ model needs a new conv, e.g. the 32-px stem: ``WSConv2d(3, 64, 3, stride=1, padding=1,
    bias=False)``. Input [N, C_in, H, W] -> [N, C_out, H', W'].
    """

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, standardize_weight(self.weight), self.bias)


class WSLinear(nn.Linear):
    """nn.Linear (same constructor arguments) whose forward uses the weight standardized per output feature.

    Input [..., in_features] -> [..., out_features].
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, standardize_weight(self.weight), self.bias)


def to_ws_conv2d(conv: nn.Conv2d) -> WSConv2d:
    """A WSConv2d with ``conv``'s configuration, device, dtype and current parameter values."""
    ws = WSConv2d(
        conv.in_channels,
        conv.out_channels,
        # nn.Conv2d stores these as 2-tuples; torch annotates the attributes of every _ConvNd as tuple[int, ...].
        cast(tuple[int, int], conv.kernel_size),
        stride=cast(tuple[int, int], conv.stride),
        padding=cast("str | tuple[int, int]", conv.padding),
        dilation=cast(tuple[int, int], conv.dilation),
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    ws.load_state_dict(conv.state_dict())
    return ws


def _group_norm_32(num_channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, num_channels)


def _ws_resnet(builder: Callable[..., ResNet], **kwargs: Any) -> ResNet:
    # torchvision builds the norms through norm_layer and initialises GroupNorm like BatchNorm (weight 1, bias 0,
    # zero_init_residual honoured), so only the convs need swapping afterwards.
    model = builder(weights=None, norm_layer=_group_norm_32, **kwargs)
    convs = [(name, m) for name, m in model.named_modules() if type(m) is nn.Conv2d]
    for name, conv in convs:
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, to_ws_conv2d(conv))
    return model


def ws_resnet18(**kwargs: Any) -> ResNet:
    """torchvision ResNet-18 (weights=None) with WSConv2d and GroupNorm(32); kwargs go to torchvision."""
    return _ws_resnet(torchvision.models.resnet18, **kwargs)


def ws_resnet34(**kwargs: Any) -> ResNet:
    """torchvision ResNet-34 (weights=None) with WSConv2d and GroupNorm(32); kwargs go to torchvision."""
    return _ws_resnet(torchvision.models.resnet34, **kwargs)


def ws_resnet50(**kwargs: Any) -> ResNet:
    """torchvision ResNet-50 (weights=None) with WSConv2d and GroupNorm(32); kwargs go to torchvision."""
    return _ws_resnet(torchvision.models.resnet50, **kwargs)


def ws_resnet101(**kwargs: Any) -> ResNet:
    """torchvision ResNet-101 (weights=None) with WSConv2d and GroupNorm(32); kwargs go to torchvision."""
    return _ws_resnet(torchvision.models.resnet101, **kwargs)


def ws_resnet152(**kwargs: Any) -> ResNet:
    """torchvision ResNet-152 (weights=None) with WSConv2d and GroupNorm(32); kwargs go to torchvision."""
    return _ws_resnet(torchvision.models.resnet152, **kwargs)
