"""Encoders from timm (``encoder_arch="timm:<name>"``), and the token-level access to a timm Vision Transformer that
masked methods need: embed an image's patches, encode a subset of them, put tokens back in place, cut images into
patches.

A ViT is built for the run's images (``img_size`` = the crop, so ``timm:vit_tiny_patch16_224`` runs on 32-px CIFAR
images), with ``dynamic_img_size`` so that multi-crop's smaller views get resampled position embeddings. timm's
attention calls ``torch.nn.functional.scaled_dot_product_attention`` (its fused path), which runs flash or
memory-efficient attention kernels on GPUs.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Set, Tuple, TypeVar

import timm
import torch
from timm.layers import DropPath
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from selfsup.options import did_you_mean

TIMM_PREFIX = "timm:"
GLOBAL_POOLS = ("token", "avg")
_VIT_MODULE = "timm.models.vision_transformer"


def is_timm(arch: str) -> bool:
    return arch.startswith(TIMM_PREFIX)


def timm_name(arch: str) -> str:
    return arch[len(TIMM_PREFIX):]


@functools.lru_cache(maxsize=None)
def _timm_models() -> Tuple[str, ...]:
    return tuple(timm.list_models())


def check_timm_name(owner: str, field: str, arch: str) -> None:
    """Raise ValueError naming ``owner.field`` when ``timm:<name>`` is not a timm model."""
    name = timm_name(arch)
    if not timm.is_model(name):
        hint = did_you_mean(name, _timm_models(), n=3, prefix=TIMM_PREFIX)
        raise ValueError(f"{owner}.{field}: {arch!r} is not a timm model (timm.list_models() lists the "
                         f"names).{hint}")


def is_timm_vit(arch: str) -> bool:
    """Whether ``arch`` names a timm model of the VisionTransformer family (the ViT fields apply to it)."""
    return is_timm(arch) and timm.is_model(timm_name(arch)) and (
        timm.models.model_entrypoint(timm_name(arch)).__module__ == _VIT_MODULE)


def sincos_position_embedding(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """Fixed 2-D sine-cosine position embeddings [grid_h * grid_w, dim], row-major over the grid: the first half of
    the channels encodes the row, the second the column, each as sin/cos of pos / 10000^(2i/(dim/2)) (MoCo v3's
    layout; MAE's puts the column first, the same table up to a permutation of channels)."""
    if dim % 4:
        raise ValueError(f"2-D sine-cosine position embeddings need a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64),
                                indexing="ij")

    def encode(positions: Tensor) -> Tensor:
        angles = positions.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


def timm_encoder(
    arch: str,
    image_size: int,
    patch_size: Optional[int] = None,
    drop_path_rate: float = 0.0,
    global_pool: Optional[str] = None,
    fixed_sincos_pos_embed: bool = False,
    freeze_patch_embed: bool = False,
    num_heads: Optional[int] = None,
) -> nn.Module:
    """A randomly initialised timm model without its classifier; for ViTs built for ``image_size``-px images, with
    ``patch_size`` (None: the model's), stochastic depth ``drop_path_rate``, the representation ``global_pool``
    ("token": class token; "avg": mean of the final-normed patch tokens, built without a class token), fixed 2-D
    sine-cosine position embeddings, a frozen patch projection initialised as MoCo v3's (uniform in
    +-sqrt(6 / (3 p^2 + D)), no bias), ``num_heads`` attention heads (None: the model's)."""
    check_timm_name("ModelParams", "encoder_arch", arch)
    kwargs: Dict[str, Any] = {"drop_path_rate": drop_path_rate}
    if is_timm_vit(arch):
        kwargs.update(img_size=image_size, dynamic_img_size=True)
        if patch_size is not None:
            kwargs["patch_size"] = patch_size
        if num_heads is not None:
            kwargs["num_heads"] = num_heads
        if global_pool is not None:
            kwargs.update(global_pool=global_pool, class_token=global_pool == "token", fc_norm=False)
    model = timm.create_model(timm_name(arch), pretrained=False, num_classes=0, **kwargs)
    if isinstance(model, VisionTransformer):
        patch = patch_size_of(model)
        if image_size % patch:
            raise ValueError(f"ModelParams.patch_size: {patch}-px patches do not tile {image_size}-px images "
                             f"({arch}); choose a patch size that divides {image_size}")
        if fixed_sincos_pos_embed:
            set_sincos_position_embedding(model)
        if freeze_patch_embed:
            freeze_random_patch_projection(model)
    return model


M = TypeVar("M", bound=nn.Module)


def without_stochastic_depth(module: M) -> M:
    """``module`` with every timm DropPath set to keep all paths: an EMA target is the whole network (DINO's and
    I-JEPA's official teachers are built without stochastic depth), whatever the online encoder's drop_path_rate."""
    for layer in module.modules():
        if isinstance(layer, DropPath):
            layer.drop_prob = 0.0
    return module


def freeze_random_patch_projection(vit: VisionTransformer) -> None:
    """MoCo v3's stability fix (Chen, Xie & He 2021, arXiv:2104.02057, sec. 4.2): the patch projection keeps a random
    initialisation, uniform in +-sqrt(6 / (3 p^2 + D)) (xavier on the flattened patch), with a zero bias."""
    projection = vit.patch_embed.proj
    bound = (6.0 / (projection.weight[0].numel() + projection.weight.shape[0])) ** 0.5
    with torch.no_grad():
        projection.weight.uniform_(-bound, bound)
        if projection.bias is not None:
            projection.bias.zero_()
    vit.patch_embed.requires_grad_(False)


def set_sincos_position_embedding(vit: VisionTransformer) -> None:
    """Replace the learned position embeddings of ``vit`` by fixed 2-D sine-cosine ones (zeros for the class token),
    excluded from training."""
    grid_h, grid_w = vit.patch_embed.grid_size
    table = sincos_position_embedding(vit.embed_dim, grid_h, grid_w)
    prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
    with torch.no_grad():
        assert vit.pos_embed is not None
        vit.pos_embed.copy_(torch.cat([table.new_zeros(prefix, table.shape[1]), table])[None])
    vit.pos_embed.requires_grad_(False)


def vision_transformer(encoder: nn.Module, method: str) -> VisionTransformer:
    """``encoder`` as a timm VisionTransformer, or a ValueError saying that ``method`` needs one."""
    if not isinstance(encoder, VisionTransformer):
        raise ValueError(f"ModelParams.encoder_arch: {method} works on patch tokens and needs a timm Vision "
                         f"Transformer (e.g. 'timm:vit_tiny_patch16_224'); the encoder is {type(encoder).__name__}")
    return encoder


def check_view_sizes(encoder: nn.Module, sizes: Dict[str, int]) -> None:
    """For a ViT encoder: raise ValueError naming the field of any view side (field -> px) that does not split into
    whole patches (timm would drop the remainder silently)."""
    if not isinstance(encoder, VisionTransformer):
        return
    patch = patch_size_of(encoder)
    for field, size in sizes.items():
        if size % patch:
            raise ValueError(f"ModelParams.{field}: {size}-px views do not split into the ViT's {patch}-px patches; "
                             f"use a multiple of {patch} (e.g. {max(patch, round(size / patch) * patch)})")


def patch_size_of(vit: VisionTransformer) -> int:
    height, width = vit.patch_embed.patch_size
    if height != width:
        raise ValueError(f"patch side {height}x{width}: only square patches are supported")
    return int(height)


def embed_patches(vit: VisionTransformer, images: Tensor) -> Tuple[Tensor, Tensor]:
    """(prefix tokens [B, P, D], patch tokens [B, N, D]) of ``images`` [B, 3, H, W], position embeddings added: what
    the ViT's first block would receive, before any token is dropped."""
    x = vit._pos_embed(vit.patch_embed(images))
    prefix = vit.num_prefix_tokens
    return x[:, :prefix], x[:, prefix:]


def encode_tokens(vit: VisionTransformer, prefix: Tensor, patches: Tensor) -> Tensor:
    """The ViT's blocks and final norm over the prefix tokens and a subset of the patch tokens (any order, position
    already embedded): [B, P + n, D]."""
    x = vit.norm_pre(torch.cat([prefix, patches], dim=1))
    return vit.norm(vit.blocks(x))


def encode_patches_at(vit: VisionTransformer, images: Tensor, index: Tensor) -> Tensor:
    """The ViT's output tokens [B, P + n, D] when it sees only the prefix tokens and the patches of ``images`` at
    positions ``index`` [B, n] (MAE's visible patches, I-JEPA's context)."""
    prefix, patches = embed_patches(vit, images)
    return encode_tokens(vit, prefix, select_tokens(patches, index))


def select_tokens(tokens: Tensor, index: Tensor) -> Tensor:
    """tokens [B, N, D] at positions index [B, n] -> [B, n, D]."""
    return tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[-1]))


def place_tokens(tokens: Tensor, index: Tensor, filler: Tensor, num_positions: int) -> Tensor:
    """The inverse of :func:`select_tokens`: [B, num_positions, D] holding tokens [B, n, D] at positions index [B, n]
    and ``filler`` [D] (a mask token) everywhere else."""
    batch, _, width = tokens.shape
    full = filler.to(tokens.dtype).expand(batch, num_positions, width)
    return full.scatter(1, index[..., None].expand(-1, -1, width), tokens)


def patchify(images: Tensor, patch: int) -> Tensor:
    """images [B, C, H, W] -> patches [B, (H/p)(W/p), p*p*C], row-major over the grid, each patch's pixels row-major
    with channels last (MAE's layout)."""
    batch, channels, height, width = images.shape
    if height % patch or width % patch:
        raise ValueError(f"a {height}x{width} image does not split into {patch}-px patches")
    h, w = height // patch, width // patch
    x = images.reshape(batch, channels, h, patch, w, patch)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(batch, h * w, patch * patch * channels)


def unpatchify(patches: Tensor, patch: int, grid: Tuple[int, int], channels: int = 3) -> Tensor:
    """The inverse of :func:`patchify`: [B, h*w, p*p*C] -> [B, C, h*p, w*p]."""
    h, w = grid
    x = patches.reshape(patches.shape[0], h, w, patch, patch, channels)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(patches.shape[0], channels, h * patch, w * patch)


def grid_of(vit: VisionTransformer, images: Tensor) -> Tuple[int, int]:
    patch = patch_size_of(vit)
    return images.shape[-2] // patch, images.shape[-1] // patch


def transformer_blocks(width: int, depth: int, heads: int, mlp_ratio: float = 4.0) -> nn.Sequential:
    """``depth`` pre-norm transformer blocks of ``width`` (timm's ViT block: fused attention, GELU MLP, LayerNorm eps
    1e-6), for the light decoders and predictors of masked methods."""
    if width % heads:
        raise ValueError(f"width {width} does not split into {heads} attention heads")
    return nn.Sequential(*[Block(width, heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=LayerNorm)
                           for _ in range(depth)])


class LayerNorm(nn.LayerNorm):
    """The LayerNorm of MAE's and I-JEPA's decoders and predictors: eps 1e-6, as their official code and timm's ViTs."""

    def __init__(self, width: int, **factory: Any) -> None:  # timm's blocks pass device and dtype
        super().__init__(width, **{**factory, "eps": 1e-6})


class MaskTokenTransformer(nn.Module):
    """The light transformer of a masked method (MAE's decoder, I-JEPA's predictor): a linear map from the encoder
    width, a learned mask token for the hidden positions, fixed 2-D sine-cosine position embeddings (zeros for
    ``num_prefix_tokens`` leading tokens), ``depth`` blocks, a LayerNorm and a linear map to ``out_width``; ViT
    initialisation. Subclasses say where the tokens go in ``forward``."""

    position: Tensor

    def __init__(self, encoder_width: int, grid: Tuple[int, int], width: int, depth: int, heads: int, out_width: int,
                 num_prefix_tokens: int = 0) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.embed = nn.Linear(encoder_width, width)
        self.mask_token = nn.Parameter(torch.zeros(width))
        self.blocks = transformer_blocks(width, depth, heads)
        self.norm = LayerNorm(width)
        self.predict = nn.Linear(width, out_width)
        position = sincos_position_embedding(width, *grid)
        self.register_buffer("position", torch.cat([position.new_zeros(num_prefix_tokens, width), position]),
                             persistent=False)
        init_like_vit(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> Set[str]:
        return {"mask_token"}


def init_like_vit(module: nn.Module) -> None:
    """ViT initialisation for a new decoder or predictor: xavier-uniform linear weights, zero biases, unit
    LayerNorms."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.LayerNorm):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)

