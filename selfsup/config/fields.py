"""The fields of every run, in option groups, and :class:`ModelParams`, the one flat params class that inherits them
all (the method files declare the groups of their own hyperparameters).

Each field is declared once with its help text and its allowed values or range (config.options.option); the
validation, the command line and docs/options.md all read that declaration.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import attrs

from selfsup.config.options import option
from selfsup.config.validation import validate_params
from selfsup.data.sources import DATASETS
from selfsup.data.views import AUGMENTATION_BACKENDS, TRANSFORM_TYPES
from selfsup.methods import base as method_base
from selfsup.methods.barlow_twins import BarlowTwinsOptions
from selfsup.methods.contrastive import EqCoOptions
from selfsup.methods.dino import DINOOptions
from selfsup.methods.swav import SwAVOptions
from selfsup.methods.vicreg import VICRegOptions
from selfsup.methods.wmse import WMSEOptions
from selfsup.nn.backbones import encoder_archs
from selfsup.nn.heads import ACTIVATIONS, NORMALIZATIONS
from selfsup.optim.groups import OPTIMIZERS

SYNC_BATCH_NORMS = (None, "heads", "all")


def _tuple2(value: Any) -> Tuple[float, float]:
    return tuple(float(v) for v in value)  # type: ignore[return-value]


def _loss_types() -> Tuple[str, ...]:
    return tuple(method_base.REGISTRY)


@attrs.frozen(kw_only=True, slots=False)
class EncoderOptions:
    """Encoder"""

    encoder_arch: str = option("resnet18", "torchvision classification model name, or ws_resnet{18,34,50,101,152}",
                               choices=encoder_archs)
    encoder_layer: Optional[str] = option(None, "representation = output of this encoder submodule (name, or child "
                                                "index)")
    use_cifar_stem: Optional[bool] = option(None, "3x3/stride-1 first conv, no max-pool; None = on for datasets of "
                                                  "<= 64 px")
    embedding_dim: int = option(512, "width of the encoder output (checked against the real encoder at "
                                     "construction)", low=1)
    channels_last: bool = option(True, "encoder weights and input images in channels_last memory format: "
                                       "convolutions are faster on CPUs (resnet18: 12-34% here) and tensor-core GPUs")


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


@attrs.frozen(kw_only=True, slots=False)
class ViewOptions:
    """Views and batches"""

    batch_size: int = option(256, "images per device per optimizer step (each image gives num_global_crops views)",
                             low=1)
    transform_s: float = option(0.5, "colour-jitter strength s (brightness/contrast/saturation 0.8s, hue 0.2s)",
                                low=0)
    transform_apply_blur: bool = option(True, "Gaussian blur (p=0.5, sigma 0.1-2) in the 'simclr' pipeline")
    transform_type: str = option("simclr", "'simclr': MoCo v2/SimCLR views; 'byol': asymmetric blur/solarize pair",
                                 choices=TRANSFORM_TYPES)
    augmentation_backend: str = option("batched", "'batched': views made per batch on the training device; 'pil': "
                                                  "per image in the DataLoader", choices=AUGMENTATION_BACKENDS)
    num_global_crops: int = option(2, "views per image at transform_crop_size", low=1)
    num_local_crops: int = option(0, "extra small views per image (multi-crop); they are queries only", low=0)
    local_crop_size: Optional[int] = option(None, "side of local crops in px; None = 3/7 of the global crop (96/224)",
                                            low=1)
    global_crop_scale: Tuple[float, float] = option((0.2, 1.0), "area fraction range of the global crops",
                                                    converter=_tuple2)
    local_crop_scale: Tuple[float, float] = option((0.05, 0.4), "area fraction range of the local crops",
                                                   converter=_tuple2)
    decode_on_device: bool = option(False, "decode the image files on the training device (CUDA: batched nvJPEG), "
                                           "the loader workers only reading bytes; file datasets with the 'batched' "
                                           "backend; on a CPU the loader decodes as usual")
    seed: int = option(0, "run seed: data order and per-sample augmentations; the command line also seeds weight "
                          "init and RNGs", low=0)
    drop_last_batch: bool = option(True, "drop the incomplete last training batch (queues need equal batches)")


@attrs.frozen(kw_only=True, slots=False)
class MethodOptions:
    """Method: embeddings, target network, negatives"""

    loss_type: str = option("ce", "the method's loss, one registered name per method family (docs/methods.md)",
                            choices=_loss_types)
    K: int = option(65536, "queue length (number of stored negative keys; it starts empty, negatives are real keys "
                           "only)", low=0)
    dim: int = option(128, "output width of the projection (and prediction) MLP", low=1)
    m: float = option(0.996, "momentum of the target (lagging) network's EMA, in [0, 1]", low=0, high=1)
    T: float = option(0.2, "softmax temperature of the contrastive losses", low=0, low_open=True)
    use_negative_examples_from_batch: bool = option(False, "other samples of the batch are negatives")
    use_negative_examples_from_queue: bool = option(True, "the queue of past keys supplies negatives")
    use_both_augmentations_as_queries: bool = option(False, "symmetric loss: every global view is also a query")
    use_lagging_model: bool = option(True, "targets come from an EMA copy of encoder+projection (else the online "
                                           "net)")
    use_target_stop_gradient: bool = option(False, "without a lagging model: no gradient through the targets "
                                                   "(SimSiam)")
    use_momentum_schedule: bool = option(False, "cosine schedule of the EMA momentum from m to 1 over all optimizer "
                                                "steps")
    use_unit_sphere_projection: bool = option(True, "L2-normalize queries and keys before the loss")
    loss_constant_factor: float = option(1, "multiplier of the total loss (BYOL uses 2)")
    view_pair_reduction: str = option("sum", "combine the (query view, key view) losses by 'sum' (BYOL) or 'mean' "
                                             "(SimCLR)", choices=method_base.VIEW_PAIR_REDUCTIONS)


@attrs.frozen(kw_only=True, slots=False)
class PrototypeOptions:
    """Prototypes (DINO, SwAV)"""

    num_prototypes: int = option(3000, "'dino': output width of the teacher/student head; 'swav': number of "
                                       "prototypes", low=1)
    freeze_prototypes_epochs: int = option(1, "'dino'/'swav': epochs during which the prototype layer gets no "
                                              "update", low=0)


@attrs.frozen(kw_only=True, slots=False)
class HeadOptions:
    """Heads"""

    projection_mlp_layers: int = option(2, "0 = Identity, 1 = Linear, n = (n-1) x [Linear, norm, ReLU] + Linear",
                                        low=0)
    prediction_mlp_layers: int = option(0, "same convention; 0 for methods without a predictor", low=0)
    mlp_hidden_dim: int = option(512, "hidden width of both MLPs", low=1)
    mlp_normalization: Optional[str] = option(None, "hidden-layer norm: None, 'bn', 'br' (BatchRenorm), 'ln', 'gn' "
                                                    "(32 groups)", choices=NORMALIZATIONS)
    prediction_mlp_normalization: Optional[str] = option("same", "as mlp_normalization, or 'same' to copy it",
                                                         choices=("same",) + NORMALIZATIONS)
    use_mlp_weight_standardization: bool = option(False, "weight-standardized Linear for the hidden MLP layers")
    mlp_activation: str = option("relu", "hidden-layer activation of both MLPs: 'relu' or 'gelu' (DINO)",
                                 choices=tuple(ACTIVATIONS))
    projection_output_batch_norm: bool = option(False, "BatchNorm without affine on the projection output "
                                                       "(SimSiam, MoCo v3, SimCLR v2)")
    prediction_mlp_hidden_dim: Optional[int] = option(None, "hidden width of the prediction MLP; None = "
                                                            "mlp_hidden_dim", low=1)


@attrs.frozen(kw_only=True, slots=False)
class OptimOptions:
    """Optimization"""

    lr: float = option(0.5, "peak learning rate (after warmup)", low=0, low_open=True)
    momentum: float = option(0.9, "SGD / LARS momentum", low=0, high=1)
    weight_decay: float = option(1e-4, "L2 weight decay (not applied to parameters excluded from LARS)", low=0)
    max_epochs: int = option(320, "training length in epochs (the command line passes it to the Trainer)", low=1)
    final_lr_schedule_value: float = option(0.0, "learning rate at the end of the cosine schedule", low=0)
    optimizer_name: str = option("sgd", "'sgd' or 'lars'", choices=OPTIMIZERS)
    lars_warmup_epochs: float = option(1, "LARS only: linear learning-rate warmup length in epochs (applied per "
                                          "step)", low=0)
    lars_eta: float = option(1e-3, "LARS trust coefficient", low=0, low_open=True)
    exclude_matching_parameters_from_lars: List[str] = option(
        help="parameters whose name contains one of these substrings: no LARS, no weight decay", factory=list,
        converter=list)
    exclude_bias_and_norm_from_lars: bool = option(False, "every bias and normalization-layer parameter: no LARS, "
                                                          "no decay")
    use_constant_prediction_lr: bool = option(False, "the prediction MLP keeps the peak learning rate (SimSiam)")


@attrs.frozen(kw_only=True, slots=False)
class DistributedOptions:
    """Distributed"""

    shuffle_batch_norm: bool = option(False, "MoCo shuffle-BN: permute keys across processes around the momentum "
                                             "encoder")
    gather_keys_for_queue: bool = option(False, "all-gather keys from every process before they enter the queue")
    gather_negatives_across_devices: bool = option(True, "in-batch candidates (negatives, SupCon/NNCLR candidates) "
                                                         "from every process, with gradient; False = this device's "
                                                         "batch only")
    sync_batch_norm: Optional[str] = option(None, "BatchNorm statistics over all processes: None, 'heads' "
                                                  "(projection and prediction MLPs) or 'all' (the encoder too)",
                                            choices=SYNC_BATCH_NORMS)


@attrs.frozen(kw_only=True, slots=False)
class LongRunOptions:
    """Long runs"""

    collapse_std_fraction: float = option(0.1, "collapse warning when step_embedding_std stays below this fraction "
                                               "of 1/sqrt(projection width)...", low=0)
    collapse_patience_steps: int = option(100, "... for this many consecutive steps (0 as the fraction: off)", low=1)


# attrs puts the fields of the last base first: the groups are listed last to first.
@attrs.frozen(kw_only=True, slots=False)
class ModelParams(
    LongRunOptions,
    DistributedOptions,
    OptimOptions,
    HeadOptions,
    WMSEOptions,
    SwAVOptions,
    DINOOptions,
    BarlowTwinsOptions,
    VICRegOptions,
    EqCoOptions,
    PrototypeOptions,
    MethodOptions,
    ViewOptions,
    DataSourceOptions,
    EncoderOptions,
):
    """All knobs of :class:`selfsup.train.SelfSupervisedMethod`. The defaults are MoCo v2 with a ResNet-18 on STL-10.

    Validation runs at construction, before any data or model is touched: impossible settings raise ``ValueError``
    naming the field, suspicious but legal ones warn (config.validation). Ablations use ``attr.evolve(params,
    field=value)``, which validates again.
    """

    def __attrs_post_init__(self) -> None:
        validate_params(self)

    @property
    def method(self) -> method_base.Method:
        """The registered method of ``loss_type``."""
        return method_base.method_of(self.loss_type)

    @property
    def uses_queue(self) -> bool:
        """Whether a queue of past keys is kept: negatives of a contrastive loss, or NNCLR's support set."""
        return self.method.uses_queue(self)

    @property
    def resolved_prediction_mlp_hidden_dim(self) -> int:
        return self.mlp_hidden_dim if self.prediction_mlp_hidden_dim is None else self.prediction_mlp_hidden_dim

    @property
    def resolved_prediction_mlp_normalization(self) -> Optional[str]:
        return (
            self.mlp_normalization if self.prediction_mlp_normalization == "same" else self.prediction_mlp_normalization
        )
