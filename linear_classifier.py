"""Linear probe: a linear classifier trained on the frozen encoder of a pretraining checkpoint.

    python linear_classifier.py --checkpoint example.ckpt [--max_epochs N] [--data_path P] [--precompute_features true]

prints the final top-1 / top-5 test accuracy of the probe and the weighted-kNN accuracy of the frozen features
(training set as the bank, test set as the queries). Every :class:`LinearClassifierMethodParams` field is a flag of
the same name; fields not given come from the checkpoint (encoder and data) or the defaults (optimization).

The encoder (``.model``) is frozen: no gradient, and eval mode for the whole run, so its BatchNorm layers normalize
with the pretraining statistics and never update them. Only ``.classifier`` (one ``nn.Linear``) trains, with SGD and
a step schedule (x0.1 at 60% and 80% of the epochs; lr 30, momentum 0.9, no weight decay, as MoCo's linear
evaluation). Both splits go through the deterministic evaluation transform of ``data.eval_datasets``.
"""

from __future__ import annotations

import argparse
import difflib
import os
import typing
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import attr
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import components
import data
import evaluation
import model_params
import utils
from train import add_field, parse_devices

LR_MILESTONES = (0.6, 0.8)  # fractions of the epochs after which the learning rate is divided by 10
CLASSIFIER_INIT_STD = 0.01  # normal init of the linear layer's weights (bias 0), as MoCo's linear evaluation
_SHARED = attr.fields_dict(model_params.ModelParams)


def _shared(name: str) -> Any:
    """A field with the same meaning and default as the ModelParams field ``name``."""
    return attr.ib(default=_SHARED[name].default)


@attr.s(auto_attribs=True, frozen=True, kw_only=True)
class LinearClassifierMethodParams:
    """All knobs of :class:`LinearClassifierMethod`; encoder and data fields mean what they mean in ModelParams."""

    # --- encoder (from_moco_checkpoint takes these from the checkpoint) ------------------------------------------
    encoder_arch: str = _shared("encoder_arch")  # torchvision classification model name, or ws_resnet*
    encoder_layer: Optional[str] = _shared("encoder_layer")  # representation = output of this encoder submodule
    use_cifar_stem: Optional[bool] = _shared("use_cifar_stem")  # 3x3/stride-1 stem; None = on for images <= 64 px
    embedding_dim: int = _shared("embedding_dim")  # width of the encoder output = input width of the classifier

    # --- data (from the checkpoint unless overridden) -------------------------------------------------------------
    dataset_name: str = _shared("dataset_name")  # labelled train / test splits of this dataset (data.eval_datasets)
    data_path: Optional[str] = _shared("data_path")  # dataset root; None = env DATA_PATH, then the working directory
    transform_crop_size: Optional[int] = _shared("transform_crop_size")  # evaluation crop; None = dataset default
    synthetic_image_size: int = _shared("synthetic_image_size")  # "synthetic": side of the images in px
    synthetic_train_size: int = _shared("synthetic_train_size")  # "synthetic": training images
    synthetic_val_size: int = _shared("synthetic_val_size")  # "synthetic": test images
    data_seed: int = _shared("data_seed")  # synthetic images and held-out splits (as in pretraining)
    holdout_fraction: float = _shared("holdout_fraction")  # "imagefolder" without val/: held-out fraction of train
    skip_corrupt_images: bool = _shared("skip_corrupt_images")  # skip unreadable images instead of raising
    num_data_workers: int = _shared("num_data_workers")  # DataLoader worker processes per device
    pin_data_memory: bool = _shared("pin_data_memory")  # page-locked host memory for host-to-GPU copies

    # --- probe training ---------------------------------------------------------------------------------------------
    batch_size: int = 256  # images (or feature rows) per device per step
    drop_last_batch: bool = True  # drop the incomplete last training batch
    precompute_features: bool = False  # encode both splits once, then train on the features (same result, faster)
    lr: float = 30.0  # SGD learning rate before the steps at 60% and 80% of the epochs
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 0.0  # L2 weight decay of the classifier
    max_epochs: int = 100  # probe training length; the step schedule follows the Trainer's max_epochs when set

    def __attrs_post_init__(self) -> None:
        validate_linear_params(self)


# What from_moco_checkpoint copies from a pretraining checkpoint: the encoder's definition and where the data is.
CHECKPOINT_FIELDS = (
    "encoder_arch",
    "encoder_layer",
    "use_cifar_stem",
    "embedding_dim",
    "dataset_name",
    "data_path",
    "transform_crop_size",
    "synthetic_image_size",
    "synthetic_train_size",
    "synthetic_val_size",
    "data_seed",
    "holdout_fraction",
    "skip_corrupt_images",
    "num_data_workers",
    "pin_data_memory",
)


def _fail(field: str, message: str) -> None:
    raise ValueError(f"LinearClassifierMethodParams.{field}: {message}")


def validate_linear_params(p: LinearClassifierMethodParams) -> None:
    """Raise ``ValueError`` naming the field for an invalid value; called at construction."""
    choices = (
        ("encoder_arch", model_params.encoder_archs(), "a torchvision classification model name or ws_resnet*"),
        ("dataset_name", model_params.DATASETS, "one of " + ", ".join(map(repr, model_params.DATASETS))),
    )
    for field, allowed, expected in choices:
        if getattr(p, field) not in allowed:
            close = difflib.get_close_matches(str(getattr(p, field)), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            _fail(field, f"got {getattr(p, field)!r}; expected {expected}{hint}")
    minimums = dict(
        embedding_dim=1,
        synthetic_image_size=1,
        synthetic_train_size=1,
        synthetic_val_size=1,
        batch_size=1,
        max_epochs=1,
        num_data_workers=0,
        weight_decay=0,
    )
    if p.transform_crop_size is not None:
        minimums["transform_crop_size"] = 1
    for field, low in minimums.items():
        if getattr(p, field) < low:
            _fail(field, f"got {getattr(p, field)!r}; expected a value >= {low}")
    if not p.lr > 0:
        _fail("lr", f"got {p.lr!r}; expected a value > 0")
    if not 0 <= p.momentum <= 1:
        _fail("momentum", f"got {p.momentum!r}; expected a value in [0, 1]")
    if not 0 < p.holdout_fraction <= 1:
        _fail("holdout_fraction", f"got {p.holdout_fraction!r}; expected a value in (0, 1]")


def make_linear_params(
    params: Union[LinearClassifierMethodParams, Mapping[str, Any], None] = None, **overrides: Any
) -> LinearClassifierMethodParams:
    """Validated params from params, a dict of fields, or keywords; an unknown name raises ``ValueError``."""
    return model_params.build_attrs(LinearClassifierMethodParams, params, **overrides)


def build_encoder(params: Any) -> nn.Module:
    """The encoder of SelfSupervisedMethod for these params (randomly initialised), its width checked."""
    encoder = utils.get_encoder(params.encoder_arch, data.uses_cifar_stem(params))
    return utils.use_channels_last(
        utils.with_representation(encoder, params.encoder_layer, data.crop_size(params), params.embedding_dim)
    )


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
        self.featurize: Callable[[Tensor], Tensor] = components.identity if params.precompute_features else self.encode
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
        if fields.get("use_cifar_stem") is None:
            # The stem is part of the pretrained weights: resolve it with the pretraining dataset, whatever the probe's.
            located = {name: overrides[name] for name in ("data_path",) if name in overrides}
            fields["use_cifar_stem"] = data.uses_cifar_stem(make_linear_params(fields, **located))
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
        acc1, acc5 = utils.topk_accuracy(logits, y)
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

    def configure_optimizers(self) -> Dict[str, Any]:
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
        """Weighted-kNN top-1 in percent (evaluation.knn_accuracy, k=200, T=0.1) of the frozen features: the
        labelled training set is the bank, the test set the queries. Computed on the module's device."""
        (bank, bank_labels), (queries, query_labels) = (split.tensors for split in self.feature_datasets())
        return evaluation.knn_accuracy(bank.to(self.device), bank_labels, queries, query_labels)

    @torch.no_grad()
    def _extract(self, dataset: Dataset) -> TensorDataset:
        features, labels = [], []
        for x, y in self._loader(dataset, shuffle=False, drop_last=False):
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


# --- command line ---------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="SelfSupervisedMethod checkpoint (train.py writes one)")
    parser.add_argument("--root_dir", default="runs/linear", help="directory for logs (default runs/linear)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the classifier initialization (default 0)")
    trainer = parser.add_argument_group("Trainer")
    trainer.add_argument("--accelerator", default="auto")
    trainer.add_argument("--devices", default="auto", help="number of devices, a list, or auto")
    trainer.add_argument("--strategy", default="auto", help="e.g. ddp")
    trainer.add_argument("--precision", default="32-true", help="e.g. 16-mixed, bf16-mixed (GPU)")
    trainer.add_argument("--limit_train_batches", type=float, default=None)
    trainer.add_argument("--limit_val_batches", type=float, default=None)
    fields = parser.add_argument_group("LinearClassifierMethodParams fields (override the checkpoint and defaults)")
    hints = typing.get_type_hints(LinearClassifierMethodParams)
    for field in attr.fields(LinearClassifierMethodParams):
        add_field(fields, field, hints[field.name])
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """Train the probe, print and return the final valid_acc1 / valid_acc5 and the kNN accuracy (rank zero)."""
    args = build_parser().parse_args(argv)
    pl.seed_everything(args.seed, workers=True)
    fields = attr.fields(LinearClassifierMethodParams)
    overrides = {f.name: getattr(args, f.name) for f in fields if hasattr(args, f.name)}
    method = LinearClassifierMethod.from_moco_checkpoint(args.checkpoint, **overrides)
    limits = {name: getattr(args, name) for name in ("limit_train_batches", "limit_val_batches")}
    trainer = pl.Trainer(
        max_epochs=method.params.max_epochs,
        default_root_dir=args.root_dir,
        accelerator=args.accelerator,
        devices=parse_devices(args.devices),
        strategy=args.strategy,
        precision=args.precision,
        enable_checkpointing=False,
        **{name: value for name, value in limits.items() if value is not None},
    )
    trainer.fit(method)
    results = {name: float(trainer.callback_metrics[name]) for name in ("valid_acc1", "valid_acc5")}
    if trainer.is_global_zero:
        method.to(trainer.strategy.root_device)
        results["knn_acc"] = method.knn_accuracy()
        print(
            f"linear probe: top-1 {results['valid_acc1']:.2f}%, top-5 {results['valid_acc5']:.2f}%; "
            f"kNN (k={evaluation.KNN_K}, T={evaluation.KNN_TEMPERATURE}) top-1 {results['knn_acc']:.2f}%"
        )
    return results


if __name__ == "__main__":
    main()
