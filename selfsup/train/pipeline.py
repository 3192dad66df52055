"""The data pipeline of a pretraining run, resolved once from ModelParams: the dataset's description and crop, the
views of each image, and where they are made (per image in the loader workers, or per batch on the training
device)."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Union

import attr
from PIL import Image

from selfsup import data
from selfsup.config.fields import ModelParams
from selfsup.data.views import ViewTransform

ViewTransforms = Union[ViewTransform, Sequence[ViewTransform], None]


@attr.s(auto_attribs=True, frozen=True)
class PretrainingData:
    info: data.DatasetInfo
    crop: int  # side of the global views in px
    stored_side: int  # side of the square images the batched views are cropped from
    views: List[data.ViewSpec]
    train_transform: Callable[[Image.Image], Any]  # what the loader does to each training image
    batch_views: Optional[data.BatchedViews]  # what makes the views of a batch on the device, if the loader does not


def uses_batched_views(p: ModelParams, view_transforms: ViewTransforms) -> bool:
    """Whether the views are made from uint8 batches on the training device (augmentation_backend "batched"); custom
    ``view_transforms`` are PIL callables, so they always run per image in the DataLoader."""
    return p.augmentation_backend == "batched" and view_transforms is None


def pretraining_data(p: ModelParams, view_transforms: ViewTransforms = None) -> PretrainingData:
    """The pipeline of ``p``: with batched views the loader yields uint8 images of ``stored_image_size`` and
    BatchedViews makes the views; otherwise the loader applies one PIL transform per view (``view_transforms``: one
    callable for every view or one per view; None for the built-in ones)."""
    info = data.dataset_info(p)
    crop = data.crop_size(p, info)
    views = data.view_specs(p, crop)
    side = data.stored_image_size(info, crop)
    if uses_batched_views(p, view_transforms):
        transform = data.build_stored_image_transform(side)
        batch_views = data.BatchedViews(views, info.mean, info.std, p.seed)
        return PretrainingData(info, crop, side, views, transform, batch_views)
    what = f"num_global_crops={p.num_global_crops} + num_local_crops={p.num_local_crops}"
    transforms = data.build_view_transforms(views, info.mean, info.std) if view_transforms is None else view_transforms
    return PretrainingData(info, crop, side, views, data.multi_view(transforms, len(views), what), None)


def pretrain_datasets(p: ModelParams, view_transforms: ViewTransforms = None) -> data.sources.DatasetPair:
    """(train, validation) datasets of a pretraining run: train items ``(views or uint8 image, label)``, validation
    items ``(image, label)`` (data.pretrain_datasets)."""
    return data.pretrain_datasets(p, pretraining_data(p, view_transforms).train_transform)


def view_transforms(p: ModelParams) -> List[ViewTransform]:
    """The per-image (PIL) transform of each view of ``p``, whatever its augmentation_backend."""
    info = data.dataset_info(p)
    return data.build_view_transforms(data.view_specs(p, data.crop_size(p, info)), info.mean, info.std)


def batch_views(p: ModelParams, channels_last: bool = False) -> data.BatchedViews:
    """The batched views of ``p``, whatever its augmentation_backend."""
    info = data.dataset_info(p)
    return data.BatchedViews(data.view_specs(p, data.crop_size(p, info)), info.mean, info.std, p.seed, channels_last)
