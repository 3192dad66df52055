"""A classifier on the encoder of a pretraining checkpoint: what the linear probe (eval/linear.py) and fine-tuning
(eval/finetune.py) share. Both read the encoder's definition and weights from a SelfSupervisedMethod checkpoint, put
one linear layer (``.classifier``) on the encoder (``.model``), train on the labelled training split and report top-1
/ top-5 on the test split; they differ in what trains, the training images and the optimizer.
"""

from __future__ import annotations

import os
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Tuple, Type, TypeVar, Union

import attr
import attrs
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from selfsup import data
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
from selfsup.options import build_attrs, check_fields

CLASSIFIER_INIT_STD = 0.01  # normal init of the linear layer's weights (bias 0), as MoCo's linear evaluation
ENCODER_PREFIX = "model."  # the encoder's keys in a SelfSupervisedMethod state dict

# What from_moco_checkpoint copies from a pretraining checkpoint: the encoder's definition and where the data is.
CHECKPOINT_FIELDS = tuple(f.name for f in (*attr.fields(EncoderOptions), *attr.fields(DataSourceOptions)))


@attrs.frozen(kw_only=True, slots=False)
class CheckpointEncoderParams(DataSourceOptions, EncoderOptions):  # attrs: last base first
    """The encoder and data fields of a pretraining run (they mean what they mean in ModelParams;
    from_moco_checkpoint takes them from the checkpoint), which a classifier's params add their own options to."""

    def __attrs_post_init__(self) -> None:
        check_fields(self)
        check_encoder_options(self)


P = TypeVar("P", bound=CheckpointEncoderParams)
C = TypeVar("C", bound="EncoderClassifier")


def build_encoder(params: CheckpointEncoderParams) -> nn.Module:
    """The encoder of SelfSupervisedMethod for these params (randomly initialised), its width checked."""
    info = data.dataset_info(params)
    crop = data.crop_size(params, info)
    encoder = make_encoder(params, data.cifar_stem(params.use_cifar_stem, info), crop)
    encoder = with_representation(encoder, params.encoder_layer, crop, params.embedding_dim)
    return use_channels_last(encoder) if params.channels_last else encoder


def read_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The dict of a SelfSupervisedMethod checkpoint with ``state_dict`` and ``hyper_parameters`` (tensors on the
    CPU); a missing file, a file torch cannot read, and a checkpoint of something else raise naming the file."""
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
    hparams = checkpoint["hyper_parameters"]
    if "encoder_arch" not in hparams:
        raise ValueError(f"checkpoint {path}: its hyperparameters have no encoder_arch; expected a checkpoint of "
                         f"SelfSupervisedMethod (found {listing(sorted(hparams))})")
    return checkpoint


def listing(names: List[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class EncoderClassifier(pl.LightningModule):
    """A linear layer (``.classifier``) on an encoder (``.model``), configured by an attrs params class
    (``params_type``: EncoderOptions, DataSourceOptions and the subclass's training options); usually built with
    :meth:`from_moco_checkpoint`. ``method(x)`` returns class logits of images [B, 3, H, W].

    Subclasses say what the classifier reads in training and validation (``featurize``: by default the encoder's
    output), which datasets they train on (``_datasets``), the batch size (``batch_size``), the training loss's label
    smoothing and the optimizer.
    """

    params_type: ClassVar[Type[CheckpointEncoderParams]]
    params: CheckpointEncoderParams
    batch_size: int
    drop_last_batch: bool = True
    label_smoothing: float = 0.0

    def __init__(self, params: Any = None, **overrides: Any) -> None:
        super().__init__()
        params = self.make_params(params, **overrides)
        self.params = params
        self.save_hyperparameters(attr.asdict(params))
        num_classes = data.dataset_info(params).num_classes
        if num_classes is None:
            raise ValueError(f"dataset_name {params.dataset_name!r} at {data.resolve_data_path(params)} has no class "
                             f"folders; {type(self).__name__} needs labels (expected <folder>/train/<class>/<image>)")
        self.model = build_encoder(params)
        # a bound method, not the module itself, which nn.Module would register a second time
        self.featurize: Callable[[Tensor], Tensor] = self.model.__call__
        self.classifier = nn.Linear(params.embedding_dim, num_classes)
        nn.init.normal_(self.classifier.weight, std=CLASSIFIER_INIT_STD)
        nn.init.zeros_(self.classifier.bias)
        self._images: Optional[Tuple[Dataset, Dataset]] = None

    @classmethod
    def make_params(cls, params: Any = None, **overrides: Any) -> CheckpointEncoderParams:
        """Validated ``params_type`` from params, a dict of fields, or keywords; an unknown name raises ValueError."""
        return build_attrs(cls.params_type, params, **overrides)

    @classmethod
    def from_moco_checkpoint(cls: Type[C], path: Union[str, os.PathLike], **overrides: Any) -> C:
        """A classifier on the encoder of a SelfSupervisedMethod checkpoint (any preset).

        The encoder architecture, stem, representation layer, dataset (hence normalization and crop) and data
        location come from the checkpoint's hyperparameters; ``overrides`` replace any field. Only the encoder
        weights (state_dict keys ``model.*``) are loaded, strictly: missing, unexpected or differently shaped keys
        raise ``ValueError`` naming the checkpoint and the keys.
        """
        checkpoint = read_checkpoint(path)
        method = cls(cls.checkpoint_params(checkpoint["hyper_parameters"], **overrides))
        method.load_encoder_weights(checkpoint["state_dict"], str(path))
        return method

    @classmethod
    def checkpoint_params(cls, hparams: Mapping[str, Any], **overrides: Any) -> CheckpointEncoderParams:
        """The params for the encoder of a checkpoint with these hyperparameters, and ``overrides``."""
        fields = {name: hparams[name] for name in CHECKPOINT_FIELDS if name in hparams}
        if fields.get("use_cifar_stem") is None and not is_timm(fields["encoder_arch"]):
            # The stem is part of the pretrained weights: resolve it with the pretraining dataset, whatever the probe's.
            located = {name: overrides[name] for name in ("data_path",) if name in overrides}
            fields["use_cifar_stem"] = data.cifar_stem(None, data.dataset_info(cls.make_params(fields, **located)))
        return cls.make_params(fields, **overrides)

    def load_encoder_weights(self, state_dict: Mapping[str, Tensor], source: str) -> None:
        """Load the ``model.*`` entries of a SelfSupervisedMethod state dict into ``.model``, strictly."""
        prefix = ENCODER_PREFIX
        weights = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
        own = self.model.state_dict()
        missing = sorted(own.keys() - weights.keys())
        unexpected = sorted(weights.keys() - own.keys())
        different = [key for key in sorted(own.keys() & weights.keys()) if weights[key].shape != own[key].shape]
        if missing or unexpected or different:
            p = self.params
            shapes = [f"{prefix}{key} {tuple(weights[key].shape)} there, {tuple(own[key].shape)} here"
                      for key in different]
            problems = [
                f"missing keys: {listing([prefix + k for k in missing])}" if missing else "",
                f"unexpected keys: {listing([prefix + k for k in unexpected])}" if unexpected else "",
                f"different shapes: {listing(shapes)}" if shapes else "",
                self._image_size_hint(weights) if "pos_embed" in different else "",
            ]
            raise ValueError(
                f"checkpoint {source}: its encoder weights do not fit encoder_arch={p.encoder_arch!r}, "
                f"encoder_layer={p.encoder_layer!r}, use_cifar_stem={p.use_cifar_stem!r}; "
                + "; ".join(problem for problem in problems if problem)
            )
        self.model.load_state_dict(weights)

    def _image_size_hint(self, weights: Mapping[str, Tensor]) -> str:
        """A ViT's position embeddings cover the patch grid of its pretraining images: name both image sizes."""
        own = self.model.state_dict()["pos_embed"]
        patch = int(self.model.patch_embed.patch_size[0])  # type: ignore[union-attr, index]
        grid = int(self.model.patch_embed.grid_size[0])  # type: ignore[union-attr, index]
        prefix_tokens = own.shape[1] - grid * grid
        pretrained_side = round((weights["pos_embed"].shape[1] - prefix_tokens) ** 0.5) * patch
        return (f"the ViT was pretrained on {pretrained_side}-px images, and these images are {grid * patch} px; set "
                f"transform_crop_size={pretrained_side} (resize the images) or encoder_image_size={pretrained_side} "
                "(interpolate the position embeddings)")

    # --- model -----------------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Class logits [B, num_classes] of images [B, 3, H, W]."""
        return self.classifier(self.model(x))

    # --- training --------------------------------------------------------------------------------------------------
    def training_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self.classifier(self.featurize(x))
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        acc1, acc5 = probes.topk_accuracy(logits, y)
        self.log_dict(
            {"step_train_loss": loss.detach(), "step_train_acc1": acc1, "step_train_acc5": acc5}, batch_size=len(y)
        )
        return loss

    def validation_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.classifier(self.featurize(x))
        acc1, acc5 = probes.topk_accuracy(logits, y)
        self.log_dict(
            {"valid_loss": F.cross_entropy(logits, y), "valid_acc1": acc1, "valid_acc5": acc5},
            batch_size=len(y),
            on_epoch=True,
            sync_dist=True,
        )

    # --- data ------------------------------------------------------------------------------------------------------
    def image_datasets(self) -> Tuple[Dataset, Dataset]:
        """(labelled train, labelled test) images through the evaluation transform (data.eval_datasets)."""
        if self._images is None:
            self._images = data.eval_datasets(self.params)
        return self._images

    def _datasets(self) -> Tuple[Dataset, Dataset]:
        return self.image_datasets()

    def prepare_data(self) -> None:
        data.eval_datasets(self.params)  # downloads once, on one process per node

    def _loader(self, dataset: Dataset, *, shuffle: bool, drop_last: bool) -> DataLoader:
        p = self.params
        return data.make_loader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=0 if isinstance(dataset, TensorDataset) else p.num_data_workers,
            pin_memory=p.pin_data_memory,
            seed=p.data_seed,
        )

    def train_dataloader(self) -> DataLoader:
        train = self._datasets()[0]
        # a training set smaller than one global batch (a low-shot subset) still trains, on one incomplete batch per
        # process and epoch
        world_size = self._trainer.world_size if self._trainer is not None else 1
        drop_last = self.drop_last_batch and len(train) >= self.batch_size * world_size  # type: ignore[arg-type]
        return self._loader(train, shuffle=True, drop_last=drop_last)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._datasets()[1], shuffle=False, drop_last=False)
