"""Projection and prediction heads: the MLP (Identity with 0 layers), its normalizations and activations, and the
prototype layer of DINO and SwAV."""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.nn.batchrenorm import BatchRenorm1d
from selfsup.nn.ws_resnet import WSLinear

NORMALIZATIONS = (None, "bn", "br", "ln", "gn")  # see mlp_normalization


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


class PrototypeLayer(nn.Module):
    """Cosine scores of L2-normalized inputs [B, D] against K L2-normalized prototype vectors: [B, K].

    Normalizing the weights in the forward pass is DINO's weight-normalized last layer with its norm fixed to 1 and
    keeps SwAV's prototypes on the unit sphere (Caron et al. 2020 arXiv:2006.09882, 2021 arXiv:2104.14294).
    """

    def __init__(self, dim: int, num_prototypes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_prototypes, dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).T


ACTIVATIONS: Dict[str, Callable[[], nn.Module]] = {"relu": lambda: nn.ReLU(inplace=True), "gelu": nn.GELU}


class MLP(nn.Module):
    """Projection / prediction head: 0 layers = Identity, 1 = Linear, n = (n-1) x [Linear, norm, act] + Linear.

    Weight standardization (``ws``) applies to the hidden layers only. ``output_batch_norm`` appends a BatchNorm
    without affine parameters (SimSiam, MoCo v3, SimCLR v2); ``num_prototypes`` appends a :class:`PrototypeLayer`
    (DINO's head), so the output width becomes ``num_prototypes``.
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        hidden_dim: int,
        num_layers: int,
        normalization: Optional[str] = None,
        ws: bool = False,
        activation: str = "relu",
        output_batch_norm: bool = False,
        num_prototypes: int = 0,
    ) -> None:
        super().__init__()
        if num_layers == 0:
            if input_dim != output_dim:
                raise ValueError(
                    f"a 0-layer MLP is the identity, so input_dim ({input_dim}) must equal output_dim ({output_dim})"
                )
            layers: list[nn.Module] = [nn.Identity()]
        else:
            linear = WSLinear if ws else nn.Linear
            layers = []
            width = input_dim
            for _ in range(num_layers - 1):
                layers += [
                    linear(width, hidden_dim),
                    mlp_normalization(normalization, hidden_dim),
                    ACTIVATIONS[activation](),
                ]
                width = hidden_dim
            layers.append(nn.Linear(width, output_dim))
        if output_batch_norm:
            layers.append(nn.BatchNorm1d(output_dim, affine=False))
        self.net: nn.Module = layers[0] if len(layers) == 1 else nn.Sequential(*layers)
        if num_prototypes:
            self.prototypes = PrototypeLayer(output_dim, num_prototypes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.net(x)
        return self.prototypes(x) if hasattr(self, "prototypes") else x


