"""MAE (loss_type "mae"): masked autoencoders (He et al. 2021, arXiv:2111.06377).

Per image, a random 75% of the patches are hidden; the ViT encoder sees only the visible ones, and a light decoder
(its own width, depth and fixed position embeddings) fills the hidden positions with a shared mask token and predicts
their pixels. The loss is the mean squared error on the hidden patches only, against per-patch normalized pixels.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import attr
import attrs
import torch
from torch import Tensor, nn

from selfsup import distributed
from selfsup.methods.losses import fp32
from selfsup.methods.method import Method
from selfsup.methods.options import SharedParams, check_transformer_width, options_of
from selfsup.methods.preset import ADAMW_VIT, NO_NEGATIVES, Preset
from selfsup.methods.registry import register
from selfsup.methods.steps import Progress, StepOutput, TrainingStep
from selfsup.nn.vit import (
    MaskTokenTransformer,
    encode_patches_at,
    grid_of,
    patch_size_of,
    patchify,
    place_tokens,
    unpatchify,
    vision_transformer,
)
from selfsup.options import option


def random_masking(noise: Tensor, mask_ratio: float) -> Tuple[Tensor, Tensor]:
    """MAE's per-image random masking from uniform noise [B, N]: (the indices of the round(N (1 - mask_ratio)) kept
    patches [B, n], those of lowest noise; the mask [B, N], True where a patch is hidden)."""
    num_patches = noise.shape[1]
    keep = noise.argsort(dim=1)[:, :round(num_patches * (1 - mask_ratio))]
    mask = torch.ones_like(noise, dtype=torch.bool).scatter(1, keep, False)
    return keep, mask


def mae_loss(predictions: Tensor, images_as_patches: Tensor, mask: Tensor, norm_pix_loss: bool) -> Tensor:
    """MAE's reconstruction loss (He et al. 2021, arXiv:2111.06377, sec. 3): the mean over hidden patches of the
    per-patch mean squared error between predictions [B, N, p*p*3] and the pixels [B, N, p*p*3]; with
    ``norm_pix_loss`` each target patch is first normalized by its own mean and (unbiased) variance (+1e-6), as the
    official code. ``mask`` [B, N] is True where a patch was hidden."""
    target = fp32(images_as_patches)
    if norm_pix_loss:
        mean, spread = patch_mean_and_spread(target)
        target = (target - mean) / spread
    per_patch = (fp32(predictions) - target).pow(2).mean(dim=-1)
    hidden = mask.to(per_patch.dtype)
    return (per_patch * hidden).sum() / hidden.sum()


def patch_mean_and_spread(patches: Tensor) -> Tuple[Tensor, Tensor]:
    """Each patch's pixel mean and the spread that ``norm_pix_loss`` divides by, sqrt(unbiased variance + 1e-6) as the
    official code: [B, N, 1] each, for patches [B, N, p*p*3]."""
    return patches.mean(dim=-1, keepdim=True), (patches.var(dim=-1, keepdim=True) + 1e-6) ** 0.5


class MAEDecoder(MaskTokenTransformer):
    """MAE's decoder: the encoder's tokens mapped to the decoder width, the mask token at every hidden position, fixed
    2-D sine-cosine position embeddings, transformer blocks, a LayerNorm and a linear prediction of each patch's
    pixels."""

    def __init__(self, encoder_width: int, grid: Tuple[int, int], num_prefix_tokens: int, width: int, depth: int,
                 heads: int, patch_pixels: int) -> None:
        super().__init__(encoder_width, grid, width, depth, heads, patch_pixels, num_prefix_tokens)

    def forward(self, latent: Tensor, keep: Tensor) -> Tensor:
        """Pixel predictions [B, N, p*p*3] for every patch from the encoder output [B, P + n, D] (P prefix tokens,
        then the kept patches at positions ``keep`` [B, n])."""
        x = self.embed(latent)
        prefix, visible = x[:, :self.num_prefix_tokens], x[:, self.num_prefix_tokens:]
        num_patches = self.position.shape[0] - self.num_prefix_tokens
        x = torch.cat([prefix, place_tokens(visible, keep, self.mask_token, num_patches)], dim=1) + self.position
        return self.predict(self.norm(self.blocks(x)))[:, self.num_prefix_tokens:]


@attr.s(auto_attribs=True, frozen=True)
class MAEOutput(StepOutput):
    predictions: Tensor  # [B, N, p*p*3]
    mask: Tensor  # [B, N], True where hidden


class MAEStep(TrainingStep[MAEOutput]):
    """MAE's step on the first view of each image:

        keep, mask = random_masking(noise, mask_ratio)          # per image
        latent = encoder(patches[keep])                         # visible patches only (+ class token)
        loss = mse(decoder(latent, keep)[mask], normalize(patchify(image))[mask])
    """

    def __init__(self, p: SharedParams, encoder: nn.Module) -> None:
        super().__init__()
        o = options_of(p, MAEOptions)
        vit = vision_transformer(encoder, "loss_type='mae'")
        self.patch = patch_size_of(vit)
        grid = vit.patch_embed.grid_size
        self.mask_ratio, self.norm_pix_loss, self.seed = o.mask_ratio, o.norm_pix_loss, p.seed
        self.decoder = MAEDecoder(vit.embed_dim, grid, vit.num_prefix_tokens, o.mae_decoder_width,
                                  o.mae_decoder_depth, o.mae_decoder_heads, self.patch * self.patch * 3)

    def forward(self, encoder: nn.Module, views: Sequence[Tensor], labels: Tensor, progress: Progress) -> MAEOutput:
        images = views[0]
        keep, mask = self.masking(images, progress.global_step)
        predictions = self.reconstruct(encoder, images, keep)
        loss = mae_loss(predictions, patchify(images, self.patch), mask, self.norm_pix_loss)
        return MAEOutput(loss, {}, {}, None, predictions.detach(), mask)

    def masking(self, images: Tensor, step: int) -> Tuple[Tensor, Tensor]:
        """The step's masks for this process's images: drawn for the whole global batch from (seed, step), so that
        any number of processes masks each image as one process would."""
        batch, num_patches = images.shape[0], self.decoder.position.shape[0] - self.decoder.num_prefix_tokens
        generator = distributed.step_generator(self.seed, step, images.device)
        noise = torch.rand(batch * distributed.world_size(), num_patches, generator=generator, device=images.device)
        return random_masking(distributed.this_process_rows(noise), self.mask_ratio)

    def reconstruct(self, encoder: nn.Module, images: Tensor, keep: Tensor) -> Tensor:
        """Pixel predictions [B, N, p*p*3] of every patch of ``images`` from the patches at positions ``keep``."""
        return self.decoder(encode_patches_at(vision_transformer(encoder, "loss_type='mae'"), images, keep), keep)

    @torch.no_grad()
    def pictures(self, encoder: nn.Module, images: Tensor) -> Dict[str, Tensor]:
        """(images, the visible patches (hidden ones zero), the reconstruction with the visible patches pasted back)
        for the reconstruction picture, all [B, 3, H, W] in the images' normalization."""
        keep, mask = self.masking(images, 0)
        predictions = self.reconstruct(encoder, images, keep)
        patches = patchify(images, self.patch)
        if self.norm_pix_loss:  # the predictions are normalized patches: give them each patch's mean and spread
            mean, spread = patch_mean_and_spread(patches)
            predictions = predictions * spread + mean
        grid = grid_of(vision_transformer(encoder, "loss_type='mae'"), images)
        hidden = mask[..., None]
        return {
            "image": images,
            "masked": unpatchify(patches.masked_fill(hidden, 0.0), self.patch, grid),
            "reconstruction": unpatchify(torch.where(hidden, predictions, patches), self.patch, grid),
        }


@attrs.frozen(kw_only=True, slots=False)
class MAEOptions:
    """MAE"""

    mask_ratio: float = option(0.75, "MAE: fraction of each image's patches hidden from the encoder", low=0,
                               low_open=True, high=0.99)
    norm_pix_loss: bool = option(True, "MAE: targets are the pixels of each patch normalized by its mean and "
                                       "variance")
    mae_decoder_width: int = option(512, "MAE: decoder width", low=4)
    mae_decoder_depth: int = option(8, "MAE: decoder transformer blocks", low=1)
    mae_decoder_heads: int = option(16, "MAE: decoder attention heads (dividing the width)", low=1)


_MAE_RECIPE: Dict[str, Any] = dict(
    loss_type="mae",
    mask_ratio=0.75,
    norm_pix_loss=True,
    use_lagging_model=False,
    num_global_crops=1,
    transform_type="crop",
    global_crop_scale=(0.2, 1.0),
    fixed_sincos_pos_embed=True,
    global_pool="token",
    lars_warmup_epochs=40,
    **ADAMW_VIT,
    adamw_betas=(0.9, 0.95),
    lr=1.5e-4,
    weight_decay=0.05,
    **NO_NEGATIVES,
)
MAE_PRESET = Preset(
    name="MAEParams", key="mae", paper="MAE, arXiv:2111.06377",
    summary="ViT-B/16, 75% of the patches hidden, 8-block 512-wide decoder, per-patch normalized pixel MSE on the "
    "hidden patches, AdamW (0.9, 0.95) lr 1.5e-4 per 256 images, wd 0.05, 40 warmup epochs",
    doc="MAE (He et al. 2021, arXiv:2111.06377): ViT-B/16 encoder on the visible 25% of the patches (per-image random "
    "masking), fixed 2-D sine-cosine position embeddings; decoder of 8 blocks, width 512, 16 heads, with a mask token; "
    "loss = MSE on the hidden patches against per-patch normalized pixels; random resized crops (0.2-1) and flips "
    "only; AdamW betas (0.9, 0.95), lr 1.5e-4 per 256 images (scale it with the total batch: 2.4e-3 at the paper's "
    "4096), weight decay 0.05 (none on biases, norms and tokens), 40 warmup epochs, cosine to 0, 800 epochs.",
    fields=dict(_MAE_RECIPE, encoder_arch="timm:vit_base_patch16_224", embedding_dim=768, mae_decoder_width=512,
                mae_decoder_depth=8, mae_decoder_heads=16, max_epochs=800),
)
MAE_TINY = Preset(
    name="MAETinyParams", key="mae_tiny", paper="MAE, arXiv:2111.06377",
    summary="MAE at CIFAR scale: ViT-Tiny with 4-px patches on 32-px images (64 tokens), 4-block 128-wide decoder",
    doc="MAE at CIFAR scale: the MAE recipe with a ViT-Tiny (width 192, 12 blocks, 3 heads) cut into 4-px patches, "
    "so a 32-px image is 64 tokens (the CPU-scale stand-in for ViT-B/16 at 224 px); decoder of 4 blocks, width 128, "
    "4 heads; lr 1.5e-3 per 256 images, 10 times the paper's, for runs of tens rather than hundreds of epochs (a "
    "choice, not tuned).",
    fields=dict(_MAE_RECIPE, encoder_arch="timm:vit_tiny_patch16_224", patch_size=4, embedding_dim=192,
                mae_decoder_width=128, mae_decoder_depth=4, mae_decoder_heads=4, lr=1.5e-3, max_epochs=800),
)


@register
class MAE(Method):
    loss_types = ("mae",)
    options = MAEOptions
    presets = (MAE_PRESET, MAE_TINY)
    momentum_target = False
    min_views = 1
    vit_only = True

    def check_options(self, p: SharedParams) -> None:
        o = options_of(p, MAEOptions)
        check_transformer_width("mae_decoder_width", o.mae_decoder_width, "mae_decoder_heads", o.mae_decoder_heads)

    def step(self, p: SharedParams, encoder: nn.Module) -> MAEStep:
        return MAEStep(p, encoder)

    def dry_run(self, p: SharedParams) -> None:
        options_of(p, MAEOptions)

    def small_run_overrides(self, p: SharedParams, batch_size: int) -> Dict[str, Any]:
        return dict(mae_decoder_width=32, mae_decoder_depth=1, mae_decoder_heads=2)
