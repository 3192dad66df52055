"""Encoders: any torchvision classification model, weight-standardized ResNet or timm model (``timm:<name>``, see
``nn.vit``) without its classifier, the CIFAR stem, a hidden layer as the representation, and channels_last memory
format; and the options that choose them."""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Tuple

import attrs
import torch
import torchvision
from torch import Tensor, nn

from selfsup.nn import ws_resnet
from selfsup.nn.vit import GLOBAL_POOLS, check_timm_name, is_timm, is_timm_vit, timm_encoder
from selfsup.options import did_you_mean, fail, option

WS_RESNETS = ("ws_resnet18", "ws_resnet34", "ws_resnet50", "ws_resnet101", "ws_resnet152")


@functools.lru_cache(maxsize=1)
def encoder_archs() -> Tuple[str, ...]:
    """Names accepted by ``encoder_arch``: torchvision classification models and weight-standardized ResNets."""
    return tuple(torchvision.models.list_models(module=torchvision.models)) + WS_RESNETS


@attrs.frozen(kw_only=True, slots=False)
class EncoderOptions:
    """Encoder"""

    encoder_arch: str = option("resnet18", "torchvision classification model name, ws_resnet{18,34,50,101,152}, or "
                                           "timm:<name> for any timm model (e.g. timm:vit_small_patch16_224)")
    encoder_layer: Optional[str] = option(None, "representation = output of this encoder submodule (name, or child "
                                                "index)")
    use_cifar_stem: Optional[bool] = option(None, "3x3/stride-1 first conv, no max-pool; None = on for datasets of "
                                                  "<= 64 px")
    embedding_dim: int = option(512, "width of the encoder output (checked against the real encoder at "
                                     "construction)", low=1)
    encoder_image_size: Optional[int] = option(None, "timm ViTs: the image side the model is built for (position "
                                                     "embeddings); None = the crop size", low=1)
    patch_size: Optional[int] = option(None, "timm ViTs: patch side in px; None = the model's (16 for "
                                             "vit_*_patch16_*)", low=1)
    num_heads: Optional[int] = option(None, "timm ViTs: attention heads; None = the model's (MoCo v3's ViT-S uses "
                                            "12, timm's vit_small 6)", low=1)
    drop_path_rate: float = option(0.0, "timm models: stochastic-depth rate of the last block", low=0, high=1)
    global_pool: Optional[str] = option(None, "timm ViTs: the representation, 'token' (class token) or 'avg' (mean "
                                              "of the patch tokens, built without a class token); None = the "
                                              "model's", choices=GLOBAL_POOLS)
    fixed_sincos_pos_embed: bool = option(False, "timm ViTs: fixed 2-D sine-cosine position embeddings (MAE, MoCo "
                                                 "v3) instead of learned ones")
    freeze_patch_embed: bool = option(False, "timm ViTs: keep the random patch projection frozen (MoCo v3)")
    # The speed-up is measured in docs/benchmarks.md ("Measurements behind defaults").
    channels_last: bool = option(True, "encoder weights and input images in channels_last memory format: "
                                       "convolutions are faster on CPUs and tensor-core GPUs")


VIT_FIELDS = ("encoder_image_size", "patch_size", "num_heads", "global_pool", "fixed_sincos_pos_embed",
              "freeze_patch_embed")


def check_encoder_options(o: EncoderOptions) -> None:
    """Raise ValueError naming the field for an unknown encoder or a field that does not apply to it."""
    arch = o.encoder_arch
    if is_timm(arch):
        check_timm_name(type(o).__name__, "encoder_arch", arch)
        if o.use_cifar_stem:
            fail(o, "use_cifar_stem", f"the CIFAR stem is a ResNet stem; {arch} has none (a ViT takes "
                                                  "small images through a small patch_size); set it to None or False")
    elif arch not in encoder_archs():
        fail(o, "encoder_arch", f"got {arch!r}; allowed values are {', '.join(repr(a) for a in encoder_archs())}, "
                                f"or 'timm:<name>' for any timm model.{did_you_mean(arch, encoder_archs())}")
    elif o.drop_path_rate:
        fail(o, "drop_path_rate", f"stochastic depth is set for timm models; {arch!r} is torchvision's")
    if not is_timm_vit(arch):
        for field in VIT_FIELDS:
            if getattr(o, field) not in (None, False):
                fail(o, field, f"applies to timm Vision Transformers (timm:vit_*); encoder_arch is "
                                           f"{arch!r}")


def make_encoder(o: EncoderOptions, cifar_stem: bool, crop: int) -> nn.Module:
    """The encoder the options select, without its classifier: a timm model built for ``crop``-px images (or
    ``encoder_image_size``), or a torchvision / weight-standardized ResNet with the CIFAR stem if ``cifar_stem``."""
    if is_timm(o.encoder_arch):
        return timm_encoder(o.encoder_arch, o.encoder_image_size or crop, o.patch_size, o.drop_path_rate,
                            o.global_pool, o.fixed_sincos_pos_embed, o.freeze_patch_embed, o.num_heads)
    return get_encoder(o.encoder_arch, cifar_stem)


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
        stem = getattr(model, "conv1", None)
        if not isinstance(stem, nn.Conv2d) or not hasattr(model, "maxpool"):
            raise ValueError(
                f"the CIFAR stem replaces conv1 and maxpool, which {arch!r} does not have; set use_cifar_stem=False"
            )
        model.conv1 = conv(3, stem.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
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


