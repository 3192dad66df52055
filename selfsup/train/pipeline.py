"""The data pipeline of a pretraining run, resolved once from ModelParams: the dataset's description and crop, the
views of each image, and where they are made (per image in the loader workers, or per batch on the training
device)."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Union

import attr
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import Dataset

from selfsup import data
from selfsup.config.params import ModelParams
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


class PretrainingDataModule(pl.LightningDataModule):
    """The data of a pretraining run as Lightning hooks: the datasets and seeded, resumable loaders of ``params``,
    the decoding of encoded batches on the device (decode_on_device) and the batched views made after the transfer.
    SelfSupervisedMethod delegates its data hooks here; any other LightningModule trains on the same views with
    ``trainer.fit(module, datamodule=PretrainingDataModule(params))`` (benchmarks/peers.py does).

    ``view_transforms`` (per-image PIL callables) or ``train_dataset`` / ``val_dataset`` (finished views) replace the
    built-in pipeline."""

    def __init__(self, params: ModelParams, view_transforms: ViewTransforms = None,
                 train_dataset: Optional[Dataset] = None, val_dataset: Optional[Dataset] = None) -> None:
        super().__init__()
        self.params = params
        self.pipeline = pretraining_data(params, view_transforms)
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        # augmentation_backend "batched": the loader yields uint8 images and on_after_batch_transfer makes the views on
        # the training device; custom view transforms or datasets deliver finished views (None: nothing to do).
        self.batch_views = self.pipeline.batch_views if train_dataset is None else None
        self.decode_on_device = False  # resolved in setup, when the device is known
        self.owns_datasets = train_dataset is None

    def prepare_data(self) -> None:
        if self.owns_datasets:  # downloads once, on one process per node
            data.pretrain_datasets(self.params, self.pipeline.train_transform)

    def setup(self, stage: str) -> None:
        if self.owns_datasets and self.train_dataset is None:
            # On a CPU device the loader workers decode, in parallel: decoding in the training process would be slower.
            self.decode_on_device = (self.params.decode_on_device and self.batch_views is not None
                                     and self.trainer is not None and self.trainer.strategy.root_device.type != "cpu")
            self.train_dataset, self.val_dataset = data.pretrain_datasets(
                self.params, self.pipeline.train_transform, encoded=self.decode_on_device)

    def train_dataloader(self) -> Any:
        assert self.train_dataset is not None
        p = self.params
        return data.make_loader(self.train_dataset, batch_size=p.batch_size, shuffle=True, drop_last=p.drop_last_batch,
                                num_workers=p.num_data_workers, pin_memory=p.pin_data_memory, seed=p.seed,
                                collate_fn=data.collate_encoded if self.decode_on_device else None)

    def val_dataloader(self) -> Any:
        if self.val_dataset is None:
            return []
        p = self.params
        return data.make_loader(self.val_dataset, batch_size=p.batch_size, shuffle=False, drop_last=False,
                                num_workers=p.num_data_workers, pin_memory=p.pin_data_memory, seed=p.data_seed)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Batches of encoded files are decoded on ``device`` (decode_on_device); others move as usual."""
        if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], data.EncodedImages):
            return data.decode_batch(batch[0].data, self.pipeline.stored_side, device), batch[1].to(device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training batches of uint8 images [B, 3, S, S] become their views here, on the device (batch_views);
        validation batches pass unchanged, so the probes stay deterministic."""
        if self.batch_views is None or self.trainer is None or not self.trainer.training:
            return batch
        images, labels = batch
        return self.batch_views(images, self.trainer.global_step, self.trainer.global_rank), labels


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
