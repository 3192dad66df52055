"""Datasets by name: where their files are, their default crop and normalization, and their splits for pretraining
and for the linear probe.

Datasets, chosen by ``dataset_name`` and read from ``data_path``, else env ``DATA_PATH``, else the working directory
(the "data path" below):

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
  (:func:`files.to_rgb`). The default crop is the median shorter side of up to 8 images spread over the classes,
  capped at 224 px: a folder of CIFAR-10 images gives 32 px crops, one of photos 224 px. Normalization uses ImageNet
  statistics.
- ``"synthetic"``: :class:`synthetic.SyntheticShapes`, 10 shape/texture classes rendered per index, no files;
  ``synthetic_image_size`` px (default crop), normalized with the measured SYNTHETIC_MEAN / SYNTHETIC_STD.
"""

from __future__ import annotations

import os
import tarfile
from typing import Any, Callable, Optional, Tuple

import attr
import attrs
import numpy as np
import torchvision
from PIL import Image
from torch.utils.data import Dataset, TensorDataset

from selfsup.data.decode import EncodedFileDataset
from selfsup.data.files import (
    DataError,
    FolderIndex,
    ImageFileDataset,
    class_folders,
    holdout_split,
    index_image_folder,
    median_short_side,
    probe_images,
    require_dir,
)
from selfsup.data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_MEAN, SYNTHETIC_STD, SyntheticShapes
from selfsup.data.views import EVAL_CENTER_CROP_FRACTION, build_eval_transform, build_finetune_transform
from selfsup.options import option

DatasetPair = Tuple[Dataset, Dataset]  # (train, validation or test)

DATASETS = ("stl10", "cifar10", "imagenet", "imagefolder", "synthetic", "shards")
FILE_DATASETS = ("imagenet", "imagefolder", "shards")  # the ones that store encoded image files
SMALL_IMAGE_MAX_SIDE = 64  # datasets with default crops up to this size use the CIFAR stem by default
MAX_FOLDER_CROP = 224  # an image folder's default crop never exceeds the ImageNet crop
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Pixel statistics of the training sets (the std is over all pixels, not the mean of per-image stds).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
STL10_MEAN = (0.4467, 0.4398, 0.4066)
STL10_STD = (0.2603, 0.2566, 0.2713)
_FIXED_SIZE_DATASETS = ("stl10", "cifar10", "synthetic")
_TORCHVISION = {"cifar10": torchvision.datasets.CIFAR10, "stl10": torchvision.datasets.STL10}


@attrs.frozen(kw_only=True, slots=False)
class DataSourceOptions:
    """Data source"""

    dataset_name: str = option("stl10", "'stl10', 'cifar10', 'imagenet', 'imagefolder' or 'synthetic' "
                                        "(docs/data.md)", choices=DATASETS)
    data_path: Optional[str] = option(None, "dataset root; None = env DATA_PATH, then the working directory")
    transform_crop_size: Optional[int] = option(None, "side of the global crops in px; None = the dataset's default",
                                                low=1)
    holdout_fraction: float = option(0.1, "'imagefolder' without a val/ folder: fraction of train held out for "
                                          "validation", low=0, high=1, low_open=True)
    skip_corrupt_images: bool = option(False, "skip unreadable images (and report how many) instead of raising")
    synthetic_image_size: int = option(32, "'synthetic': side of the generated images in px", low=1)
    synthetic_train_size: int = option(4096, "'synthetic': number of training images", low=1)
    synthetic_val_size: int = option(1024, "'synthetic': number of validation images", low=1)
    data_seed: int = option(0, "seed of the synthetic images, of held-out splits and of the validation probe's split",
                            low=0)
    num_data_workers: int = option(4, "DataLoader worker processes per device", low=0)
    pin_data_memory: bool = option(True, "page-locked host memory for faster host-to-GPU copies")


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


def resolve_data_path(source: DataSourceOptions) -> str:
    """Absolute data path: ``data_path``, else env ``DATA_PATH``, else the working directory."""
    configured = source.data_path or os.environ.get("DATA_PATH") or os.getcwd()
    return os.path.abspath(os.path.expanduser(configured))


def dataset_info(source: DataSourceOptions) -> DatasetInfo:
    """Crop size, normalization and class count of ``dataset_name`` (an image folder is inspected)."""
    name = source.dataset_name
    if name == "stl10":
        return DatasetInfo(name, 96, STL10_MEAN, STL10_STD, 10)
    if name == "cifar10":
        return DatasetInfo(name, 32, CIFAR10_MEAN, CIFAR10_STD, 10)
    if name == "imagenet":
        return DatasetInfo(name, 224, IMAGENET_MEAN, IMAGENET_STD, 1000)
    if name == "synthetic":
        return DatasetInfo(name, source.synthetic_image_size, SYNTHETIC_MEAN, SYNTHETIC_STD, len(SYNTHETIC_CLASSES))
    if name == "shards":
        from selfsup.data.shards import read_metadata  # litdata: the stream extra

        metadata = read_metadata(resolve_data_path(source))
        side = int(metadata["image_size"])
        return DatasetInfo(name, min(MAX_FOLDER_CROP, side), IMAGENET_MEAN, IMAGENET_STD,
                           len(metadata["classes"]) or None)
    if name != "imagefolder":
        raise ValueError(f"dataset_name: got {name!r}; expected one of {', '.join(map(repr, DATASETS))}")
    train_dir, _ = _imagefolder_dirs(source)
    classes = class_folders(train_dir)
    side = median_short_side(probe_images(train_dir, classes), source.skip_corrupt_images)
    return DatasetInfo(name, min(MAX_FOLDER_CROP, side), IMAGENET_MEAN, IMAGENET_STD, len(classes) or None)


def crop_size(source: DataSourceOptions, info: Optional[DatasetInfo] = None) -> int:
    """Side of the global crops: ``transform_crop_size``, or the dataset's default."""
    return source.transform_crop_size or (info or dataset_info(source)).image_size


def cifar_stem(use_cifar_stem: Optional[bool], info: DatasetInfo) -> bool:
    """Whether the encoder gets the CIFAR stem: ``use_cifar_stem``, or by default for datasets of <= 64 px."""
    return info.small_images if use_cifar_stem is None else use_cifar_stem


def stored_image_size(info: DatasetInfo, crop: int) -> int:
    """Side S of the un-augmented training images of augmentation_backend="batched", which the views are cropped
    from: the native side of the fixed-size datasets (at least the crop); for image folders the crop for small images,
    else crop / 0.875 (256 px for 224 px crops, as the evaluation resize), so that crops keep some margin."""
    if info.name in _FIXED_SIZE_DATASETS:
        return max(info.image_size, crop)
    return crop if info.small_images else round(crop / EVAL_CENTER_CROP_FRACTION)


def eval_transform(source: DataSourceOptions, info: Optional[DatasetInfo] = None) -> Callable[[Image.Image], Any]:
    """The deterministic evaluation transform of the dataset (views.build_eval_transform at its crop and
    normalization)."""
    info = info or dataset_info(source)
    return build_eval_transform(crop_size(source, info), info.small_images, info.mean, info.std)


def finetune_transform(source: DataSourceOptions, info: Optional[DatasetInfo] = None
                       ) -> Callable[[Image.Image], Any]:
    """The supervised training augmentation of the dataset (views.build_finetune_transform at its crop and
    normalization)."""
    info = info or dataset_info(source)
    return build_finetune_transform(crop_size(source, info), info.small_images, info.mean, info.std)


def _torchvision_dataset(source: DataSourceOptions, split: str, transform: Callable[[Image.Image], Any]) -> Dataset:
    """A torchvision dataset, downloaded when absent; a failed download explains how to provide the files."""
    name = source.dataset_name
    cls: Any = _TORCHVISION[name]
    root = resolve_data_path(source)
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


def _imagefolder_dirs(source: DataSourceOptions) -> Tuple[str, str]:
    """(<data path>/train, which must exist, <data path>/val, which may not) of "imagefolder"."""
    root = resolve_data_path(source)
    train_dir = os.path.join(root, "train")
    require_dir(train_dir, "imagefolder training images (<data_path>/train)")
    return train_dir, os.path.join(root, "val")


def folder_splits(source: DataSourceOptions) -> Tuple[FolderIndex, FolderIndex]:
    """(train, validation) indices of "imagenet" or "imagefolder"."""
    if source.dataset_name == "imagenet":
        root = os.path.join(resolve_data_path(source), "imagenet")
        train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
        require_dir(train_dir, "imagenet training images (<data_path>/imagenet/train/<class>/<image>)")
        require_dir(val_dir, "imagenet validation images (<data_path>/imagenet/val/<class>/<image>)")
    else:
        train_dir, val_dir = _imagefolder_dirs(source)
    train = index_image_folder(train_dir)
    if os.path.isdir(val_dir):
        return train, index_image_folder(val_dir, train.classes or None)
    return holdout_split(train, source.holdout_fraction, source.data_seed)


def _split_datasets(source: DataSourceOptions, train_transform: Callable[[Image.Image], Any],
                    labeled: bool, encoded: bool = False) -> DatasetPair:
    """(train with ``train_transform``, validation with the eval transform) of any dataset; with ``encoded`` the
    training items are the images' bytes (decode.py), for the file-based datasets."""
    name = source.dataset_name
    evaluate = eval_transform(source)
    if encoded and name not in FILE_DATASETS:
        raise ValueError(f"decoding on the device needs encoded image files ({', '.join(FILE_DATASETS)}), not "
                         f"dataset_name={name!r}")
    if name == "shards":
        from selfsup.data.shards import ShardDataset  # litdata: the stream extra

        root = resolve_data_path(source)
        shards = ShardDataset(root, "train", train_transform, encoded=encoded)
        if labeled and not shards.classes:
            raise DataError(f"shards at {root} have no classes, but the linear probe needs labels")
        return shards, ShardDataset(root, "val", evaluate)
    if name == "synthetic":
        seed, size = source.data_seed, source.synthetic_image_size
        return (SyntheticShapes(size, source.synthetic_train_size, seed, "train", train_transform),
                SyntheticShapes(size, source.synthetic_val_size, seed, "val", evaluate))
    if name in _TORCHVISION:
        train_split = "train+unlabeled" if name == "stl10" and not labeled else "train"
        return (_torchvision_dataset(source, train_split, train_transform),
                _torchvision_dataset(source, "test", evaluate))
    train, val = folder_splits(source)
    if labeled:
        for index in (train, val):
            if not index.classes:
                raise DataError(f"image folder {index.root} has no class folders, but the linear probe needs labels "
                                "(expected <folder>/<class>/<image>)")
    skip = source.skip_corrupt_images
    train_set: Dataset = (EncodedFileDataset(train.samples, train.classes) if encoded
                          else ImageFileDataset(train.samples, train_transform, skip, train.classes))
    return train_set, ImageFileDataset(val.samples, evaluate, skip, val.classes)


def pretrain_datasets(source: DataSourceOptions, train_transform: Callable[[Image.Image], Any],
                      encoded: bool = False) -> DatasetPair:
    """(train, validation) for pretraining: train items are ``(train_transform(image), label)`` (label -1 when
    unknown; STL-10 adds its unlabeled split), or with ``encoded`` ``(image file bytes, label)``; validation items
    ``(image, label)`` through :func:`eval_transform`."""
    return _split_datasets(source, train_transform, labeled=False, encoded=encoded)


def eval_datasets(source: DataSourceOptions) -> DatasetPair:
    """(labelled train, labelled test) for the linear probe, both through :func:`eval_transform`."""
    return _split_datasets(source, eval_transform(source), labeled=True)


def finetune_datasets(source: DataSourceOptions) -> DatasetPair:
    """(labelled train through :func:`finetune_transform`, labelled test through :func:`eval_transform`): the splits
    of :func:`eval_datasets`, for training the whole encoder."""
    return _split_datasets(source, finetune_transform(source), labeled=True)


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """The label of every item of ``dataset`` (int64 [N]), read without decoding images where the dataset knows them
    (image folders, synthetic images, shards, torchvision's CIFAR-10 and STL-10, tensors); otherwise by iterating
    it."""
    if isinstance(dataset, ImageFileDataset):
        return np.array([label for _, label in dataset.samples], dtype=np.int64)
    if isinstance(dataset, SyntheticShapes):
        return np.arange(len(dataset), dtype=np.int64) % len(SYNTHETIC_CLASSES)
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].numpy().astype(np.int64)
    item_labels = getattr(dataset, "item_labels", None)  # shards (litdata is optional, so not by type)
    if callable(item_labels):
        return item_labels()
    for attribute in ("targets", "labels"):  # CIFAR10, STL10
        known = getattr(dataset, attribute, None)
        if known is not None:
            return np.asarray(known, dtype=np.int64)
    return np.array([int(label) for _, label in dataset], dtype=np.int64)  # type: ignore[attr-defined]
