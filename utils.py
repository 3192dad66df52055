"""Model building blocks shared by the pretraining and linear-probe modules: encoders, MLP heads, accuracy."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torchvision
from torch import Tensor, nn

import ws_resnet
from batchrenorm import BatchRenorm1d

# Modules whose parameters are "normalization parameters" for LARS / weight-decay exclusion.
NORM_LAYER_TYPES: Tuple[type, ...] = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, BatchRenorm1d)


def _classifier_attribute(model: nn.Module) -> str:
    for name in ("fc", "classifier", "head", "heads"):
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise ValueError(f"encoder {type(model).__name__} has no classifier attribute (fc, classifier, head or heads) "
                     "to replace by Identity")


def get_encoder(arch: str, cifar_stem: bool = False) -> nn.Module:
    """A randomly initialised torchvision classification model (or ``ws_resnet*``) with its classifier removed.

    ``cifar_stem`` swaps the ImageNet stem (7x7/2 conv + max-pool) for a 3x3/1 conv with padding 1 and no pooling,
    which keeps 32-px inputs at full resolution in the first stage (He et al. 2016, CIFAR ResNets).
    """
    if arch.startswith("ws_"):
        model: nn.Module = getattr(ws_resnet, arch)()
        conv: Callable[..., nn.Conv2d] = ws_resnet.WSConv2d
    else:
        model = torchvision.models.get_model(arch, weights=None)
        conv = nn.Conv2d
    setattr(model, _classifier_attribute(model), nn.Identity())
    if cifar_stem:
        if not isinstance(getattr(model, "conv1", None), nn.Conv2d) or not hasattr(model, "maxpool"):
            raise ValueError(f"the CIFAR stem replaces conv1 and maxpool, which {arch!r} does not have; "
                             "set use_cifar_stem=False")
        model.conv1 = conv(3, model.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


@torch.no_grad()
def encoder_output_dim(encoder: nn.Module, image_size: int) -> int:
    """Width of the encoder's output for one image, measured in eval mode so no BatchNorm statistic moves."""
    was_training = encoder.training
    encoder.eval()
    try:
        out = encoder(torch.zeros(1, 3, image_size, image_size, device=next(encoder.parameters()).device))
    finally:
        encoder.train(was_training)
    if out.dim() != 2:
        raise ValueError(f"the encoder returns shape {tuple(out.shape)}; expected [batch, features]")
    return int(out.shape[1])


def mlp_normalization(name: Optional[str], width: int) -> nn.Module:
    """The hidden-layer normalization of an MLP: None, "bn", "br" (BatchRenorm), "ln" or "gn" (32 groups)."""
    factories: Dict[Optional[str], Callable[[], nn.Module]] = {
        None: nn.Identity,
        "bn": lambda: nn.BatchNorm1d(width),
        "br": lambda: BatchRenorm1d(width),
        "ln": lambda: nn.LayerNorm(width),
        "gn": lambda: nn.GroupNorm(32, width),
    }
    if name not in factories:
        raise ValueError(f"unknown MLP normalization {name!r}; allowed: {list(factories)}")
    return factories[name]()


class MLP(nn.Module):
    """Projection / prediction head: 0 layers = Identity, 1 = Linear, n = (n-1) x [Linear, norm, ReLU] + Linear.

    Weight standardization (``ws=True``) applies to the hidden layers only; the output layer stays a plain Linear.
    """

    def __init__(self, input_dim: int, output_dim: int, hidden_dim: int, num_layers: int,
                 normalization: Optional[str] = None, ws: bool = False) -> None:
        super().__init__()
        if num_layers == 0:
            if input_dim != output_dim:
                raise ValueError(f"a 0-layer MLP is the identity, so input_dim ({input_dim}) must equal "
                                 f"output_dim ({output_dim})")
            self.net: nn.Module = nn.Identity()
            return
        linear = ws_resnet.WSLinear if ws else nn.Linear
        layers: list[nn.Module] = []
        width = input_dim
        for _ in range(num_layers - 1):
            layers += [linear(width, hidden_dim), mlp_normalization(normalization, hidden_dim), nn.ReLU(inplace=True)]
            width = hidden_dim
        layers.append(nn.Linear(width, output_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@torch.no_grad()
def topk_accuracy(logits: Tensor, target: Tensor, topk: Sequence[int] = (1, 5)) -> list[Tensor]:
    """Percent of rows whose target is among the k largest logits, for each k (k is capped at the class count)."""
    maxk = min(max(topk), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    correct = pred.eq(target[:, None])
    return [correct[:, : min(k, maxk)].any(dim=1).float().mean() * 100 for k in topk]


def is_bias_or_norm(name: str, owner: nn.Module) -> bool:
    """Biases and normalization-layer parameters, selected by module type (not by name substrings)."""
    return name.endswith("bias") or isinstance(owner, NORM_LAYER_TYPES)


def named_parameters_with_owner(module: nn.Module) -> list[Tuple[str, nn.Parameter, nn.Module]]:
    """(qualified name, parameter, owning module) for every trainable parameter, each parameter once."""
    seen: set[int] = set()
    out = []
    for module_name, owner in module.named_modules():
        for param_name, parameter in owner.named_parameters(recurse=False):
            if parameter.requires_grad and id(parameter) not in seen:
                seen.add(id(parameter))
                out.append((f"{module_name}.{param_name}" if module_name else param_name, parameter, owner))
    return out
