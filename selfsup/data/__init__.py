"""Data: datasets by name (``sources``), image folders (``files``), synthetic images (``synthetic``), the views of
an image per image (``views``, PIL) or per batch on the training device (``batched``), and resumable loaders
(``loaders``); ``sources`` and ``views`` also declare the option groups they read (DataSourceOptions, ViewOptions).
Functions here take resolved values or option groups, never the whole params object."""

from selfsup.data.batched import BatchedViews
from selfsup.data.decode import EncodedFileDataset, EncodedImages, collate_encoded, decode_batch
from selfsup.data.files import (
    UNLABELED,
    CorruptImageWarning,
    DataError,
    FolderIndex,
    ImageFileDataset,
    holdout_split,
    index_image_folder,
    load_rgb,
    to_rgb,
)
from selfsup.data.loaders import EpochSampler, ResumableLoader, SeededSamples, make_loader
from selfsup.data.sources import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DATASETS,
    FILE_DATASETS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    STL10_MEAN,
    STL10_STD,
    DatasetInfo,
    DataSourceOptions,
    cifar_stem,
    crop_size,
    dataset_info,
    dataset_labels,
    eval_datasets,
    eval_transform,
    finetune_datasets,
    finetune_transform,
    pretrain_datasets,
    resolve_data_path,
    stored_image_size,
)
from selfsup.data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_MEAN, SYNTHETIC_STD, SyntheticShapes
from selfsup.data.views import (
    AUGMENTATION_BACKENDS,
    BLUR_SIGMA,
    GRAYSCALE_P,
    JITTER_P,
    TRANSFORM_TYPES,
    GaussianBlur,
    MultiView,
    Photometric,
    ViewOptions,
    ViewSpec,
    blur_kernel_size,
    build_eval_transform,
    build_stored_image_transform,
    build_view_transforms,
    local_crop_size,
    multi_view,
    photometric_settings,
    view_specs,
    view_transform,
)

__all__ = [
    "AUGMENTATION_BACKENDS", "BLUR_SIGMA", "BatchedViews", "EncodedFileDataset", "EncodedImages", "FILE_DATASETS",
    "collate_encoded", "decode_batch", "CIFAR10_MEAN", "CIFAR10_STD", "CorruptImageWarning",
    "DATASETS", "DataError", "DataSourceOptions", "DatasetInfo", "EpochSampler", "FolderIndex", "GRAYSCALE_P",
    "GaussianBlur",
    "IMAGENET_MEAN", "IMAGENET_STD", "ImageFileDataset", "JITTER_P", "MultiView", "Photometric", "ResumableLoader",
    "STL10_MEAN", "STL10_STD", "SYNTHETIC_CLASSES", "SYNTHETIC_MEAN", "SYNTHETIC_STD", "SeededSamples",
    "SyntheticShapes", "TRANSFORM_TYPES", "UNLABELED", "ViewOptions", "ViewSpec", "blur_kernel_size",
    "build_eval_transform",
    "build_stored_image_transform", "build_view_transforms", "cifar_stem", "crop_size", "dataset_info",
    "dataset_labels", "eval_datasets", "eval_transform", "finetune_datasets", "finetune_transform",
    "holdout_split", "index_image_folder", "load_rgb", "local_crop_size",
    "make_loader", "multi_view", "photometric_settings", "pretrain_datasets", "resolve_data_path",
    "stored_image_size", "to_rgb", "view_specs", "view_transform",
]
