"""Datasets, multi-view augmentations and data loaders for pretraining (moco.py) and the linear probe.

Datasets, chosen by ``params.dataset_name`` and read from ``params.data_path``, else env ``DATA_PATH``, else the working
directory (the "data path" below):

- ``"stl10"``: torchvision STL10 in ``<data path>/stl10_binary``. Pretraining on train+unlabeled (unlabeled images have
  label -1), validation on test; the linear probe uses train / test. 96 px.
- ``"cifar10"``: torchvision CIFAR10 in ``<data path>/cifar-10-batches-py``, train / test. 32 px.
  Both are downloaded when absent; offline, a :class:`DataError` says which files to put where.
- ``"imagenet"``: class folders at ``<data path>/imagenet/train`` and ``<data path>/imagenet/val``. 224 px.
- ``"imagefolder"``: ``<data path>/train`` holds class folders (labels follow the sorted folder names, images may sit in
  nested folders) or, for unlabeled pretraining, the images themselves (labels -1). Validation reads
  ``<data path>/val`` (labelled with the training classes) when it exists, otherwise a held-out split of train:
  ``holdout_fraction`` of every class, drawn with ``data_seed``. Files whose extension is not an image extension and
  hidden files (``.DS_Store``, macOS ``._x.jpg`` resource forks) are ignored. Any PIL mode is converted to RGB
  (:func:`to_rgb`). The default crop is the median shorter side of up to 8 images spread over the classes, capped at
  224 px: a folder of CIFAR-10 images gives 32 px crops, one of photos 224 px. Normalization uses ImageNet statistics.
- ``"synthetic"``: :class:`SyntheticShapes`, 10 shape/texture classes rendered per index, no files;
  ``synthetic_image_size`` px (default crop), normalized with the measured SYNTHETIC_MEAN / SYNTHETIC_STD.

Corrupt images are detected when decoded, not when the folder is indexed: decoding a header costs about 0.25 ms per
file here (about 5 minutes for ImageNet, at every start) and would still miss truncated files. An unreadable file
raises :class:`DataError` naming it; with ``skip_corrupt_images=True`` the next readable image of the list is returned
instead and a :class:`CorruptImageWarning` names the file and the running count of skipped files of that process.

Randomness: the augmentations draw from the global RNGs (torch, numpy, random) of the process that loads the sample.
The training loader (``make_loader(shuffle=True)``) seeds them before every sample from a seed drawn for that sample's
position in the epoch (:class:`EpochSampler`, :class:`SeededSamples`), so the views depend only on (``seed``, epoch,
position): not on the number of worker processes or ranks, nor on whether the run was interrupted and resumed. Other
loaders seed a generator with ``seed`` and the distributed rank, from which PyTorch derives each worker's seed.
With augmentation_backend="batched" the training loader only decodes and resizes; augment.py draws the views.
"""

from __future__ import annotations

import functools
import math
import os
import random
import tarfile
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import attr
import numpy as np
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.datasets.folder import IMG_EXTENSIONS

import model_params

ViewTransform = Callable[[Image.Image], Any]  # PIL RGB image -> view (a Tensor for the built-in transforms)
Sample = Tuple[str, int]  # (image path, label)
DatasetPair = Tuple[Dataset, Dataset]  # (train, validation or test)

UNLABELED = -1  # label of images without a class (STL-10 unlabeled split, flat image folders)
SMALL_IMAGE_MAX_SIDE = 64  # datasets with default crops up to this size use the CIFAR stem by default
MAX_FOLDER_CROP = 224  # an image folder's default crop never exceeds the ImageNet crop
SIZE_PROBE_IMAGES = 8  # images inspected to choose an image folder's default crop
EVAL_CENTER_CROP_FRACTION = 0.875  # ImageNet convention: resize to crop / 0.875, then centre crop
GRAYSCALE_P = 0.2
JITTER_P = 0.8
BLUR_SIGMA = (0.1, 2.0)
PREFETCH_BATCHES_PER_WORKER = 2  # deeper prefetching costs memory (a 224 px batch of 256 x 2 views is 300 MB)
SAMPLE_SEED_HIGH = 2**63 - 1  # the training loader's per-sample seeds are drawn from [0, SAMPLE_SEED_HIGH)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Pixel statistics of the training sets (the std is over all pixels, not the mean of per-image stds).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
STL10_MEAN = (0.4467, 0.4398, 0.4066)
STL10_STD = (0.2603, 0.2566, 0.2713)
# SyntheticShapes, measured over 32768 images (4 seeds, 32 px; sizes differ by < 0.01): the mean is 0.5 by symmetry
# (colours are uniform), and green varies most because the luminance-contrast rule weighs it most.
SYNTHETIC_MEAN = (0.5, 0.5, 0.5)
SYNTHETIC_STD = (0.293, 0.305, 0.292)

_DEFAULTS = {name: field.default for name, field in attr.fields_dict(model_params.ModelParams).items()}


class DataError(RuntimeError):
    """Missing, empty, unreadable or undownloadable data; the message names the path or file and what was expected."""


class CorruptImageWarning(UserWarning):
    """An unreadable image was skipped (``skip_corrupt_images=True``)."""


def _param(params: Any, name: str) -> Any:
    """``params.name``, or the ModelParams default for params objects without that field (the linear probe's)."""
    return getattr(params, name, _DEFAULTS[name])


@attr.s(auto_attribs=True, frozen=True)
class DatasetInfo:
    """What the model and the transforms need to know about a dataset."""

    name: str
    image_size: int  # default side of the global crops in px
    mean: Tuple[float, float, float]  # per-channel normalization, RGB in [0, 1]
    std: Tuple[float, float, float]
    num_classes: Optional[int]  # None for unlabeled image folders
    small_images: bool = attr.ib()  # CIFAR stem by default

    @small_images.default
    def _small_images(self) -> bool:
        return self.image_size <= SMALL_IMAGE_MAX_SIDE


def resolve_data_path(params: Any) -> str:
    """Absolute data path: ``params.data_path``, else env ``DATA_PATH``, else the working directory."""
    configured = getattr(params, "data_path", None) or os.environ.get("DATA_PATH") or os.getcwd()
    return os.path.abspath(os.path.expanduser(configured))


def _dataset_name(params: Any) -> str:
    name = params.dataset_name
    if name not in model_params.DATASETS:
        raise ValueError(f"dataset_name: got {name!r}; expected one of {', '.join(map(repr, model_params.DATASETS))}")
    return name


def dataset_info(params: Any) -> DatasetInfo:
    """Crop size, normalization and class count of ``params.dataset_name`` (an image folder is inspected)."""
    name = _dataset_name(params)
    if name == "stl10":
        return DatasetInfo(name, 96, STL10_MEAN, STL10_STD, 10)
    if name == "cifar10":
        return DatasetInfo(name, 32, CIFAR10_MEAN, CIFAR10_STD, 10)
    if name == "imagenet":
        return DatasetInfo(name, 224, IMAGENET_MEAN, IMAGENET_STD, 1000)
    if name == "synthetic":
        return DatasetInfo(name, params.synthetic_image_size, SYNTHETIC_MEAN, SYNTHETIC_STD, len(SYNTHETIC_CLASSES))
    train_dir, _ = _imagefolder_dirs(params)
    classes = _class_folders(train_dir)
    side = _median_short_side(_probe_images(train_dir, classes), _param(params, "skip_corrupt_images"))
    return DatasetInfo(name, min(MAX_FOLDER_CROP, side), IMAGENET_MEAN, IMAGENET_STD, len(classes) or None)


def uses_cifar_stem(params: Any) -> bool:
    """Whether the encoder gets the CIFAR stem: ``use_cifar_stem``, or by default for datasets of <= 64 px."""
    return dataset_info(params).small_images if params.use_cifar_stem is None else params.use_cifar_stem


def crop_size(params: Any) -> int:
    """Side of the global crops: ``transform_crop_size``, or the dataset's default."""
    return params.transform_crop_size or dataset_info(params).image_size


# ---------------------------------------------------------------------------------------------------------------------
# Image files
# ---------------------------------------------------------------------------------------------------------------------

_HIGH_BIT_DEPTH_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
_TRANSPARENT_BACKGROUND = (255, 255, 255, 255)  # how viewers show transparent pixels
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)  # what PIL raises


def to_rgb(image: Image.Image) -> Image.Image:
    """An RGB copy of an image of any PIL mode.

    16/32-bit integer images are taken as 16-bit and scaled to 8 bits (PIL's own conversion clips them at 255, which
    turns most of a 16-bit image white). Transparent pixels are composited onto white: their colour channels are
    undefined (often black or leftover data), so dropping the alpha channel would expose arbitrary colours.
    """
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        image = Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))  # 2-D uint8: mode L
    if "A" in image.getbands() or "transparency" in image.info:
        image = Image.alpha_composite(Image.new("RGBA", image.size, _TRANSPARENT_BACKGROUND), image.convert("RGBA"))
    return image.convert("RGB")


def load_rgb(path: str) -> Image.Image:
    """Decode an image file fully (so truncated files fail here) and convert it to RGB."""
    with Image.open(path) as image:
        image.load()
        return to_rgb(image)


def _is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def _images_under(directory: str) -> List[str]:
    """Image files anywhere below ``directory``, in sorted (reproducible) order."""
    found = []
    for parent, subdirs, files in os.walk(directory, followlinks=True):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        found += [os.path.join(parent, f) for f in sorted(files) if _is_image_file(f)]
    return found


def _require_dir(directory: str, what: str) -> None:
    if not os.path.isdir(directory):
        raise DataError(f"{what}: folder {directory} does not exist (set data_path or env DATA_PATH to the folder "
                        "that contains it)")


def _class_folders(directory: str) -> List[str]:
    """Sorted class folder names of an image folder ([] for a flat folder of images)."""
    _require_dir(directory, "image folder")
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


@attr.s(auto_attribs=True, frozen=True)
class FolderIndex:
    """The labelled image files of an image folder."""

    root: str
    samples: List[Sample]
    classes: List[str]  # label i is classes[i]; [] when unlabeled (every label is UNLABELED)


def index_image_folder(directory: str, classes: Optional[Sequence[str]] = None) -> FolderIndex:
    """List the images of ``directory``: one subfolder per class, or the images themselves (unlabeled).

    ``classes`` fixes the label of each class name (a validation folder uses the training classes, so that labels agree
    even when some classes are missing from it); by default the sorted folder names are the classes.
    """
    subdirs = _class_folders(directory)
    if not subdirs:
        images = _images_under(directory)
        if not images:
            raise DataError(f"image folder {directory} contains no images (expected class subfolders or image files "
                            f"with one of the extensions {', '.join(IMG_EXTENSIONS)})")
        return FolderIndex(directory, [(path, UNLABELED) for path in images], [])
    loose = [name for name in sorted(os.listdir(directory)) if _is_image_file(name)]
    if loose:
        raise DataError(f"image folder {directory} mixes class subfolders ({', '.join(subdirs[:3])}, ...) with images "
                        f"directly inside it ({', '.join(loose[:3])}, ...); move the images into class folders, or the "
                        "subfolders out, for an unlabeled folder")
    label_of = {name: label for label, name in enumerate(classes if classes is not None else subdirs)}
    unknown = [name for name in subdirs if name not in label_of]
    if unknown:
        raise DataError(f"image folder {directory} has class folders that the training folder lacks: "
                        f"{', '.join(unknown)}")
    samples: List[Sample] = []
    empty = []
    for name in subdirs:
        images = _images_under(os.path.join(directory, name))
        samples += [(path, label_of[name]) for path in images]
        if not images:
            empty.append(name)
    if empty and (classes is None or not samples):
        # an empty training class is most likely a copying mistake (and a probe class without examples); a
        # validation folder may lack images of some classes
        raise DataError(f"image folder {directory}: class folders without images: {', '.join(empty)} (expected files "
                        f"with one of the extensions {', '.join(IMG_EXTENSIONS)})")
    return FolderIndex(directory, samples, list(label_of))


def holdout_split(index: FolderIndex, fraction: float, seed: int) -> Tuple[FolderIndex, FolderIndex]:
    """Split an index into (kept, held out), stratified by label and reproducible for ``seed``.

    Each label with n >= 2 images gives ``round(fraction * n)`` of them, at least one and never all.
    """
    rng = np.random.default_rng(seed)
    by_label: Dict[int, List[int]] = {}
    for position, (_, label) in enumerate(index.samples):
        by_label.setdefault(label, []).append(position)
    held: set[int] = set()
    for label in sorted(by_label):
        positions = by_label[label]
        count = min(len(positions) - 1, max(1, round(fraction * len(positions))))
        held.update(rng.choice(positions, size=count, replace=False).tolist())
    if not held:
        raise DataError(f"image folder {index.root}: too few images per class to hold out holdout_fraction="
                        f"{fraction} for validation; add a val/ folder or more images")
    kept = [s for i, s in enumerate(index.samples) if i not in held]
    held_out = [s for i, s in enumerate(index.samples) if i in held]
    return FolderIndex(index.root, kept, index.classes), FolderIndex(index.root, held_out, index.classes)


def _probe_images(directory: str, classes: Sequence[str]) -> List[str]:
    """Up to SIZE_PROBE_IMAGES images spread over the folder: the first image of classes spread over the class list
    (cheap: lists only those folders), or images spread over a flat folder."""
    if not classes:
        images = [path for path, _ in index_image_folder(directory).samples]
        return images[::max(1, len(images) // SIZE_PROBE_IMAGES)][:SIZE_PROBE_IMAGES]
    probed = classes[::max(1, len(classes) // SIZE_PROBE_IMAGES)][:SIZE_PROBE_IMAGES]
    probes = [path for name in probed for path in _images_under(os.path.join(directory, name))[:1]]
    if not probes:
        raise DataError(f"image folder {directory}: class folders without images: {', '.join(probed)}")
    return probes


def _median_short_side(paths: Sequence[str], skip_corrupt: bool) -> int:
    sides = []
    for path in paths:
        try:
            with Image.open(path) as image:  # reads the header only
                sides.append(min(image.size))
        except _DECODE_ERRORS as error:
            if not skip_corrupt:
                raise _corrupt_image_error(path, error) from error
    if not sides:
        raise DataError(f"none of the images inspected for their size is readable: {', '.join(paths)}")
    return int(np.median(sides))


def _corrupt_image_error(path: str, error: BaseException) -> DataError:
    return DataError(f"cannot read image {path}: {error}. Fix or remove the file, or set skip_corrupt_images=True "
                     "to skip unreadable images")


class ImageFileDataset(Dataset):
    """Items ``(transform(RGB image), label)`` of a list of image files (see the module docstring on corrupt files)."""

    def __init__(self, samples: Sequence[Sample], transform: Callable[[Image.Image], Any],
                 skip_corrupt: bool = False) -> None:
        if not samples:
            raise DataError("ImageFileDataset: no image files given")
        self.samples = list(samples)
        self.transform = transform
        self.skip_corrupt = skip_corrupt
        self.skipped: set[str] = set()  # unreadable paths met by this process

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        for offset in range(len(self.samples)):
            path, label = self.samples[(index + offset) % len(self.samples)]
            if path in self.skipped:
                continue
            try:
                image = load_rgb(path)
            except _DECODE_ERRORS as error:
                if not self.skip_corrupt:
                    raise _corrupt_image_error(path, error) from error
                self.skipped.add(path)
                warnings.warn(f"skipped unreadable image {path} ({error}); {len(self.skipped)} skipped so far in this "
                              "process", CorruptImageWarning, stacklevel=2)
                continue
            return self.transform(image), label
        raise DataError(f"none of the {len(self.samples)} images is readable (first: {self.samples[0][0]})")


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic shapes
# ---------------------------------------------------------------------------------------------------------------------

def _disc(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u ** 2 + v ** 2 <= 1


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (0.55 ** 2 <= u ** 2 + v ** 2) & (u ** 2 + v ** 2 <= 1)


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(abs(u), abs(v)) <= 0.8


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # equilateral, circumradius 1, apex at v = 1
    return (v >= -0.5) & (math.sqrt(3) * u + v <= 1) & (-math.sqrt(3) * u + v <= 1)


def _plus(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return ((abs(u) <= 0.28) & (abs(v) <= 1)) | ((abs(v) <= 0.28) & (abs(u) <= 1))


def _two_dots(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return ((u - 0.55) ** 2 + v ** 2 <= 0.4 ** 2) | ((u + 0.55) ** 2 + v ** 2 <= 0.4 ** 2)


def _horizontal_stripes(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.sin(2 * np.pi * v / 0.9) > 0  # textures fill the image, with a period of 0.9 shape radii


def _vertical_stripes(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.sin(2 * np.pi * u / 0.9) > 0


def _checkerboard(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.sin(2 * np.pi * u / 1.2) * np.sin(2 * np.pi * v / 1.2) > 0


def _polka_dots(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.mod(u, 0.9) - 0.45) ** 2 + (np.mod(v, 0.9) - 0.45) ** 2 <= 0.25 ** 2


ShapeMask = Callable[[np.ndarray, np.ndarray], np.ndarray]
# (name, mask in shape coordinates (u, v in shape radii), free rotation); stripes only tilt, or they would swap classes
SYNTHETIC_CLASSES: Tuple[Tuple[str, ShapeMask, bool], ...] = (
    ("disc", _disc, True),
    ("ring", _ring, True),
    ("square", _square, True),
    ("triangle", _triangle, True),
    ("plus", _plus, True),
    ("two_dots", _two_dots, True),
    ("horizontal_stripes", _horizontal_stripes, False),
    ("vertical_stripes", _vertical_stripes, False),
    ("checkerboard", _checkerboard, True),
    ("polka_dots", _polka_dots, True),
)
_SYNTHETIC_SPLITS = {"train": 0, "val": 1}
_MAX_TILT = math.pi / 12  # rotation range of the orientation-defined classes
_MIN_LUMINANCE_CONTRAST = 0.25  # shapes stay visible in grayscale views
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, as PIL's grayscale conversion


def shape_coordinates(size: int, centre: Tuple[float, float], radius: float,
                      angle: float) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (u, v) of a size x size image in a frame centred at ``centre`` (fractions of the
    side), rotated by ``angle`` and measured in units of ``radius`` (a fraction of the side)."""
    grid = (np.arange(size) + 0.5) / size
    dx, dy = grid[None, :] - centre[0], grid[:, None] - centre[1]
    cos, sin = math.cos(angle), math.sin(angle)
    return (cos * dx + sin * dy) / radius, (-sin * dx + cos * dy) / radius


def render_synthetic(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A size x size x 3 uint8 image of class ``label`` with random colours, position, scale, rotation and noise."""
    _, mask_of, free_rotation = SYNTHETIC_CLASSES[label]
    background = rng.uniform(0, 1, 3)
    foreground = rng.uniform(0, 1, 3)
    while abs(_LUMA @ (foreground - background)) < _MIN_LUMINANCE_CONTRAST:
        foreground = rng.uniform(0, 1, 3)
    centre = (0.5 + rng.uniform(-0.12, 0.12), 0.5 + rng.uniform(-0.12, 0.12))
    radius = rng.uniform(0.22, 0.38)
    angle = rng.uniform(0, 2 * math.pi) if free_rotation else rng.uniform(-_MAX_TILT, _MAX_TILT)
    mask = mask_of(*shape_coordinates(size, centre, radius, angle))
    image = np.where(mask[..., None], foreground, background)
    image = image + rng.uniform(0, 0.1) * rng.standard_normal(image.shape, dtype=np.float32)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


class SyntheticShapes(Dataset):
    """Items ``(transform(PIL image), label)``: ``label = index % 10`` names a shape or texture
    (:data:`SYNTHETIC_CLASSES`); colours, position, scale, rotation and noise are nuisances the SSL augmentations are
    invariant to. Image ``index`` depends only on (seed, split, index), so it is rendered on the fly, identically in
    every process; the train and val splits never share an image stream."""

    def __init__(self, size: int, length: int, seed: int, split: str,
                 transform: Callable[[Image.Image], Any]) -> None:
        if split not in _SYNTHETIC_SPLITS:
            raise ValueError(f"split: got {split!r}; expected one of {', '.join(_SYNTHETIC_SPLITS)}")
        self.size, self.length, self.seed, self.split, self.transform = size, length, seed, split, transform

    def __len__(self) -> int:
        return self.length

    def image(self, index: int) -> Tuple[Image.Image, int]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} synthetic images")
        label = index % len(SYNTHETIC_CLASSES)
        rng = np.random.default_rng([self.seed, _SYNTHETIC_SPLITS[self.split], index])
        return Image.fromarray(render_synthetic(label, self.size, rng)), label

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        image, label = self.image(index)
        return self.transform(image), label


# ---------------------------------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def reflect_indices(size: int, half: int) -> Tensor:
    """Indices that pad a side of ``size`` pixels by ``half`` on each end with reflection (as F.pad's "reflect")."""
    positions = torch.arange(-half, size + half).abs()
    return torch.where(positions > size - 1, 2 * (size - 1) - positions, positions).clamp(0, size - 1)


class GaussianBlur:
    """Gaussian blur of a [C, H, W] float tensor with sigma ~ U(sigma range): torchvision's GaussianBlur (same kernel,
    reflect padding), computed as 2 x kernel_size shifted, weighted sums because depthwise convolution is slow on CPU
    (measured here: 58 us instead of 330 us at 32 px / 3 taps, 1.9 ms instead of 10.8 ms at 224 px / 23 taps). Padding
    uses index_select: F.pad's reflect kernel always forks intra-op threads, and took 8 ms instead of 15 us per call in
    a process with 2 torch threads on a busy machine (the main process when num_workers=0)."""

    def __init__(self, kernel_size: int, sigma: Tuple[float, float] = BLUR_SIGMA) -> None:
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: got {kernel_size}; expected an odd positive number")
        self.kernel_size, self.sigma = kernel_size, sigma

    def __call__(self, image: Tensor) -> Tensor:
        sigma = float(torch.empty(1).uniform_(*self.sigma))
        half = self.kernel_size // 2
        weights = torch.exp(-0.5 * (torch.linspace(-half, half, self.kernel_size) / sigma) ** 2)
        weights = (weights / weights.sum()).tolist()
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

    jitter: Tuple[float, float, float, float]  # ColorJitter brightness, contrast, saturation, hue (p = JITTER_P)
    blur_p: float
    solarize_p: float


def photometric_settings(params: Any) -> Tuple[List[Photometric], Photometric]:
    """(one Photometric per global view, the local views' Photometric) for ``transform_type``.

    "byol" jitters by (0.8s, 0.8s, 0.4s, 0.2s), which at the default s = 0.5 is BYOL's 0.4/0.4/0.2/0.1, and alternates
    BYOL's two views (blur 1.0 / 0.1, solarize 0 / 0.2); its local views blur with p = 0.5 and never solarize (DINO).
    """
    s = params.transform_s
    global_views = params.num_global_crops
    if params.transform_type == "simclr":
        simclr = Photometric((0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s), 0.5 if params.transform_apply_blur else 0.0, 0.0)
        return [simclr] * global_views, simclr
    if params.transform_type == "byol":
        jitter = (0.8 * s, 0.8 * s, 0.4 * s, 0.2 * s)
        pair = (Photometric(jitter, 1.0, 0.0), Photometric(jitter, 0.1, 0.2))
        return [pair[i % 2] for i in range(global_views)], Photometric(jitter, 0.5, 0.0)
    raise ValueError(f"transform_type: got {params.transform_type!r}; expected 'simclr' or 'byol'")


def view_transform(crop: int, scale: Tuple[float, float], photometric: Photometric, mean: Sequence[float],
                   std: Sequence[float]) -> T.Compose:
    """PIL RGB image -> normalized float [3, crop, crop] view. Blur and solarize run on the float tensor (a PIL round
    trip would cost more), after the PIL colour steps, in BYOL's order. torchvision's v1 transforms, not v2: v2's
    per-transform dispatch made this pipeline ~15% slower at 32 px (measured here)."""
    steps: List[Callable[..., Any]] = [
        T.RandomResizedCrop(crop, scale=scale),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(*photometric.jitter)], p=JITTER_P),
        T.RandomGrayscale(p=GRAYSCALE_P),
        T.ToTensor(),
    ]
    if photometric.blur_p > 0:
        steps.append(T.RandomApply([GaussianBlur(blur_kernel_size(crop))], p=photometric.blur_p))
    if photometric.solarize_p > 0:
        steps.append(T.RandomSolarize(threshold=0.5, p=photometric.solarize_p))
    steps.append(T.Normalize(mean, std))
    return T.Compose(steps)


def local_crop_size(params: Any) -> int:
    """Side of the local crops: ``local_crop_size``, or 3/7 of the global crop (96 px for 224, as DINO)."""
    return params.local_crop_size or round(crop_size(params) * 3 / 7)


def build_view_transforms(params: Any) -> List[ViewTransform]:
    """One transform per view: ``num_global_crops`` global views, then ``num_local_crops`` local views."""
    info = dataset_info(params)
    crop = params.transform_crop_size or info.image_size
    global_photometric, local_photometric = photometric_settings(params)
    global_views = [view_transform(crop, params.global_crop_scale, p, info.mean, info.std) for p in global_photometric]
    local = view_transform(local_crop_size(params), params.local_crop_scale, local_photometric, info.mean, info.std)
    return global_views + [local] * params.num_local_crops


def build_eval_transform(params: Any) -> Callable[[Image.Image], Tensor]:
    """Deterministic: resize the shorter side, centre crop, normalize. Small-image datasets are evaluated whole
    (resize to the crop, as customary for CIFAR); larger ones by the ImageNet 0.875 centre crop."""
    info = dataset_info(params)
    crop = params.transform_crop_size or info.image_size
    side = crop if info.small_images else round(crop / EVAL_CENTER_CROP_FRACTION)
    return T.Compose([T.Resize(side), T.CenterCrop(crop), T.ToTensor(), T.Normalize(info.mean, info.std)])


_FIXED_SIZE_DATASETS = ("stl10", "cifar10", "synthetic")


def stored_image_size(params: Any) -> int:
    """Side S of the un-augmented training images of augmentation_backend="batched", which the views are cropped
    from: the native side of the fixed-size datasets (at least the crop); for image folders the crop for small images,
    else crop / 0.875 (256 px for 224 px crops, as the evaluation resize), so that crops keep some margin."""
    info = dataset_info(params)
    crop = params.transform_crop_size or info.image_size
    if info.name in _FIXED_SIZE_DATASETS:
        return max(info.image_size, crop)
    return crop if info.small_images else round(crop / EVAL_CENTER_CROP_FRACTION)


def build_stored_image_transform(params: Any) -> Callable[[Image.Image], Tensor]:
    """PIL RGB image -> uint8 [3, S, S], S = :func:`stored_image_size`: the shorter side resized to S, the centre
    square kept. No randomness: the views are made from the batch by augment.BatchedViews."""
    side = stored_image_size(params)
    return T.Compose([T.Resize(side), T.CenterCrop(side), T.PILToTensor()])


def uses_batched_views(params: Any, view_transforms: Union[ViewTransform, Sequence[ViewTransform], None]) -> bool:
    """Whether the pretraining views are made from uint8 batches on the training device (augmentation_backend
    "batched"); custom ``view_transforms`` are PIL callables, so they always run per image in the DataLoader."""
    return params.augmentation_backend == "batched" and view_transforms is None


class MultiView:
    """PIL image -> [view_transform(image) for each view transform]."""

    def __init__(self, transforms: Sequence[ViewTransform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Image.Image) -> List[Any]:
        return [transform(image) for transform in self.transforms]


def _multi_view(params: Any, view_transforms: Union[ViewTransform, Sequence[ViewTransform], None]) -> MultiView:
    views = params.num_global_crops + params.num_local_crops
    if view_transforms is None:
        return MultiView(build_view_transforms(params))
    if callable(view_transforms):
        return MultiView([view_transforms] * views)
    transforms = list(view_transforms)
    if len(transforms) != views or not all(callable(t) for t in transforms):
        raise ValueError(f"view_transforms: expected one callable or a list of {views} callables (num_global_crops="
                         f"{params.num_global_crops} + num_local_crops={params.num_local_crops}), got "
                         f"{len(transforms)} items: {transforms!r}")
    return MultiView(transforms)


# ---------------------------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------------------------

_TORCHVISION = {"cifar10": torchvision.datasets.CIFAR10, "stl10": torchvision.datasets.STL10}


def _torchvision_dataset(params: Any, split: str, transform: Callable[[Image.Image], Any]) -> Dataset:
    """A torchvision dataset, downloaded when absent; a failed download explains how to provide the files."""
    name = params.dataset_name
    cls = _TORCHVISION[name]
    root = resolve_data_path(params)
    split_kwargs = {"train": split == "train"} if name == "cifar10" else {"split": split}
    try:
        return cls(root, download=True, transform=transform, **split_kwargs)
    except (OSError, RuntimeError, tarfile.TarError) as error:
        files = [name for name, _ in cls.train_list + cls.test_list]
        files += [cls.meta["filename"]] if hasattr(cls, "meta") else []
        folder = os.path.join(root, cls.base_folder)
        raise DataError(
            f"dataset {name!r}: the files are not in {folder} and downloading them failed ({error}). Expected there: "
            f"{', '.join(files)}. To provide them, download {cls.url} on a machine with internet access and extract "
            f"it into {root} (tar -xzf {cls.filename} -C {root}), or point data_path / env DATA_PATH at the folder "
            f"that contains {cls.base_folder}/; or store the images as <data_path>/train/<class>/<image> and use "
            "dataset_name='imagefolder'") from error


def _imagefolder_dirs(params: Any) -> Tuple[str, str]:
    """(<data path>/train, which must exist, <data path>/val, which may not) of "imagefolder"."""
    root = resolve_data_path(params)
    train_dir = os.path.join(root, "train")
    _require_dir(train_dir, "imagefolder training images (<data_path>/train)")
    return train_dir, os.path.join(root, "val")


def _folder_splits(params: Any) -> Tuple[FolderIndex, FolderIndex]:
    """(train, validation) indices of "imagenet" or "imagefolder"."""
    if params.dataset_name == "imagenet":
        root = os.path.join(resolve_data_path(params), "imagenet")
        train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
        _require_dir(train_dir, "imagenet training images (<data_path>/imagenet/train/<class>/<image>)")
        _require_dir(val_dir, "imagenet validation images (<data_path>/imagenet/val/<class>/<image>)")
    else:
        train_dir, val_dir = _imagefolder_dirs(params)
    train = index_image_folder(train_dir)
    if os.path.isdir(val_dir):
        return train, index_image_folder(val_dir, train.classes or None)
    return holdout_split(train, _param(params, "holdout_fraction"), _param(params, "data_seed"))


def _split_datasets(params: Any, train_transform: Callable[[Image.Image], Any], labeled: bool) -> DatasetPair:
    """(train with ``train_transform``, validation with the eval transform) of any dataset."""
    name = _dataset_name(params)
    evaluate = build_eval_transform(params)
    if name == "synthetic":
        seed, size = _param(params, "data_seed"), params.synthetic_image_size
        return (SyntheticShapes(size, params.synthetic_train_size, seed, "train", train_transform),
                SyntheticShapes(size, params.synthetic_val_size, seed, "val", evaluate))
    if name in _TORCHVISION:
        train_split = "train+unlabeled" if name == "stl10" and not labeled else "train"
        return (_torchvision_dataset(params, train_split, train_transform),
                _torchvision_dataset(params, "test", evaluate))
    train, val = _folder_splits(params)
    if labeled:
        for index in (train, val):
            if not index.classes:
                raise DataError(f"image folder {index.root} has no class folders, but the linear probe needs labels "
                                "(expected <folder>/<class>/<image>)")
    skip = _param(params, "skip_corrupt_images")
    return ImageFileDataset(train.samples, train_transform, skip), ImageFileDataset(val.samples, evaluate, skip)


def pretrain_datasets(params: Any, view_transforms: Union[ViewTransform, Sequence[ViewTransform], None] = None
                      ) -> DatasetPair:
    """(train, validation) for pretraining. Train items are ``(views, label)`` (label -1 when unknown), one view per
    transform, or with :func:`uses_batched_views` ``(uint8 image [3, S, S], label)`` through
    :func:`build_stored_image_transform`; validation items ``(image, label)`` through :func:`build_eval_transform`.

    ``view_transforms``: None for :func:`build_view_transforms`, one callable applied to every view, or a list with
    one callable per view (num_global_crops + num_local_crops).
    """
    if uses_batched_views(params, view_transforms):
        return _split_datasets(params, build_stored_image_transform(params), labeled=False)
    return _split_datasets(params, _multi_view(params, view_transforms), labeled=False)


def eval_datasets(params: Any) -> DatasetPair:
    """(labelled train, labelled test) for the linear probe, both through :func:`build_eval_transform`."""
    return _split_datasets(params, build_eval_transform(params), labeled=True)


def _mixed_seed(*entropy: int) -> int:
    """A 64-bit seed that depends on every value of ``entropy`` (NumPy's SeedSequence hashing)."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1, dtype=np.uint64)[0])


def _world() -> Tuple[int, int]:
    """(number of processes, this process's rank); (1, 0) outside torch.distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def _rank_seed(seed: int) -> int:
    """``seed`` made distinct per distributed rank, so that ranks never draw the same augmentations."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return _mixed_seed(seed, torch.distributed.get_rank() if distributed else 0)


class EpochSampler(DistributedSampler):
    """This process's share of every epoch's sample order, a pure function of (``seed``, epoch), resumable mid-epoch.

    Epoch e's order is a permutation of the dataset drawn from (seed, e) (the identity without ``shuffle``), padded by
    repetition to a multiple of the number of processes W, as torch's DistributedSampler; process r takes the global
    positions r, r + W, r + 2W, ... Every global position also gets a seed drawn from (seed, e): items are pairs
    (dataset index, sample seed), which :class:`SeededSamples` turns into samples.

    ``set_epoch(e)`` (Lightning calls it before every epoch) selects the epoch of the next pass, and a pass without it
    is the next epoch. ``resume(e, consumed)`` makes the next pass of epoch e start at global position ``consumed``
    (it skips the positions that every process together has consumed), unless set_epoch selects another epoch.
    Being a DistributedSampler, Lightning keeps it under DDP instead of wrapping it in its own.
    """

    def __init__(self, dataset: Dataset, *, seed: int, shuffle: bool = True, num_replicas: int = 1,
                 rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0  # global position at which the next pass of self.epoch begins

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.start = epoch, 0

    def resume(self, epoch: int, consumed: int) -> None:
        self.epoch, self.start = epoch, consumed

    def plan(self, epoch: int) -> Tuple[Tensor, Tensor]:
        """(dataset index, sample seed) at every global position of ``epoch``: two int64 tensors [total_size]."""
        generator = torch.Generator().manual_seed(_mixed_seed(self.seed, epoch))
        size = len(self.dataset)  # type: ignore[arg-type]
        order = torch.randperm(size, generator=generator) if self.shuffle else torch.arange(size)
        order = order.repeat(math.ceil(self.total_size / max(size, 1)))[:self.total_size]
        return order, torch.randint(0, SAMPLE_SEED_HIGH, (self.total_size,), generator=generator)

    def __iter__(self) -> Any:
        epoch, start = self.epoch, self.start
        self.epoch, self.start = epoch + 1, 0
        order, seeds = self.plan(epoch)
        positions = torch.arange(self.rank, self.total_size, self.num_replicas)
        positions = positions[positions >= start]
        return iter(zip(order[positions].tolist(), seeds[positions].tolist()))


class SeededSamples(Dataset):
    """Items ``(index, seed)`` -> ``dataset[index]``, loaded with torch's (CPU), numpy's and Python's global RNGs
    seeded with ``seed``. The RNG states are restored after each batch (0.1 ms), so the loading process's own random
    streams (the training process's, with ``num_workers=0``) are left as they were."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: Tuple[int, int]) -> Any:
        return self.__getitems__([item])[0]

    def __getitems__(self, items: Sequence[Tuple[int, int]]) -> List[Any]:
        saved = torch.default_generator.get_state(), np.random.get_state(), random.getstate()
        try:
            samples = []
            for index, seed in items:
                torch.default_generator.manual_seed(seed)
                np.random.seed(seed % 2**32)
                random.seed(seed)
                samples.append(self.dataset[index])
            return samples
        finally:
            torch.default_generator.set_state(saved[0])
            np.random.set_state(saved[1])
            random.setstate(saved[2])


class ResumableLoader(DataLoader):
    """The training DataLoader: an :class:`EpochSampler` over :class:`SeededSamples`, with a position for checkpoints
    (``state_dict``: the epoch and how many global positions have been consumed; ``load_state_dict``, which
    longrun.ResumeState calls before a resumed run's first batch), so that a resumed epoch continues with the next
    unseen batch and the same views. Having ``state_dict`` also tells Lightning that the loader is resumable.

    Consumed means handed to the training loop, counted here rather than in the sampler, which workers read ahead of
    the training. A pass starts at its first ``next()`` (after Lightning's set_epoch), not at ``iter()``.
    """

    sampler: EpochSampler

    def __iter__(self) -> Any:
        sampler = self.sampler
        self._epoch, self._consumed = sampler.epoch, sampler.start  # what the sampler's pass starts from
        step = self.batch_size * sampler.num_replicas  # global positions per batch (all processes together)
        for batch in super().__iter__():
            self._consumed = min(self._consumed + step, sampler.total_size)
            yield batch

    def state_dict(self) -> Dict[str, int]:
        epoch, consumed = getattr(self, "_epoch", self.sampler.epoch), getattr(self, "_consumed", self.sampler.start)
        left = (self.sampler.total_size - consumed) // self.sampler.num_replicas  # per process
        if left < (self.batch_size if self.drop_last else 1):  # the epoch is over: the next one starts afresh
            epoch, consumed = epoch + 1, 0
        return {"epoch": epoch, "consumed": consumed}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.sampler.resume(state["epoch"], state["consumed"])
        self._epoch, self._consumed = state["epoch"], state["consumed"]


def make_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, drop_last: bool, num_workers: int,
                pin_memory: bool, seed: int = 0) -> DataLoader:
    """A DataLoader with persistent, prefetching workers and page-locked memory only where a GPU can use it.

    ``shuffle=True`` gives the training loader, a :class:`ResumableLoader` whose order and augmentations are functions
    of (``seed``, epoch, position) (module docstring) and which resumes mid-epoch; otherwise the samples come in order,
    and workers are seeded from ``seed`` and the rank."""
    workers = num_workers > 0
    settings: Dict[str, Any] = dict(
        batch_size=batch_size, drop_last=drop_last, num_workers=num_workers,
        pin_memory=pin_memory and torch.cuda.is_available(), persistent_workers=workers,
        prefetch_factor=PREFETCH_BATCHES_PER_WORKER if workers else None,
        generator=torch.Generator().manual_seed(_rank_seed(seed)),
    )
    if not shuffle:
        return DataLoader(dataset, shuffle=False, **settings)
    world, rank = _world()
    sampler = EpochSampler(dataset, seed=seed, num_replicas=world, rank=rank)
    return ResumableLoader(SeededSamples(dataset), sampler=sampler, **settings)
