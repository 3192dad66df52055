"""I-JEPA (loss_type "ijepa"): the image-based joint-embedding predictive architecture (Assran et al. 2023,
arXiv:2301.08243).

Per image, a large square context block and 4 smaller target blocks of the patch grid are drawn, the context without
the target patches. The ViT encoder sees the context patches only; a narrow predictor ViT, given the context tokens
and a mask token at each position of one target block, predicts that block's representations, which an EMA copy of
the encoder computes from the whole image. The loss is the squared error between predicted and target
representations: no pixels, no augmented second view, no negatives.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, Sequence, Tuple

import attr
import attrs
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from selfsup import distributed
from selfsup.methods.losses import fp32
from selfsup.methods.method import Method
from selfsup.methods.options import SharedParams, check_transformer_width, fail, options_of, suspicious
from selfsup.methods.preset import ADAMW_VIT, NO_NEGATIVES, Preset
from selfsup.methods.registry import register
from selfsup.methods.steps import Progress, StepOutput, TrainingStep
from selfsup.nn.target import MomentumSchedule, ema_update_
from selfsup.nn.vit import (
    MaskTokenTransformer,
    embed_patches,
    encode_patches_at,
    encode_tokens,
    select_tokens,
    vision_transformer,
    without_stochastic_depth,
)
from selfsup.options import float_pair, option

# A context needs more than this many patches: the official collator's default min_keep (its ViT-H config uses 10,
# which the 16 patches of a small run's 4 x 4 grid would rarely leave).
MIN_KEEP = 4
# Draws of an image's blocks before its context is declared impossible: with the paper's ranges a context covered
# by its targets is rare, so a handful of redraws fixes it.
MAX_DRAWS = 20


def ijepa_loss(predictions: Tensor, targets: Tensor) -> Tensor:
    """I-JEPA's loss (Assran et al. 2023, arXiv:2301.08243, eq. 1): the squared L2 distance between predicted and
    target representations, here averaged over target blocks, tokens and features, so the paper's sum over the D
    features is D times this. predictions, targets [B, K, m, D] (K target blocks of m patches). The official code
    takes the smooth L1 loss instead: half the squared error for errors below 1, linear beyond."""
    return (fp32(predictions) - fp32(targets)).pow(2).mean()


def block_size(grid: Tuple[int, int], scale: Tuple[float, float], aspect: Tuple[float, float],
               generator: torch.Generator) -> Tuple[int, int]:
    """A block's (height, width) in patches: area ``scale`` of the grid and height/width ratio ``aspect``, each drawn
    uniformly from its range (the official code draws one number for both, here they are independent) and rounded to
    whole patches, at least 1 and, as the official code, at most one patch short of the grid's side (so a context
    block of scale 1 is (h-1) x (w-1): it never covers the whole image)."""
    grid_h, grid_w = grid
    area = _uniform(scale, generator) * grid_h * grid_w
    ratio = _uniform(aspect, generator)
    height = min(max(round(math.sqrt(area * ratio)), 1), max(grid_h - 1, 1))
    width = min(max(round(math.sqrt(area / ratio)), 1), max(grid_w - 1, 1))
    return height, width


def _uniform(bounds: Tuple[float, float], generator: torch.Generator) -> float:
    low, high = bounds
    return low + (high - low) * torch.rand(1, generator=generator).item()


def block_masks(grid: Tuple[int, int], size: Tuple[int, int], count: int, generator: torch.Generator) -> Tensor:
    """``count`` blocks of ``size`` (height, width) placed uniformly inside the grid, as masks [count, grid_h * grid_w]
    over the row-major patch grid, True inside the block."""
    (grid_h, grid_w), (height, width) = grid, size
    top = torch.randint(0, grid_h - height + 1, (count, 1), generator=generator)
    left = torch.randint(0, grid_w - width + 1, (count, 1), generator=generator)
    rows, cols = torch.arange(grid_h), torch.arange(grid_w)
    in_rows = (rows >= top) & (rows < top + height)  # [count, grid_h]
    in_cols = (cols >= left) & (cols < left + width)  # [count, grid_w]
    return (in_rows[:, :, None] & in_cols[:, None, :]).flatten(1)


def first_positions(mask: Tensor, count: int) -> Tensor:
    """The first ``count`` positions, in raster order, where ``mask`` [..., N] is True: [..., count]."""
    positions = torch.arange(mask.shape[-1]).expand_as(mask)
    return positions.masked_fill(~mask, mask.shape[-1]).sort(dim=-1).values[..., :count]


@attr.s(auto_attribs=True, frozen=True)
class MultiBlock:
    """I-JEPA's multi-block masking (Assran et al. 2023, arXiv:2301.08243, sec. 3): per image, ``num_targets``
    target blocks and one square context block from which the target patches are removed."""

    num_targets: int
    target_scale: Tuple[float, float]
    target_aspect: Tuple[float, float]
    context_scale: Tuple[float, float]

    def __call__(self, batch: int, grid: Tuple[int, int], generator: torch.Generator) -> Tuple[Tensor, Tensor]:
        """(context patch indices [batch, n], target patch indices [batch, K, m]) over the row-major grid, each row
        in raster order. As in the official collator, the block sizes are drawn once for the batch and the positions
        per image, and every context is cut to the batch's smallest (its first n patches) so the rows line up. An
        image whose targets leave at most MIN_KEEP patches of its context gets all its blocks drawn again (the
        official code, after 20 tries, lets the context overlap targets instead)."""
        target_size = block_size(grid, self.target_scale, self.target_aspect, generator)
        context_size = block_size(grid, self.context_scale, (1.0, 1.0), generator)
        num_patches = grid[0] * grid[1]
        targets = torch.zeros(batch, self.num_targets, num_patches, dtype=torch.bool)
        context = torch.zeros(batch, num_patches, dtype=torch.bool)
        redraw = torch.ones(batch, dtype=torch.bool)
        for _ in range(MAX_DRAWS):
            drawn = block_masks(grid, target_size, batch * self.num_targets, generator).unflatten(0, (batch, -1))
            targets = torch.where(redraw[:, None, None], drawn, targets)
            drawn = block_masks(grid, context_size, batch, generator) & ~targets.any(dim=1)
            context = torch.where(redraw[:, None], drawn, context)
            redraw = context.sum(dim=1) <= MIN_KEEP
            if not redraw.any():
                target_len = target_size[0] * target_size[1]
                return first_positions(context, int(context.sum(dim=1).min())), first_positions(targets, target_len)
        raise ValueError(f"ModelParams.ijepa_context_scale: in {MAX_DRAWS} draws, {self.num_targets} target blocks of "
                         f"{target_size[0]}x{target_size[1]} patches left at most {MIN_KEEP} patches of a "
                         f"{context_size[0]}x{context_size[1]} context block on a {grid[0]}x{grid[1]} grid; take a "
                         "larger context block, fewer or smaller target blocks (ijepa_num_targets, "
                         "ijepa_target_scale), or a finer grid (a smaller patch_size or a larger image)")


class IJEPAPredictor(MaskTokenTransformer):
    """I-JEPA's predictor: a narrow ViT over the context tokens (mapped to its width, fixed 2-D sine-cosine position
    embeddings added) and one learned mask token per target position (plus that position's embedding), mapped back
    to the encoder width at the target positions."""

    def __init__(self, encoder_width: int, grid: Tuple[int, int], width: int, depth: int, heads: int) -> None:
        super().__init__(encoder_width, grid, width, depth, heads, encoder_width)

    def forward(self, context: Tensor, context_index: Tensor, target_index: Tensor) -> Tensor:
        """Predicted representations [B, K, m, D] of the K target blocks at positions ``target_index`` [B, K, m],
        from the encoder's context tokens [B, n, D] at positions ``context_index`` [B, n]. Each target block is
        predicted on its own, from the context and its own mask tokens: the B * K rows go through as one batch."""
        batch, num_targets, target_len = target_index.shape
        x = (self.embed(context) + self.position[context_index]).repeat_interleave(num_targets, dim=0)
        queries = self.mask_token + self.position[target_index.flatten(0, 1)]  # [B * K, m, width]
        x = self.blocks(torch.cat([x, queries], dim=1))[:, -target_len:]
        return self.predict(self.norm(x)).unflatten(0, (batch, num_targets))


@attr.s(auto_attribs=True, frozen=True)
class IJEPAOutput(StepOutput):
    predictions: Tensor  # [B, K, m, D]
    context: Tensor  # [B, n] context patch indices
    targets: Tensor  # [B, K, m] target patch indices


class IJEPAStep(TrainingStep[IJEPAOutput]):
    """I-JEPA's step on the first view of each image (Assran et al. 2023, arXiv:2301.08243, sec. 3):

        context, targets = multiblock(grid)                   # patch indices [B, n] and [B, K, m], per image
        s_x = encoder(patches[context])                       # context encoder: the context patches only
        s_y = layer_norm(target_encoder(image))[targets]      # EMA encoder on the whole image, no gradient
        loss = mean((predictor(s_x, context, targets) - s_y)^2)
        after the optimizer step: target_encoder <- EMA(encoder, m)

    The momentum follows a cosine from m to 1 over the run with ``use_momentum_schedule`` (the official code ramps it
    linearly), else stays m.
    """

    def __init__(self, p: SharedParams, encoder: nn.Module) -> None:
        super().__init__()
        o = options_of(p, IJEPAOptions)
        vit = vision_transformer(encoder, "loss_type='ijepa'")
        grid_h, grid_w = vit.patch_embed.grid_size
        self.grid = (int(grid_h), int(grid_w))
        self.multiblock, self.seed = multiblock_of(o), p.seed
        # masks that cannot be drawn on this grid fail here, before any training, not at the first step
        self.multiblock(64, self.grid, distributed.step_generator(p.seed, 0, torch.device("cpu")))
        self.momentum_schedule = MomentumSchedule(p.m, 1.0 if p.use_momentum_schedule else p.m)
        self.predictor = predictor_of(o, vit.embed_dim, self.grid)
        self.target_encoder: VisionTransformer = without_stochastic_depth(copy.deepcopy(vit).requires_grad_(False))

    def forward(self, encoder: nn.Module, views: Sequence[Tensor], labels: Tensor, progress: Progress) -> IJEPAOutput:
        images = views[0]
        context, targets = self.masking(images, progress.global_step)
        predictions = self.predictor(self.encode_context(encoder, images, context), context, targets)
        loss = ijepa_loss(predictions, self.target_representations(images, targets))
        metrics = {"context_fraction": torch.tensor(context.shape[1] / (self.grid[0] * self.grid[1]))}
        schedule = {"m": self.momentum_schedule(progress.global_step, progress.total_steps)}
        return IJEPAOutput(loss, metrics, schedule, None, predictions.detach(), context, targets)

    def masking(self, images: Tensor, step: int) -> Tuple[Tensor, Tensor]:
        """This process's (context [B, n], targets [B, K, m]) for the step: drawn on the CPU for the whole global
        batch from (seed, step), so that any number of processes, and a resumed run, masks each image alike."""
        generator = distributed.step_generator(self.seed, step, torch.device("cpu"))
        context, targets = self.multiblock(images.shape[0] * distributed.world_size(), self.grid, generator)
        return (distributed.this_process_rows(context).to(images.device),
                distributed.this_process_rows(targets).to(images.device))

    def encode_context(self, encoder: nn.Module, images: Tensor, context: Tensor) -> Tensor:
        """The encoder's output tokens [B, n, D] of the context patches at positions ``context`` [B, n]."""
        vit = vision_transformer(encoder, "loss_type='ijepa'")
        return encode_patches_at(vit, images, context)[:, vit.num_prefix_tokens:]

    @torch.no_grad()
    def target_representations(self, images: Tensor, targets: Tensor) -> Tensor:
        """The EMA encoder's patch tokens of the whole images, layer-normed over the features without affine
        parameters (as the official code), at the target positions ``targets`` [B, K, m]: [B, K, m, D]."""
        prefix, patches = embed_patches(self.target_encoder, images)
        tokens = encode_tokens(self.target_encoder, prefix, patches)[:, prefix.shape[1]:]
        tokens = F.layer_norm(tokens, tokens.shape[-1:])
        return select_tokens(tokens, targets.flatten(1)).unflatten(1, targets.shape[1:])

    def after_optimizer_step(self, encoder: nn.Module, progress: Progress) -> None:
        momentum = self.momentum_schedule(progress.global_step, progress.total_steps)
        ema_update_(list(self.target_encoder.parameters()), list(encoder.parameters()), momentum)


@attrs.frozen(kw_only=True, slots=False)
class IJEPAOptions:
    """I-JEPA"""

    ijepa_num_targets: int = option(4, "I-JEPA: target blocks per image, each predicted from the context", low=1)
    ijepa_target_scale: Tuple[float, float] = option((0.15, 0.2), "I-JEPA: range of a target block's area, as a "
                                                                  "fraction of the patch grid", converter=float_pair)
    ijepa_target_aspect: Tuple[float, float] = option((0.75, 1.5), "I-JEPA: range of a target block's height / "
                                                                   "width", converter=float_pair)
    ijepa_context_scale: Tuple[float, float] = option((0.85, 1.0), "I-JEPA: range of the square context block's "
                                                                   "area, as a fraction of the patch grid, before the "
                                                                   "target patches are removed", converter=float_pair)
    ijepa_predictor_width: int = option(384, "I-JEPA: predictor width", low=4)
    ijepa_predictor_depth: int = option(12, "I-JEPA: predictor transformer blocks", low=1)
    ijepa_predictor_heads: int = option(12, "I-JEPA: predictor attention heads (dividing the width)", low=1)


def multiblock_of(o: IJEPAOptions) -> MultiBlock:
    return MultiBlock(o.ijepa_num_targets, o.ijepa_target_scale, o.ijepa_target_aspect, o.ijepa_context_scale)


def predictor_of(o: IJEPAOptions, encoder_width: int, grid: Tuple[int, int]) -> IJEPAPredictor:
    return IJEPAPredictor(encoder_width, grid, o.ijepa_predictor_width, o.ijepa_predictor_depth,
                          o.ijepa_predictor_heads)


_IJEPA_RECIPE: Dict[str, Any] = dict(
    loss_type="ijepa",
    ijepa_num_targets=4,
    ijepa_target_scale=(0.15, 0.2),
    ijepa_target_aspect=(0.75, 1.5),
    ijepa_context_scale=(0.85, 1.0),
    use_lagging_model=True,
    m=0.996,
    use_momentum_schedule=True,
    num_global_crops=1,
    transform_type="crop",
    global_crop_scale=(0.3, 1.0),
    fixed_sincos_pos_embed=True,
    global_pool="avg",
    **ADAMW_VIT,
    lr=1.25e-4,
    weight_decay=0.04,
    final_weight_decay=0.4,
    lars_warmup_epochs=40,
    final_lr_schedule_value=1e-6,
    **NO_NEGATIVES,
)
IJEPA_PRESET = Preset(
    name="IJEPAParams", key="ijepa", paper="I-JEPA, arXiv:2301.08243",
    summary="ViT-B/16, 4 target blocks (0.15-0.2 of the grid) predicted from a 0.85-1 context block by a 12-block "
    "384-wide predictor, EMA target 0.996 -> 1, AdamW lr 1.25e-4 per 256 images, wd 0.04 -> 0.4, 40 warmup epochs",
    doc="I-JEPA (Assran et al. 2023, arXiv:2301.08243) with a ViT-B/16 encoder instead of the paper's ViT-H/14: no "
    "class token (global_pool 'avg': the representation is the mean of the final-normed patch tokens), fixed 2-D "
    "sine-cosine position embeddings; per image 4 target blocks of 0.15-0.2 of the patch grid with aspect ratio "
    "0.75-1.5 and a square context block of 0.85-1 without the target patches; predictor of 12 blocks, width 384 (the "
    "paper's for ViT-H), 12 heads (the encoder's, as the official code); loss = squared error to the EMA encoder's "
    "layer-normed patch tokens; EMA momentum 0.996 cosine to 1 (the official code: linear); random resized crops "
    "(0.3-1) and flips, no colour augmentation (the official code does not flip); AdamW lr 1.25e-4 per 256 images "
    "(scale it with the total batch: the paper's 1e-3 at 2048), 40 warmup epochs from 0 (the official code warms up "
    "from 2e-4), cosine to 1e-6, weight decay 0.04 -> 0.4 on a cosine (none on biases, norms and tokens), 600 epochs "
    "(the paper's ViT-B/16 row).",
    fields=dict(_IJEPA_RECIPE, encoder_arch="timm:vit_base_patch16_224", embedding_dim=768, ijepa_predictor_width=384,
                ijepa_predictor_depth=12, ijepa_predictor_heads=12, max_epochs=600),
)
IJEPA_TINY = Preset(
    name="IJEPATinyParams", key="ijepa_tiny", paper="I-JEPA, arXiv:2301.08243",
    summary="I-JEPA at CIFAR scale: ViT-Tiny with 4-px patches on 32-px images (64 tokens), 4-block 96-wide "
    "predictor",
    doc="I-JEPA at CIFAR scale: the I-JEPA recipe (see IJEPAParams) with a ViT-Tiny (width 192, 12 blocks, 3 heads) "
    "cut into 4-px patches, so a 32-px image is an 8 x 8 grid of 64 tokens; predictor of 4 blocks, width 96, 3 heads "
    "(the encoder's); the same optimization, untuned at this scale.",
    fields=dict(_IJEPA_RECIPE, encoder_arch="timm:vit_tiny_patch16_224", patch_size=4, embedding_dim=192,
                ijepa_predictor_width=96, ijepa_predictor_depth=4, ijepa_predictor_heads=3, max_epochs=300),
)


@register
class IJEPA(Method):
    loss_types = ("ijepa",)
    options = IJEPAOptions
    presets = (IJEPA_PRESET, IJEPA_TINY)
    momentum_target = True
    min_views = 1
    vit_only = True

    def check(self, p: SharedParams) -> None:
        if p.global_pool != "avg":
            suspicious(f"loss_type='ijepa' trains the patch tokens only, but global_pool={p.global_pool!r} takes the "
                       "representation from a class token that no loss reaches; set global_pool='avg'")

    def check_options(self, p: SharedParams) -> None:
        o = options_of(p, IJEPAOptions)
        for field, upper in (("ijepa_target_scale", " <= 1"), ("ijepa_context_scale", " <= 1"),
                             ("ijepa_target_aspect", "")):
            bounds = getattr(o, field)
            if len(bounds) != 2 or not 0 < bounds[0] <= bounds[1] <= (1 if upper else math.inf):
                fail(field, f"got {bounds!r}; expected (low, high) with 0 < low <= high{upper}")
        check_transformer_width("ijepa_predictor_width", o.ijepa_predictor_width, "ijepa_predictor_heads",
                                o.ijepa_predictor_heads)

    def step(self, p: SharedParams, encoder: nn.Module) -> IJEPAStep:
        return IJEPAStep(p, encoder)

    def dry_run(self, p: SharedParams) -> None:
        o = options_of(p, IJEPAOptions)
        multiblock_of(o)
        with torch.device("meta"):
            predictor_of(o, p.embedding_dim, (1, 1))

    def small_run_overrides(self, p: SharedParams, batch_size: int) -> Dict[str, Any]:
        # 4-px patches: an 8 x 8 grid leaves room for 4 targets beside a context block of at most 7 x 7 patches
        return dict(ijepa_predictor_width=32, ijepa_predictor_depth=1, ijepa_predictor_heads=2, patch_size=4)
