"""View transforms: the options of the views and batches, the description of each view (crop size, crop scale,
colour augmentation), the per-image PIL pipeline that realizes it (augmentation_backend "pil"), and the deterministic
evaluation and stored-image transforms. The batched pipeline (``batched.py``) realizes the same descriptions on whole
batches."""

from __future__ import annotations

import functools
from typing import Any, Callable, List, Optional, Sequence, Tuple

import attr
import attrs
import torch
import torchvision.transforms as T
from PIL import Image
from torch import Tensor

from selfsup.options import float_pair, option

ViewTransform = Callable[[Image.Image], Any]  # PIL RGB image -> view (a Tensor for the built-in transforms)

EVAL_CENTER_CROP_FRACTION = 0.875  # ImageNet convention: resize to crop / 0.875, then centre crop
GRAYSCALE_P = 0.2
JITTER_P = 0.8
BLUR_SIGMA = (0.1, 2.0)
TRANSFORM_TYPES = ("simclr", "byol", "crop")
AUGMENTATION_BACKENDS = ("batched", "pil")


@attrs.frozen(kw_only=True, slots=False)
class ViewOptions:
    """Views and batches"""

    batch_size: int = option(256, "images per device per optimizer step (each image gives num_global_crops views)",
                             low=1)
    transform_s: float = option(0.5, "colour-jitter strength s (brightness/contrast/saturation 0.8s, hue 0.2s)",
                                low=0)
    transform_apply_blur: bool = option(True, "Gaussian blur (p=0.5, sigma 0.1-2) in the 'simclr' pipeline")
    transform_type: str = option("simclr", "'simclr': MoCo v2/SimCLR views; 'byol': asymmetric blur/solarize pair; "
                                           "'crop': random resized crop and flip only (MAE, I-JEPA)",
                                 choices=TRANSFORM_TYPES)
    augmentation_backend: str = option("batched", "'batched': views made per batch on the training device; 'pil': "
                                                  "per image in the DataLoader", choices=AUGMENTATION_BACKENDS)
    num_global_crops: int = option(2, "views per image at transform_crop_size", low=1)
    num_local_crops: int = option(0, "extra small views per image (multi-crop); they are queries only", low=0)
    local_crop_size: Optional[int] = option(None, "side of local crops in px; None = 3/7 of the global crop (96/224)",
                                            low=1)
    global_crop_scale: Tuple[float, float] = option((0.2, 1.0), "area fraction range of the global crops",
                                                    converter=float_pair)
    local_crop_scale: Tuple[float, float] = option((0.05, 0.4), "area fraction range of the local crops",
                                                   converter=float_pair)
    decode_on_device: bool = option(False, "decode the image files on the training device (CUDA: batched nvJPEG), "
                                           "the loader workers only reading bytes; file datasets with the 'batched' "
                                           "backend; on a CPU the loader decodes as usual")
    seed: int = option(0, "run seed: data order and per-sample augmentations; the command line also seeds weight "
                          "init and RNGs", low=0)
    drop_last_batch: bool = option(True, "drop the incomplete last training batch (queues need equal batches)")


@functools.lru_cache(maxsize=None)
def reflect_indices(size: int, half: int) -> Tensor:
    """Indices that pad a side of ``size`` pixels by ``half`` on each end with reflection (as F.pad's "reflect")."""
    positions = torch.arange(-half, size + half).abs()
    return torch.where(positions > size - 1, 2 * (size - 1) - positions, positions).clamp(0, size - 1)


class GaussianBlur:
    """Gaussian blur of a [C, H, W] float tensor with sigma ~ U(sigma range): torchvision's GaussianBlur (same kernel,
    reflect padding), computed as 2 x kernel_size shifted, weighted sums because depthwise convolution is slower on a
    CPU. Padding uses index_select because F.pad's reflect kernel always forks intra-op threads, which stalls a busy
    machine. Both timings are in docs/benchmarks.md ("Measurements behind defaults")."""

    def __init__(self, kernel_size: int, sigma: Tuple[float, float] = BLUR_SIGMA) -> None:
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: got {kernel_size}; expected an odd positive number")
        self.kernel_size, self.sigma = kernel_size, sigma

    def __call__(self, image: Tensor) -> Tensor:
        sigma = float(torch.empty(1).uniform_(*self.sigma))
        half = self.kernel_size // 2
        kernel = torch.exp(-0.5 * (torch.linspace(-half, half, self.kernel_size) / sigma) ** 2)
        weights = (kernel / kernel.sum()).tolist()
        height, width = image.shape[-2:]
        padded = image.index_select(-1, reflect_indices(width, half)).index_select(-2, reflect_indices(height, half))
        rows = image.new_zeros(*padded.shape[:-1], width)  # blurred along x, still padded along y
        for offset, weight in enumerate(weights):
            rows.add_(padded[..., offset:offset + width], alpha=weight)
        blurred = torch.zeros_like(image)
        for offset, weight in enumerate(weights):
            blurred.add_(rows[..., offset:offset + height, :], alpha=weight)
        return blurred

    def __repr__(self) -> str:
        return f"GaussianBlur(kernel_size={self.kernel_size}, sigma={self.sigma})"


def blur_kernel_size(crop: int) -> int:
    """The odd kernel size closest above 10% of the crop (SimCLR: 23 at 224 px), at least 3."""
    return max(3, int(0.1 * crop) // 2 * 2 + 1)


@attr.s(auto_attribs=True, frozen=True)
class Photometric:
    """The colour part of a view's augmentation."""

    jitter: Tuple[float, float, float, float]  # ColorJitter brightness, contrast, saturation, hue (p = jitter_p)
    blur_p: float
    solarize_p: float
    jitter_p: float = JITTER_P
    grayscale_p: float = GRAYSCALE_P


def photometric_settings(v: ViewOptions) -> Tuple[List[Photometric], Photometric]:
    """(one Photometric per global view, the local views' Photometric) for ``transform_type``.

    "byol" jitters by (0.8s, 0.8s, 0.4s, 0.2s), which at the default s = 0.5 is BYOL's 0.4/0.4/0.2/0.1, and alternates
    BYOL's two views (blur 1.0 / 0.1, solarize 0 / 0.2); its local views blur with p = 0.5 and never solarize (DINO).
    "crop" changes no colour: the masked-image methods' views are crops and flips of the image.
    """
    s = v.transform_s
    global_views = v.num_global_crops
    if v.transform_type == "simclr":
        simclr = Photometric((0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s), 0.5 if v.transform_apply_blur else 0.0, 0.0)
        return [simclr] * global_views, simclr
    if v.transform_type == "byol":
        jitter = (0.8 * s, 0.8 * s, 0.4 * s, 0.2 * s)
        pair = (Photometric(jitter, 1.0, 0.0), Photometric(jitter, 0.1, 0.2))
        return [pair[i % 2] for i in range(global_views)], Photometric(jitter, 0.5, 0.0)
    if v.transform_type == "crop":
        none = Photometric((0.0, 0.0, 0.0, 0.0), 0.0, 0.0, jitter_p=0.0, grayscale_p=0.0)
        return [none] * global_views, none
    raise ValueError(f"transform_type: got {v.transform_type!r}; expected one of {TRANSFORM_TYPES}")


def view_transform(crop: int, scale: Tuple[float, float], photometric: Photometric, mean: Sequence[float],
                   std: Sequence[float]) -> T.Compose:
    """PIL RGB image -> normalized float [3, crop, crop] view. Blur and solarize run on the float tensor (a PIL round
    trip would cost more), after the PIL colour steps, in BYOL's order. torchvision's v1 transforms, not v2: v2's
    per-transform dispatch made this pipeline slower (docs/benchmarks.md, "Measurements behind defaults")."""
    steps: List[Callable[..., Any]] = [T.RandomResizedCrop(crop, scale=scale), T.RandomHorizontalFlip()]
    if photometric.jitter_p > 0:
        steps.append(T.RandomApply([T.ColorJitter(*photometric.jitter)], p=photometric.jitter_p))
    if photometric.grayscale_p > 0:
        steps.append(T.RandomGrayscale(p=photometric.grayscale_p))
    steps.append(T.ToTensor())
    if photometric.blur_p > 0:
        steps.append(T.RandomApply([GaussianBlur(blur_kernel_size(crop))], p=photometric.blur_p))
    if photometric.solarize_p > 0:
        steps.append(T.RandomSolarize(threshold=0.5, p=photometric.solarize_p))
    steps.append(T.Normalize(mean, std))
    return T.Compose(steps)


@attr.s(auto_attribs=True, frozen=True)
class ViewSpec:
    """One view: output side in px, crop area-fraction range and its colour augmentation."""

    size: int
    scale: Tuple[float, float]
    photometric: Photometric


def local_crop_size(v: ViewOptions, crop: int) -> int:
    """Side of the local crops: ``local_crop_size``, or 3/7 of the global crop ``crop`` (96 px for 224, as DINO)."""
    return v.local_crop_size or round(crop * 3 / 7)


def view_specs(v: ViewOptions, crop: int) -> List[ViewSpec]:
    """The views of one image: ``num_global_crops`` global views of side ``crop``, then ``num_local_crops`` local
    views."""
    global_photometric, local_photometric = photometric_settings(v)
    global_views = [ViewSpec(crop, v.global_crop_scale, p) for p in global_photometric]
    local = ViewSpec(local_crop_size(v, crop), v.local_crop_scale, local_photometric)
    return global_views + [local] * v.num_local_crops


def build_view_transforms(specs: Sequence[ViewSpec], mean: Sequence[float], std: Sequence[float]
                          ) -> List[ViewTransform]:
    """One PIL transform per view."""
    return [view_transform(spec.size, spec.scale, spec.photometric, mean, std) for spec in specs]


def build_eval_transform(crop: int, small_images: bool, mean: Sequence[float], std: Sequence[float]
                         ) -> Callable[[Image.Image], Tensor]:
    """Deterministic: resize the shorter side, centre crop, normalize. Small-image datasets are evaluated whole
    (resize to the crop, as customary for CIFAR); larger ones by the ImageNet 0.875 centre crop."""
    side = crop if small_images else round(crop / EVAL_CENTER_CROP_FRACTION)
    return T.Compose([T.Resize(side), T.CenterCrop(crop), T.ToTensor(), T.Normalize(mean, std)])


def build_finetune_transform(crop: int, small_images: bool, mean: Sequence[float], std: Sequence[float]
                             ) -> Callable[[Image.Image], Tensor]:
    """The usual supervised training augmentation: for small images (CIFAR) the image resized to the crop, a random
    crop of it padded by crop/8 px (4 px at 32 px, as the CIFAR ResNets; reflected rather than zero borders) and a
    horizontal flip; for larger ones a random resized crop (area 8-100%) and a flip (the ImageNet recipe). Then
    normalize."""
    if small_images:
        steps: List[Callable[..., Any]] = [T.Resize(crop), T.CenterCrop(crop),
                                           T.RandomCrop(crop, padding=max(1, crop // 8), padding_mode="reflect")]
    else:
        steps = [T.RandomResizedCrop(crop, scale=(0.08, 1.0))]
    return T.Compose([*steps, T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])


def build_stored_image_transform(side: int) -> Callable[[Image.Image], Tensor]:
    """PIL RGB image -> uint8 [3, side, side]: the shorter side resized to ``side``, the centre square kept. No
    randomness: the views are made from the batch by batched.BatchedViews."""
    return T.Compose([T.Resize(side), T.CenterCrop(side), T.PILToTensor()])


class MultiView:
    """PIL image -> [view_transform(image) for each view transform]."""

    def __init__(self, transforms: Sequence[ViewTransform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Image.Image) -> List[Any]:
        return [transform(image) for transform in self.transforms]


def multi_view(transforms: ViewTransform | Sequence[ViewTransform], views: int, what: str) -> MultiView:
    """``transforms``, one callable for every view or one per view, as a MultiView of ``views`` views; ``what``
    names the count in the error (e.g. "num_global_crops=2 + num_local_crops=0")."""
    if callable(transforms):
        return MultiView([transforms] * views)
    listed = list(transforms)
    if len(listed) != views or not all(callable(t) for t in listed):
        raise ValueError(f"view_transforms: expected one callable or a list of {views} callables ({what}), got "
                         f"{len(listed)} items: {listed!r}")
    return MultiView(listed)
