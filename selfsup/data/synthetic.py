"""Synthetic shapes: 10 classes of shapes and textures rendered per index, so every process and every run sees the
same images without files or downloads."""

from __future__ import annotations

import math
from typing import Any, Callable, List, Tuple

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

# SyntheticShapes, measured over 32768 images (4 seeds, 32 px; sizes differ by < 0.01): the mean is 0.5 by symmetry
# (colours are uniform), and green varies most because the luminance-contrast rule weighs it most.
SYNTHETIC_MEAN = (0.5, 0.5, 0.5)
SYNTHETIC_STD = (0.293, 0.305, 0.292)


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

    @property
    def classes(self) -> List[str]:
        """Label i is the shape or texture classes[i]."""
        return [name for name, _, _ in SYNTHETIC_CLASSES]

    def image(self, index: int) -> Tuple[Image.Image, int]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} synthetic images")
        label = index % len(SYNTHETIC_CLASSES)
        rng = np.random.default_rng([self.seed, _SYNTHETIC_SPLITS[self.split], index])
        return Image.fromarray(render_synthetic(label, self.size, rng)), label

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        image, label = self.image(index)
        return self.transform(image), label
