"""Projection and prediction heads: the MLP (Identity with 0 layers), its normalizations and activations, the
prototype layer of DINO and SwAV, and the options that shape them."""

from __future__ import annotations

from typing import Callable, Dict, Optional

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.nn.batchrenorm import BatchRenorm1d
from selfsup.nn.ws_resnet import WSLinear
from selfsup.options import option

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
    keeps SwAV's prototypes on the unit sphere (Caron et al. 2020 arXiv:2006.09882, 2021 arXiv:2104.14294). Both
    freeze the prototypes for their first ``frozen_epochs`` epochs, which :meth:`skip_update_if_frozen` does.
    """

    def __init__(self, dim: int, num_prototypes: int, frozen_epochs: int = 0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_prototypes, dim))
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.frozen_epochs = frozen_epochs

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).T

    def skip_update_if_frozen(self, epoch: int) -> None:
        """Called between the backward pass and the optimizer step: during the frozen epochs the gradient is dropped,
        so the optimizer skips the prototypes entirely (no momentum, no weight decay)."""
        if epoch < self.frozen_epochs:
            self.weight.grad = None


@attrs.frozen
class Prototypes:
    """A prototype layer that ends a head: how many prototypes, and for how many epochs they get no update."""

    count: int
    frozen_epochs: int = 0


ACTIVATIONS: Dict[str, Callable[[], nn.Module]] = {"relu": lambda: nn.ReLU(inplace=True), "gelu": nn.GELU}


class MLP(nn.Module):
    """Projection / prediction head: 0 layers = Identity, 1 = Linear, n = (n-1) x [Linear, norm, act] + Linear.

    Weight standardization (``ws``) applies to the hidden layers only. ``output_batch_norm`` appends a BatchNorm
    without affine parameters (SimSiam, MoCo v3, SimCLR v2); ``num_prototypes`` appends a :class:`PrototypeLayer`
    (DINO's head), frozen for its first ``frozen_prototype_epochs`` epochs, so the output width becomes
    ``num_prototypes``.
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
        frozen_prototype_epochs: int = 0,
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
            self.prototypes = PrototypeLayer(output_dim, num_prototypes, frozen_prototype_epochs)

    def forward(self, x: Tensor) -> Tensor:
        x = self.net(x)
        return self.prototypes(x) if hasattr(self, "prototypes") else x


@attrs.frozen(kw_only=True, slots=False)
class HeadOptions:
    """Heads"""

    projection_mlp_layers: int = option(2, "0 = Identity, 1 = Linear, n = (n-1) x [Linear, norm, ReLU] + Linear",
                                        low=0)
    prediction_mlp_layers: int = option(0, "same convention; 0 for methods without a predictor", low=0)
    mlp_hidden_dim: int = option(512, "hidden width of both MLPs", low=1)
    mlp_normalization: Optional[str] = option(None, "hidden-layer norm: None, 'bn', 'br' (BatchRenorm), 'ln', 'gn' "
                                                    "(32 groups)", choices=NORMALIZATIONS)
    prediction_mlp_normalization: Optional[str] = option("same", "as mlp_normalization, or 'same' to copy it",
                                                         choices=("same",) + NORMALIZATIONS)
    use_mlp_weight_standardization: bool = option(False, "weight-standardized Linear for the hidden MLP layers")
    mlp_activation: str = option("relu", "hidden-layer activation of both MLPs: 'relu' or 'gelu' (DINO)",
                                 choices=tuple(ACTIVATIONS))
    projection_output_batch_norm: bool = option(False, "BatchNorm without affine on the projection output "
                                                       "(SimSiam, MoCo v3, SimCLR v2)")
    prediction_mlp_hidden_dim: Optional[int] = option(None, "hidden width of the prediction MLP; None = "
                                                            "mlp_hidden_dim", low=1)

    @property
    def resolved_prediction_mlp_hidden_dim(self) -> int:
        return self.mlp_hidden_dim if self.prediction_mlp_hidden_dim is None else self.prediction_mlp_hidden_dim

    @property
    def resolved_prediction_mlp_normalization(self) -> Optional[str]:
        return (
            self.mlp_normalization if self.prediction_mlp_normalization == "same" else self.prediction_mlp_normalization
        )


@attrs.frozen(kw_only=True, slots=False)
class PrototypeOptions:
    """Prototypes (DINO, SwAV)"""

    num_prototypes: int = option(3000, "prototypes of a prototype head: the output width of DINO's head, SwAV's "
                                       "number of prototypes", low=1)
    freeze_prototypes_epochs: int = option(1, "epochs during which the prototypes get no update (DINO, SwAV)", low=0)
