"""Model building blocks shared by the pretraining and linear-probe modules: encoders, MLP heads, accuracy."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
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
    raise ValueError(
        f"encoder {type(model).__name__} has no classifier attribute (fc, classifier, head or heads) "
        "to replace by Identity"
    )


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
            raise ValueError(
                f"the CIFAR stem replaces conv1 and maxpool, which {arch!r} does not have; set use_cifar_stem=False"
            )
        model.conv1 = conv(3, model.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


def with_representation(encoder: nn.Module, layer: Optional[str], image_size: int, embedding_dim: int) -> nn.Module:
    """``encoder`` with its representation taken at submodule ``layer`` (None: its output), checked to be
    ``embedding_dim`` wide on an image of ``image_size`` px (a clear error before any training, not a shape error
    in the first step)."""
    if layer is not None:
        encoder = HiddenLayerEncoder(encoder, layer)
    measured = encoder_output_dim(encoder, image_size)
    if measured != embedding_dim:
        where = f" at encoder_layer {layer!r}" if layer is not None else ""
        raise ValueError(
            f"embedding_dim is {embedding_dim} but the encoder ({type(encoder).__name__}) outputs {measured} "
            f"features{where}; "
            f"set embedding_dim={measured}"
        )
    return encoder


def _to_channels_last(module: nn.Module, args: Tuple[Any, ...]) -> Tuple[Any, ...]:
    x = args[0]
    if isinstance(x, Tensor) and x.dim() == 4:
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return args


def use_channels_last(encoder: nn.Module) -> nn.Module:
    """Store the 4-D weights of ``encoder`` in channels_last format and convert its image input on the way in.

    The conversion is a forward pre-hook rather than a wrapper module, so parameter names (and checkpoints) stay the
    same; ``copy.deepcopy`` keeps the hook, so a momentum copy of the encoder converts its inputs too.
    """
    encoder.to(memory_format=torch.channels_last)
    encoder.register_forward_pre_hook(_to_channels_last)
    return encoder


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
            linear = ws_resnet.WSLinear if ws else nn.Linear
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


class HiddenLayerEncoder(nn.Module):
    """The output of one submodule of ``encoder`` as the representation, without model surgery (as byol-pytorch):
    a forward hook captures it and stops the forward pass there, so later layers cost nothing.

    ``layer`` is a submodule name (``"layer3"``, ``"features.7"``) or an integer index into the direct children.
    The output is flattened to [B, features].
    """

    class _Captured(Exception):
        def __init__(self, output: Tensor) -> None:
            self.output = output

    def __init__(self, encoder: nn.Module, layer: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.layer = layer
        children = list(encoder.children())
        try:
            target = children[int(layer)] if layer.lstrip("-").isdigit() else encoder.get_submodule(layer)
        except (IndexError, AttributeError) as error:
            names = [name for name, _ in encoder.named_modules() if name]
            raise ValueError(
                f"ModelParams.encoder_layer: {layer!r} is not a submodule of the encoder nor an index "
                f"into its {len(children)} children; submodules: {', '.join(names[:40])}"
            ) from error
        target.register_forward_hook(self._stop)

    @staticmethod
    def _stop(module: nn.Module, inputs: Any, output: Tensor) -> None:
        raise HiddenLayerEncoder._Captured(output)

    def forward(self, x: Tensor) -> Tensor:
        try:
            self.encoder(x)
        except HiddenLayerEncoder._Captured as captured:
            return captured.output.flatten(1)
        raise RuntimeError(f"encoder_layer {self.layer!r} was not reached by the encoder's forward pass")


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
