"""Image files: reading any image as RGB, indexing image folders (class folders or flat), held-out splits, and the
dataset of a list of files.

Corrupt images are detected when decoded, not when the folder is indexed: decoding every header at every start would
take minutes on ImageNet (docs/benchmarks.md, "Measurements behind defaults") and would still miss truncated files.
An unreadable file raises :class:`DataError` naming it; with ``skip_corrupt`` the next readable image of the list is
returned instead and a :class:`CorruptImageWarning` names the file and the running count of skipped files of that
process.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import attr
import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

Sample = Tuple[str, int]  # (image path, label)

UNLABELED = -1  # label of images without a class (STL-10 unlabeled split, flat image folders)
SIZE_PROBE_IMAGES = 8  # images inspected to choose an image folder's default crop


class DataError(RuntimeError):
    """Missing, empty, unreadable or undownloadable data; the message names the path or file and what was expected."""


class CorruptImageWarning(UserWarning):
    """An unreadable image was skipped (``skip_corrupt_images=True``)."""


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


def require_dir(directory: str, what: str) -> None:
    if not os.path.isdir(directory):
        raise DataError(f"{what}: folder {directory} does not exist (set data_path or env DATA_PATH to the folder "
                        "that contains it)")


def class_folders(directory: str) -> List[str]:
    """Sorted class folder names of an image folder ([] for a flat folder of images)."""
    require_dir(directory, "image folder")
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
    subdirs = class_folders(directory)
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


def probe_images(directory: str, classes: Sequence[str]) -> List[str]:
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


def median_short_side(paths: Sequence[str], skip_corrupt: bool) -> int:
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
                 skip_corrupt: bool = False, classes: Sequence[str] = ()) -> None:
        if not samples:
            raise DataError("ImageFileDataset: no image files given")
        self.samples = list(samples)
        self.classes = list(classes)  # label i is classes[i]; [] for unlabeled images
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
