"""Linear probe: a linear classifier trained on the frozen encoder of a pretraining checkpoint.

The encoder (``.model``) is frozen: no gradient, and eval mode for the whole run, so its BatchNorm layers normalize
with the pretraining statistics and never update them. Only ``.classifier`` (one ``nn.Linear``) trains, with SGD and
a step schedule (x0.1 at 60% and 80% of the epochs; lr 30, momentum 0.9, no weight decay, as MoCo's linear
evaluation). Both splits go through the deterministic evaluation transform of ``data.eval_datasets``. The command
line is ``selfsup-linear`` (selfsup.cli.linear).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Tuple, Union

import attrs
import torch
from pytorch_lightning.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from selfsup import data, distributed
from selfsup.eval import probes
from selfsup.eval.classifier import (
    CHECKPOINT_FIELDS,
    CLASSIFIER_INIT_STD,
    CheckpointEncoderParams,
    EncoderClassifier,
    build_encoder,
    read_checkpoint,
)
from selfsup.options import build_attrs, option

# the names this module offered before the classifier's shared parts moved to eval/classifier.py
__all__ = ["CHECKPOINT_FIELDS", "CLASSIFIER_INIT_STD", "LR_MILESTONES", "LinearClassifierMethod",
           "LinearClassifierMethodParams", "ProbeOptions", "build_encoder", "make_linear_params", "read_checkpoint"]

LR_MILESTONES = (0.6, 0.8)  # fractions of the epochs after which the learning rate is divided by 10


@attrs.frozen(kw_only=True, slots=False)
class ProbeOptions:
    """Probe training"""

    batch_size: int = option(256, "images (or feature rows) per device per step", low=1)
    drop_last_batch: bool = option(True, "drop the incomplete last training batch (a training set smaller than one "
                                         "batch trains on it whole)")
    precompute_features: bool = option(False, "encode both splits once, then train on the features: the same "
                                              "result (the transform is deterministic), many times faster on CPU; "
                                              "the features (N x embedding_dim floats) stay in host memory")
    lr: float = option(30.0, "SGD learning rate (MoCo's linear evaluation), x0.1 at 60% and 80% of the epochs",
                       low=0, low_open=True)
    momentum: float = option(0.9, "SGD momentum", low=0, high=1)
    weight_decay: float = option(0.0, "L2 weight decay of the classifier", low=0)
    standardize_features: bool = option(False, "standardize the features by a BatchNorm without affine parameters "
                                               "before the linear layer (MAE's and MoCo v3's linear probe; MoCo's, "
                                               "the default, has none)")
    max_epochs: int = option(100, "probe training length; the step schedule follows the Trainer's max_epochs when "
                                  "set", low=1)


@attrs.frozen(kw_only=True, slots=False)
class LinearClassifierMethodParams(ProbeOptions, CheckpointEncoderParams):  # attrs: last base first
    """All knobs of :class:`LinearClassifierMethod`: the encoder and data fields of the pretraining run (they mean
    what they mean in ModelParams; from_moco_checkpoint takes them from the checkpoint) and the probe's own."""


def make_linear_params(
    params: Union[LinearClassifierMethodParams, Mapping[str, Any], None] = None, **overrides: Any
) -> LinearClassifierMethodParams:
    """Validated params from params, a dict of fields, or keywords; an unknown name raises ``ValueError``."""
    return build_attrs(LinearClassifierMethodParams, params, **overrides)


class LinearClassifierMethod(EncoderClassifier):
    """A linear classifier (``.classifier``) on a frozen encoder (``.model``), configured by
    :class:`LinearClassifierMethodParams`; usually built with :meth:`from_moco_checkpoint`.

    Construct with ``LinearClassifierMethod(params)``, ``LinearClassifierMethod(params, lr=1.0)``, a dict of fields or
    keywords. ``method(x)`` returns class logits of images [B, 3, H, W]. With ``precompute_features`` the datasets
    become the frozen features (float32, host memory: N x embedding_dim), computed once on the module's device at the
    first dataloader request (or given with :meth:`use_features`); under DDP every process computes them.
    """

    params_type = LinearClassifierMethodParams
    params: LinearClassifierMethodParams

    def __init__(
        self, params: Union[LinearClassifierMethodParams, Mapping[str, Any], None] = None, **overrides: Any
    ) -> None:
        super().__init__(params, **overrides)
        self.batch_size = self.params.batch_size
        self.drop_last_batch = self.params.drop_last_batch
        self.model.requires_grad_(False)
        self.model.eval()
        # The training and validation steps see images, or already the encoder's features.
        self._batch_features: Callable[[Tensor], Tensor] = (distributed.identity if self.params.precompute_features
                                                            else self.encode)
        self.standardize: nn.Module = (nn.BatchNorm1d(self.params.embedding_dim, affine=False)
                                       if self.params.standardize_features else nn.Identity())
        self.featurize = self._classifier_input
        self._features: Optional[Tuple[TensorDataset, TensorDataset]] = None

    def train(self, mode: bool = True) -> "LinearClassifierMethod":
        """Lightning calls ``train()`` at every epoch start; the frozen encoder stays in eval mode regardless."""
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Frozen encoder features [B, embedding_dim] of images [B, 3, H, W]."""
        return self.model(x)

    def _classifier_input(self, batch: Tensor) -> Tensor:
        return self.standardize(self._batch_features(batch))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits [B, num_classes] of images [B, 3, H, W]."""
        return self.classifier(self.standardize(self.encode(x)))

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
    def knn_accuracy(self, k: int = probes.KNN_K, temperature: float = probes.KNN_TEMPERATURE) -> float:
        """Weighted-kNN top-1 in percent (probes.knn_accuracy, by default k=200, T=0.1) of the frozen features: the
        labelled training set is the bank, the test set the queries. Computed on the module's device."""
        (bank, bank_labels), (queries, query_labels) = (split.tensors for split in self.feature_datasets())
        return probes.knn_accuracy(bank.to(self.device), bank_labels, queries, query_labels, k, temperature)

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

    def use_features(self, train: TensorDataset, test: TensorDataset) -> None:
        """Train and test on these (features, labels) instead of extracting them (features shared by several probes,
        a labelled subset); needs ``precompute_features``."""
        if not self.params.precompute_features:
            raise ValueError("use_features: the probe trains on images; build it with precompute_features=True")
        self._features = (train, test)

    def _datasets(self) -> Tuple[Dataset, Dataset]:
        return self.feature_datasets() if self.params.precompute_features else self.image_datasets()
