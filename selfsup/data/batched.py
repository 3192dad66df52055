"""Batched view augmentation: the views of a whole batch of uint8 images, made on the training device.

With ``augmentation_backend="batched"`` the DataLoader only decodes and resizes (the pretraining datasets yield
uint8 [3, S, S] images) and :class:`BatchedViews`, called by ``SelfSupervisedMethod.on_after_batch_transfer``, turns
each batch [B, 3, S, S] into the float views. Every sample of every view draws its own parameters, with the
distributions of the PIL pipeline (``views.view_transform``), read from the same description
(``views.photometric_settings``):

- random resized crop: torchvision's RandomResizedCrop.get_params (10 attempts of area fraction ~ U(scale) and log
  aspect ratio ~ U(log 3/4, log 4/3), integer boxes, else the whole image), resized with PIL's bilinear filter
  (antialiased when shrinking), and the horizontal flip (p = 0.5), all as two batched matrix products per view
  (:func:`resize_weights`; equal to PIL's resized crop within rounding);
- colour jitter with the view's probability (JITTER_P but for transform_type 'crop'): brightness, contrast,
  saturation and hue factors drawn as by torchvision's ColorJitter and applied in a random order per sample, with the
  formulas of torchvision's tensor functional ops (brightness, contrast and saturation blend with black, the mean grey
  level and the grey image; hue shifts H in HSV);
- grayscale (the view's p, GRAYSCALE_P by default, ITU-R 601-2 luma, as PIL);
- Gaussian blur with the view's probability, sigma ~ U(0.1, 2), kernel ``blur_kernel_size(size)``, reflect
  padding (torchvision's GaussianBlur);
- solarize (threshold 0.5) with the view's probability (BYOL's second view);
- normalization, optionally into channels_last memory.

Differences from the PIL pipeline, all small (``tests/test_augment.py`` measures the distributions): the images are
not rounded to uint8 between the steps; for image folders the views come from the central square of each image,
resized to S (``sources.stored_image_size``), where the PIL crops see the whole image; the random jitter order is
drawn per sample, as torchvision does per image.

Randomness: every batch draws from its own ``torch.Generator`` on the batch's device, seeded from (``seed`` =
ModelParams.seed, rank, global step, number of earlier batches of that step (gradient accumulation)). The views of a
batch are thus a function of its images and those numbers only: not of the global RNG, the loader's workers or
whether the run was interrupted and resumed, and different on every rank and step.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from typing import Any, Iterator, List, Sequence

import numpy as np
import torch
from torch import Tensor

from selfsup.data.views import BLUR_SIGMA, ViewSpec, blur_kernel_size, reflect_indices

CROP_RATIO = (3 / 4, 4 / 3)  # aspect-ratio range of RandomResizedCrop
CROP_ATTEMPTS = 10  # torchvision's attempts before falling back to the whole image
FLIP_P = 0.5
SOLARIZE_THRESHOLD = 0.5
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, PIL's RGB -> L
# Intra-op threads of the augmentation on a CPU. Its ~150 operations are small (6 MB per 32 px batch), so threads
# gain little, while each operation's thread barrier stalls whenever another process holds a core (loader workers,
# other jobs); the timings are in docs/benchmarks.md ("Measurements behind defaults").
CPU_THREADS = 1
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # ColorJitter's operations


def _uniform(low: Tensor, high: Tensor, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(low.shape, generator=generator, device=low.device)


def crop_boxes(count: int, side: int, scale: Tensor, generator: torch.Generator) -> Tensor:
    """[count, 4] integer boxes (left, top, width, height) in an image of side x side px, drawn as torchvision's
    RandomResizedCrop.get_params: the first of CROP_ATTEMPTS draws that fits, else the whole (square) image.
    ``scale``: [count, 2] area-fraction ranges."""
    device = scale.device
    low, high = (bound.expand(count, CROP_ATTEMPTS) for bound in scale.split(1, dim=1))
    area = side * side * _uniform(low, high, generator)  # a new area fraction at every attempt, as torchvision
    low, high = (torch.full_like(area, math.log(r)) for r in CROP_RATIO)
    aspect = torch.exp(_uniform(low, high, generator))
    width = torch.round(torch.sqrt(area * aspect))
    height = torch.round(torch.sqrt(area / aspect))
    fits = (width > 0) & (width <= side) & (height > 0) & (height <= side)
    first = fits.int().argmax(dim=1, keepdim=True)  # the first attempt that fits (0 if none does)
    width, height = width.gather(1, first)[:, 0], height.gather(1, first)[:, 0]
    whole = ~fits.any(dim=1)
    width, height = width.masked_fill(whole, side), height.masked_fill(whole, side)
    # randint(0, side - w + 1) as floor(u * (side - w + 1))
    left = torch.floor(torch.rand(count, generator=generator, device=device) * (side - width + 1))
    top = torch.floor(torch.rand(count, generator=generator, device=device) * (side - height + 1))
    return torch.stack([left, top, width, height], dim=1)


def resize_weights(start: Tensor, length: Tensor, size: int, side: int) -> Tensor:
    """[N, size, side] resampling matrices: row i holds the weights of the input pixels for output pixel i when the
    pixels [start, start + length) of a row of ``side`` pixels are resized to ``size`` pixels. PIL's bilinear resize
    of the cropped image: a triangle filter around each output centre, widened by the shrink factor when shrinking
    (antialiasing), restricted to the crop and normalized."""
    stretch = (length / size)[:, None, None]  # input pixels per output pixel
    centres = start[:, None, None] + (torch.arange(size, device=start.device)[None, :, None] + 0.5) * stretch
    pixels = torch.arange(side, device=start.device)[None, None, :] + 0.5
    weights = (1 - (pixels - centres).abs() / stretch.clamp(min=1)).clamp(min=0)
    end = (start + length)[:, None, None]
    weights = weights * ((pixels > start[:, None, None]) & (pixels < end))
    return weights / weights.sum(dim=2, keepdim=True)


def resized_crops(images: Tensor, rows: Tensor, columns: Tensor) -> Tensor:
    """[V * B, C, size, size]: crop, resize (and flip, where the column weights are reversed) each of the B images
    ``images`` [B, side, C, side] (channels between the rows and the columns, so that both steps are plain batched
    matrix products) V times: view v of image b is rows[vB + b] @ image b @ columns[vB + b]^T, channel by channel
    (``rows``, ``columns``: [V * B, size, side])."""
    batch, side, channels, _ = images.shape
    size = rows.shape[1]
    flat = images.reshape(batch, side * channels, side)
    views = []
    for view_rows, view_columns in zip(rows.split(batch), columns.split(batch)):
        x = torch.bmm(flat, view_columns.transpose(1, 2))  # [B, side * C, size]: columns resampled
        x = torch.bmm(view_rows, x.view(batch, side, channels * size))  # [B, size, C * size]: rows resampled
        views.append(x.view(batch, size, channels, size))
    return torch.cat(views).permute(0, 2, 1, 3).contiguous()


def _luma(x: Tensor) -> Tensor:
    """[N, 1, H, W] grey level of RGB images [N, 3, H, W]."""
    r, g, b = x.unbind(1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of RGB images [N, 3, H, W] in [0, 1] by ``shift`` [N] turns (torchvision's adjust_hue: to HSV,
    H <- (H + shift) mod 1, back to RGB). Value V and chroma C do not change, so each channel follows from the new hue
    directly: V - C * clamp(d - 1, 0, 1), d = the circular distance, in sixths of a turn, between the hue and the
    channel's own (red 0, green 2, blue 4): the HSV -> RGB formula without its case split."""
    r, g, b = x.unbind(1)
    value = torch.maximum(torch.maximum(r, g), b)
    chroma = value - torch.minimum(torch.minimum(r, g), b)
    # 6 H: the sector of the largest channel (0, 2, 4) plus the signed position within it (any hue where C = 0)
    position = torch.where(value == r, g - b, torch.where(value == g, b - r + 2 * chroma, r - g + 4 * chroma))
    hue6 = torch.remainder(position / chroma.clamp(min=1e-12) + 6 * shift[:, None, None], 6.0)
    own = torch.tensor([0.0, 2.0, 4.0], device=x.device)[None, :, None, None]
    distance = (hue6[:, None] - own).abs_()
    distance = torch.minimum(distance, 6.0 - distance).sub_(1.0).clamp_(0.0, 1.0)
    return value[:, None] - chroma[:, None] * distance


def color_jitter(x: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    """torchvision's ColorJitter per sample: ``factors`` [N, 4] (brightness, contrast, saturation, hue shift; 1, 1,
    1, 0 leave the image unchanged), applied in the order ``order`` [N, 4] (a permutation of the operations per
    sample). At each of the 4 steps every sample runs its own operation: the three blends
    clamp(f * x + (1 - f) * target) as one expression with a per-sample target (black, mean grey level, grey image),
    the hue shift on the samples whose step it is."""
    for step in range(4):
        op = order[:, step, None, None, None]
        grey = _luma(x)
        target = grey * (op == SATURATION) + grey.mean(dim=(2, 3), keepdim=True) * (op == CONTRAST)
        factor = factors.gather(1, order[:, step:step + 1].clamp(max=SATURATION))[:, :, None, None]
        x = torch.lerp(target, x, torch.where(op == HUE, 1.0, factor)).clamp_(0.0, 1.0)
        hued = ((order[:, step] == HUE) & (factors[:, HUE] != 0)).nonzero()[:, 0]
        if len(hued):
            x = x.index_copy(0, hued, adjust_hue(x.index_select(0, hued), factors[hued, HUE]))
    return x


def gaussian_blur(x: Tensor, kernel_size: int, sigma: Tensor) -> Tensor:
    """Blur images [N, C, H, W] with Gaussian kernels of ``kernel_size`` taps and per-sample ``sigma`` [N]
    (torchvision's GaussianBlur: separable, reflect padding), as weighted sums of shifted slices."""
    half = kernel_size // 2
    taps = torch.linspace(-half, half, kernel_size, device=x.device)
    weights = torch.exp(-0.5 * (taps[None, :] / sigma[:, None]) ** 2)
    weights = (weights / weights.sum(dim=1, keepdim=True))[:, :, None, None, None]  # [N, taps, 1, 1, 1]
    height, width = x.shape[-2:]
    padded = x.index_select(-1, reflect_indices(width, half).to(x.device))
    rows = weights[:, 0] * padded[..., :width]
    for i in range(1, kernel_size):
        rows.addcmul_(weights[:, i], padded[..., i:i + width])
    rows = rows.index_select(-2, reflect_indices(height, half).to(x.device))
    out = weights[:, 0] * rows[..., :height, :]
    for i in range(1, kernel_size):
        out.addcmul_(weights[:, i], rows[..., i:i + height, :])
    return out


@contextlib.contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``count`` inside the block."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class BatchedViews:
    """uint8 images [B, 3, S, S] -> one float view [B, 3, size, size] per :class:`ViewSpec`, normalized with
    ``mean`` / ``std`` (see the module docstring for the steps and the randomness)."""

    def __init__(self, views: Sequence[ViewSpec], mean: Sequence[float], std: Sequence[float], seed: int,
                 channels_last: bool = False) -> None:
        if not views:
            raise ValueError("views: expected at least one ViewSpec")
        self.views = list(views)
        self.mean, self.std = tuple(mean), tuple(std)
        self.seed = seed
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._step, self._repeat = -1, 0  # the last step seen and how many batches it has had before this one

    def generator(self, device: torch.device, step: int, rank: int) -> torch.Generator:
        """A generator on ``device`` for the next batch, seeded from (seed, rank, step, earlier batches of step)."""
        self._repeat = self._repeat + 1 if step == self._step else 0
        self._step = step
        state = np.random.SeedSequence([self.seed, rank, step, self._repeat]).generate_state(1, dtype=np.uint64)[0]
        return torch.Generator(device).manual_seed(int(state))

    @torch.no_grad()
    def __call__(self, images: Tensor, step: int = 0, rank: int = 0) -> List[Tensor]:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1:3] != (3, images.shape[-1]):
            raise ValueError(f"images: expected a uint8 batch of square images [B, 3, S, S] (augmentation_backend="
                             f"'batched'), got {images.dtype} {tuple(images.shape)}")
        generator = self.generator(images.device, step, rank)
        source = images.permute(0, 2, 1, 3).contiguous().float()  # [B, S, 3, S], for resized_crops
        out: List[Tensor] = []
        with intra_op_threads(CPU_THREADS if images.device.type == "cpu" else torch.get_num_threads()):
            # views of one size are cropped and augmented together; consecutive views keep their order
            for size, group in itertools.groupby(self.views, key=lambda v: v.size):
                views = list(group)
                out += self._views(source, views, size, generator).chunk(len(views))
        return out

    def _views(self, source: Tensor, views: Sequence[ViewSpec], size: int, generator: torch.Generator) -> Tensor:
        """[len(views) * B, 3, size, size]: the views of the 0-255 valued images ``source`` [B, S, 3, S], view after
        view."""
        batch, side, device = source.shape[0], source.shape[-1], source.device
        count = batch * len(views)

        def per_sample(values: Sequence[Any]) -> Tensor:  # one value (or row) per view -> one per sample
            return torch.tensor(values, device=device, dtype=torch.float32).repeat_interleave(batch, dim=0)

        def draw(p: Tensor) -> Tensor:  # indices of the samples for which an event of probability p happens
            return (torch.rand(count, generator=generator, device=device) < p).nonzero()[:, 0]

        left, top, width, height = crop_boxes(count, side, per_sample([v.scale for v in views]), generator).unbind(1)
        columns = resize_weights(left, width, size, side) / 255  # the division maps 0..255 to 0..1 for free
        flipped = draw(torch.tensor(FLIP_P, device=device))
        columns[flipped] = columns[flipped].flip(1)
        x = resized_crops(source, resize_weights(top, height, size, side), columns)

        strength = per_sample([v.photometric.jitter for v in views])  # [count, 4]
        low = torch.cat([(1 - strength[:, :3]).clamp(min=0), -strength[:, 3:]], dim=1)
        high = torch.cat([1 + strength[:, :3], strength[:, 3:]], dim=1)
        factors = _uniform(low, high, generator)
        order = torch.rand(count, 4, generator=generator, device=device).argsort(dim=1)  # uniform permutations
        jittered = draw(per_sample([v.photometric.jitter_p for v in views]))
        if len(jittered):
            x = x.index_copy(0, jittered, color_jitter(x[jittered], factors[jittered], order[jittered]))

        grey = draw(per_sample([v.photometric.grayscale_p for v in views]))
        x[grey] = _luma(x[grey]).expand(-1, 3, -1, -1)

        sigma_low, sigma_high = (torch.full((count,), s, device=device) for s in BLUR_SIGMA)
        sigma = _uniform(sigma_low, sigma_high, generator)
        blurred = draw(per_sample([v.photometric.blur_p for v in views]))
        if len(blurred):
            x[blurred] = gaussian_blur(x[blurred], blur_kernel_size(size), sigma[blurred])

        solarized = draw(per_sample([v.photometric.solarize_p for v in views]))
        if len(solarized):
            chosen = x[solarized]
            x[solarized] = torch.where(chosen >= SOLARIZE_THRESHOLD, 1.0 - chosen, chosen)

        scale = 1 / torch.tensor(self.std, device=device)
        shift = -torch.tensor(self.mean, device=device) * scale
        x = torch.addcmul(shift[None, :, None, None], x, scale[None, :, None, None])
        return x.contiguous(memory_format=self.memory_format)
