"""Linear probe: a linear classifier trained on the frozen encoder of a pretraining checkpoint.

The encoder (``.model``) is frozen: no gradient, and eval mode for the whole run, so its BatchNorm layers normalize
with the pretraining statistics and never update them. Only ``.classifier`` (one ``nn.Linear``) trains, with SGD and
a step schedule (x0.1 at 60% and 80% of the epochs; lr 30, momentum 0.9, no weight decay, as MoCo's linear
evaluation). Both splits go through the deterministic evaluation transform of ``data.eval_datasets``. The command
line is ``selfsup-linear`` (selfsup.cli.linear).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import attr
import attrs
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from selfsup import data, distributed
from selfsup.data.sources import DataSourceOptions
from selfsup.eval import probes
from selfsup.nn.backbones import (
    EncoderOptions,
    check_encoder_options,
    make_encoder,
    use_channels_last,
    with_representation,
)
from selfsup.nn.vit import is_timm
from selfsup.options import build_attrs, check_fields, option

LR_MILESTONES = (0.6, 0.8)  # fractions of the epochs after which the learning rate is divided by 10
CLASSIFIER_INIT_STD = 0.01  # normal init of the linear layer's weights (bias 0), as MoCo's linear evaluation


@attrs.frozen(kw_only=True, slots=False)
class ProbeOptions:
    """Probe training"""

    batch_size: int = option(256, "images (or feature rows) per device per step", low=1)
    drop_last_batch: bool = option(True, "drop the incomplete last training batch")
    precompute_features: bool = option(False, "encode both splits once, then train on the features: the same "
                                              "result (the transform is deterministic), many times faster on CPU; "
                                              "the features (N x embedding_dim floats) stay in host memory")
    lr: float = option(30.0, "SGD learning rate (MoCo's linear evaluation), x0.1 at 60% and 80% of the epochs",
                       low=0, low_open=True)
    momentum: float = option(0.9, "SGD momentum", low=0, high=1)
    weight_decay: float = option(0.0, "L2 weight decay of the classifier", low=0)
    max_epochs: int = option(100, "probe training length; the step schedule follows the Trainer's max_epochs when "
                                  "set", low=1)


@attrs.frozen(kw_only=True, slots=False)
class LinearClassifierMethodParams(ProbeOptions, DataSourceOptions, EncoderOptions):  # attrs: last base first
    """All knobs of :class:`LinearClassifierMethod`: the encoder and data fields of the pretraining run (they mean
    what they mean in ModelParams; from_moco_checkpoint takes them from the checkpoint) and the probe's own."""

    def __attrs_post_init__(self) -> None:
        check_fields(self)
        check_encoder_options(self)


# What from_moco_checkpoint copies from a pretraining checkpoint: the encoder's definition and where the data is.
CHECKPOINT_FIELDS = tuple(f.name for f in (*attr.fields(EncoderOptions), *attr.fields(DataSourceOptions)))


def make_linear_params(
    params: Union[LinearClassifierMethodParams, Mapping[str, Any], None] = None, **overrides: Any
) -> LinearClassifierMethodParams:
    """Validated params from params, a dict of fields, or keywords; an unknown name raises ``ValueError``."""
    return build_attrs(LinearClassifierMethodParams, params, **overrides)


def build_encoder(params: LinearClassifierMethodParams) -> nn.Module:
    """The encoder of SelfSupervisedMethod for these params (randomly initialised), its width checked."""
    info = data.dataset_info(params)
    crop = data.crop_size(params, info)
    encoder = make_encoder(params, data.cifar_stem(params.use_cifar_stem, info), crop)
    encoder = with_representation(encoder, params.encoder_layer, crop, params.embedding_dim)
    return use_channels_last(encoder) if params.channels_last else encoder


def read_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The dict of a Lightning checkpoint with ``state_dict`` and ``hyper_parameters`` (tensors on the CPU)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"checkpoint {path}: not a readable PyTorch checkpoint ({error})") from error
    required = {"state_dict", "hyper_parameters"}
    if not isinstance(checkpoint, dict) or not required <= checkpoint.keys():
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(
            f"checkpoint {path}: expected a checkpoint of SelfSupervisedMethod written by trainer.save_checkpoint, "
            f"with keys {sorted(required)}; found {found}"
        )
    return checkpoint


def _listing(names: List[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class LinearClassifierMethod(pl.LightningModule):
    """A linear classifier (``.classifier``) on a frozen encoder (``.model``), configured by
    :class:`LinearClassifierMethodParams`; usually built with :meth:`from_moco_checkpoint`.

    Construct with ``LinearClassifierMethod(params)``, ``LinearClassifierMethod(params, lr=1.0)``, a dict of fields or
    keywords. ``method(x)`` returns class logits of images [B, 3, H, W]. With ``precompute_features`` the datasets
    become the frozen features (float32, host memory: N x embedding_dim), computed once on the module's device at the
    first dataloader request; under DDP every process computes them.
    """

    def __init__(
        self, params: Union[LinearClassifierMethodParams, Mapping[str, Any], None] = None, **overrides: Any
    ) -> None:
        super().__init__()
        params = make_linear_params(params, **overrides)
        self.params = params
        self.save_hyperparameters(attr.asdict(params))
        num_classes = data.dataset_info(params).num_classes
        if num_classes is None:
            raise ValueError(f"dataset_name {params.dataset_name!r} at {data.resolve_data_path(params)} has no class "
                             "folders; the linear probe needs labels")
        self.model = build_encoder(params)
        self.model.requires_grad_(False)
        self.model.eval()
        self.classifier = nn.Linear(params.embedding_dim, num_classes)
        nn.init.normal_(self.classifier.weight, std=CLASSIFIER_INIT_STD)
        nn.init.zeros_(self.classifier.bias)
        # The training and validation steps see images, or already the encoder's features.
        self.featurize: Callable[[Tensor], Tensor] = distributed.identity if params.precompute_features else self.encode
        self._images: Optional[Tuple[Dataset, Dataset]] = None
        self._features: Optional[Tuple[TensorDataset, TensorDataset]] = None

    @classmethod
    def from_moco_checkpoint(cls, path: Union[str, os.PathLike], **overrides: Any) -> "LinearClassifierMethod":
        """A probe on the encoder of a SelfSupervisedMethod checkpoint (any preset).

        The encoder architecture, stem, representation layer, dataset (hence normalization and crop) and data
        location come from the checkpoint's hyperparameters; ``overrides`` replace any field. Only the encoder
        weights (state_dict keys ``model.*``) are loaded, strictly: missing, unexpected or differently shaped keys
        raise ``ValueError`` naming the checkpoint and the keys.
        """
        checkpoint = read_checkpoint(path)
        hparams = checkpoint["hyper_parameters"]
        if "encoder_arch" not in hparams:
            raise ValueError(f"checkpoint {path}: its hyperparameters have no encoder_arch; expected a checkpoint of "
                             f"SelfSupervisedMethod (found {_listing(sorted(hparams))})")
        fields = {name: hparams[name] for name in CHECKPOINT_FIELDS if name in hparams}
        if fields.get("use_cifar_stem") is None and not is_timm(fields["encoder_arch"]):
            # The stem is part of the pretrained weights: resolve it with the pretraining dataset, whatever the probe's.
            located = {name: overrides[name] for name in ("data_path",) if name in overrides}
            located_params = make_linear_params(fields, **located)
            fields["use_cifar_stem"] = data.cifar_stem(None, data.dataset_info(located_params))
        method = cls(make_linear_params(fields, **overrides))
        method.load_encoder_weights(checkpoint["state_dict"], str(path))
        return method

    def load_encoder_weights(self, state_dict: Mapping[str, Tensor], source: str) -> None:
        """Load the ``model.*`` entries of a SelfSupervisedMethod state dict into ``.model``, strictly."""
        prefix = "model."
        weights = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
        own = self.model.state_dict()
        missing = sorted(own.keys() - weights.keys())
        unexpected = sorted(weights.keys() - own.keys())
        shapes = [
            f"{prefix}{key} {tuple(weights[key].shape)} there, {tuple(own[key].shape)} here"
            for key in sorted(own.keys() & weights.keys())
            if weights[key].shape != own[key].shape
        ]
        if missing or unexpected or shapes:
            p = self.params
            problems = [
                f"missing keys: {_listing([prefix + k for k in missing])}" if missing else "",
                f"unexpected keys: {_listing([prefix + k for k in unexpected])}" if unexpected else "",
                f"different shapes: {_listing(shapes)}" if shapes else "",
            ]
            raise ValueError(
                f"checkpoint {source}: its encoder weights do not fit encoder_arch={p.encoder_arch!r}, "
                f"encoder_layer={p.encoder_layer!r}, use_cifar_stem={p.use_cifar_stem!r}; "
                + "; ".join(problem for problem in problems if problem)
            )
        self.model.load_state_dict(weights)

    # --- model -----------------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "LinearClassifierMethod":
        """Lightning calls ``train()`` at every epoch start; the frozen encoder stays in eval mode regardless."""
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Frozen encoder features [B, embedding_dim] of images [B, 3, H, W]."""
        return self.model(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits [B, num_classes] of images [B, 3, H, W]."""
        return self.classifier(self.encode(x))

    # --- training --------------------------------------------------------------------------------------------------
    def _scores(self, batch: Tuple[Tensor, Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        x, y = batch
        logits = self.classifier(self.featurize(x))
        acc1, acc5 = probes.topk_accuracy(logits, y)
        return F.cross_entropy(logits, y), acc1, acc5, y

    def training_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, acc1, acc5, y = self._scores(batch)
        self.log_dict(
            {"step_train_loss": loss.detach(), "step_train_acc1": acc1, "step_train_acc5": acc5}, batch_size=len(y)
        )
        return loss

    def validation_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, acc1, acc5, y = self._scores(batch)
        self.log_dict(
            {"valid_loss": loss, "valid_acc1": acc1, "valid_acc5": acc5},
            batch_size=len(y),
            on_epoch=True,
            sync_dist=True,
        )

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        p = self.params
        optimizer = torch.optim.SGD(
            self.classifier.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay
        )
        epochs = self.trainer.max_epochs if self.trainer.max_epochs not in (None, -1) else p.max_epochs
        milestones = [round(fraction * epochs) for fraction in LR_MILESTONES]
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # --- evaluation ------------------------------------------------------------------------------------------------
    def knn_accuracy(self) -> float:
        """Weighted-kNN top-1 in percent (probes.knn_accuracy, k=200, T=0.1) of the frozen features: the
        labelled training set is the bank, the test set the queries. Computed on the module's device."""
        (bank, bank_labels), (queries, query_labels) = (split.tensors for split in self.feature_datasets())
        return probes.knn_accuracy(bank.to(self.device), bank_labels, queries, query_labels)

    @torch.no_grad()
    def _extract(self, dataset: Dataset) -> TensorDataset:
        features, labels = [], []
        loader = self._loader(dataset, shuffle=False, drop_last=False)
        progress = data.loaders.with_progress(loader, len(dataset), "features",  # type: ignore[arg-type]
                                              enabled=distributed.rank() == 0)
        for x, y in progress:
            features.append(self.model(x.to(self.device)).float().cpu())
            labels.append(y)
        return TensorDataset(torch.cat(features), torch.cat(labels))

    def feature_datasets(self) -> Tuple[TensorDataset, TensorDataset]:
        """(train, test) frozen features and labels, computed once on the module's device and kept in host memory."""
        if self._features is None:
            train, test = self.image_datasets()
            self._features = (self._extract(train), self._extract(test))
        return self._features

    def image_datasets(self) -> Tuple[Dataset, Dataset]:
        """(labelled train, labelled test) images through the evaluation transform (data.eval_datasets)."""
        if self._images is None:
            self._images = data.eval_datasets(self.params)
        return self._images

    # --- data ------------------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        data.eval_datasets(self.params)  # downloads once, on one process per node

    def _loader(self, dataset: Dataset, *, shuffle: bool, drop_last: bool) -> DataLoader:
        p = self.params
        return data.make_loader(
            dataset,
            batch_size=p.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=0 if isinstance(dataset, TensorDataset) else p.num_data_workers,
            pin_memory=p.pin_data_memory,
            seed=p.data_seed,
        )

    def _datasets(self) -> Tuple[Dataset, Dataset]:
        return self.feature_datasets() if self.params.precompute_features else self.image_datasets()

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._datasets()[0], shuffle=True, drop_last=self.params.drop_last_batch)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._datasets()[1], shuffle=False, drop_last=False)
