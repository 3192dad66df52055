"""Weight standardization (methods.md 3.3 check) and the GroupNorm ws_resnet builders."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet

from selfsup.nn.ws_resnet import (
    WSConv2d,
    WSLinear,
    standardize_weight,
    to_ws_conv2d,
    ws_resnet18,
    ws_resnet34,
    ws_resnet50,
    ws_resnet101,
    ws_resnet152,
)


def _check_standardized(raw: torch.Tensor, standardized: torch.Tensor) -> None:
    raw, standardized = raw.detach().flatten(1).double(), standardized.detach().flatten(1).double()
    s = raw.std(dim=1)  # unbiased
    torch.testing.assert_close(standardized.mean(dim=1), torch.zeros_like(s), atol=1e-6, rtol=0)
    torch.testing.assert_close(standardized.std(dim=1), s / (s + 1e-5), atol=1e-6, rtol=0)


@pytest.mark.parametrize("groups", [1, 2])
def test_ws_conv_uses_standardized_weight(groups: int) -> None:
    torch.manual_seed(0)
    # float64: with std 100x below the mean, float32 rounding alone would move the standardized mean by ~1e-5.
    conv = WSConv2d(4, 6, kernel_size=3, padding=1, groups=groups, bias=True).double()
    with torch.no_grad():
        conv.weight.mul_(0.01).add_(0.3)  # small std, non-zero mean: the 1e-5 is visible in s/(s+1e-5)
    w_hat = standardize_weight(conv.weight)
    _check_standardized(conv.weight, w_hat)
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(conv(x), F.conv2d(x, w_hat, conv.bias, padding=1, groups=groups))


def test_ws_linear_uses_standardized_weight() -> None:
    torch.manual_seed(0)
    linear = WSLinear(10, 5)
    w_hat = standardize_weight(linear.weight)
    _check_standardized(linear.weight, w_hat)
    x = torch.randn(3, 10)
    torch.testing.assert_close(linear(x), F.linear(x, w_hat, linear.bias))


def test_standardization_by_hand() -> None:
    w = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 4.0]])  # unbiased stds 1 and sqrt(16/3)
    s1 = (16 / 3) ** 0.5
    expected = torch.tensor([[-1.0, 0.0, 1.0], [-4 / 3, -4 / 3, 8 / 3]]) / torch.tensor([[1 + 1e-5], [s1 + 1e-5]])
    torch.testing.assert_close(standardize_weight(w), expected)


def test_gradient_flows_through_standardization() -> None:
    torch.manual_seed(0)
    conv = WSConv2d(3, 4, kernel_size=3).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    w_hat = standardize_weight(conv.weight).detach().requires_grad_()
    F.conv2d(x, w_hat, conv.bias.detach()).pow(2).sum().backward()  # G = dL/dW_hat
    conv(x).pow(2).sum().backward()

    # Chain rule through W_hat = (W - m) / (s + eps), with s the unbiased std (ds/dW_j = (W_j - m) / ((n - 1) s)).
    w, g = conv.weight.detach().flatten(1), w_hat.grad.flatten(1)  # [out, n]
    n, eps = w.shape[1], 1e-5
    centered, s = w - w.mean(1, keepdim=True), w.std(1, keepdim=True)
    expected = (g - g.mean(1, keepdim=True)) / (s + eps) - centered * (g * centered).sum(1, keepdim=True) / (
        (s + eps) ** 2 * (n - 1) * s
    )
    torch.testing.assert_close(conv.weight.grad.flatten(1), expected)
    # The mean direction is projected out: each unit's gradient sums to 0.
    torch.testing.assert_close(conv.weight.grad.flatten(1).sum(1), torch.zeros(4, dtype=torch.float64))


def test_to_ws_conv2d_keeps_configuration_and_values() -> None:
    conv = nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1, dilation=1, bias=True, padding_mode="reflect")
    ws = to_ws_conv2d(conv)
    assert type(ws) is WSConv2d
    for attr in (
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "padding_mode",
    ):
        assert getattr(ws, attr) == getattr(conv, attr)
    assert torch.equal(ws.weight, conv.weight) and torch.equal(ws.bias, conv.bias)
    x = torch.randn(1, 3, 8, 8)
    expected = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), standardize_weight(conv.weight), conv.bias, stride=2)
    torch.testing.assert_close(ws(x), expected)


@pytest.mark.parametrize(
    "builder, feature_dim",
    [(ws_resnet18, 512), (ws_resnet34, 512), (ws_resnet50, 2048), (ws_resnet101, 2048), (ws_resnet152, 2048)],
)
def test_ws_resnets_build_with_groupnorm_and_ws_convs(builder: Callable[..., ResNet], feature_dim: int) -> None:
    model = builder()
    modules = dict(model.named_modules())
    assert isinstance(model, ResNet)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in modules.values())
    assert all(type(m) is WSConv2d for m in modules.values() if isinstance(m, nn.Conv2d))
    for name in ("bn1", "layer1.0.bn2", "layer2.0.downsample.1", "layer4.0.downsample.1"):
        assert isinstance(modules[name], nn.GroupNorm) and modules[name].num_groups == 32
    assert modules["layer2.0.downsample.1"].num_channels == modules["layer2.0.downsample.0"].out_channels
    assert type(modules["layer2.0.downsample.0"]) is WSConv2d
    model.fc = nn.Identity()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, feature_dim)


def test_ws_resnet_gradients_reach_raw_weights_and_cifar_stem() -> None:
    torch.manual_seed(0)
    model = ws_resnet18(num_classes=10)
    model.conv1 = WSConv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)  # the 32-px stem
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    for name in ("conv1.weight", "layer1.0.conv1.weight", "layer3.0.downsample.0.weight", "bn1.weight", "fc.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_ws_resnet_forwards_torchvision_kwargs() -> None:
    model = ws_resnet50(num_classes=7, zero_init_residual=True)
    assert model.fc.out_features == 7
    assert torch.equal(model.layer1[0].bn3.weight, torch.zeros(256))  # torchvision's init reaches the GroupNorms
