"""Configuration of every self-supervised method: one flat, validated attrs class plus named presets.

A preset is a function returning a validated :class:`ModelParams` with a few fields set, accepting overrides:
``BYOLParams(batch_size=128)``. Ablations use ``attr.evolve(params, field=value)``, which validates again.
Validation runs at construction, before any data or model is touched: impossible settings raise ``ValueError``
naming the field, suspicious but legal ones warn.
"""

from __future__ import annotations

import difflib
import functools
import math
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, TypeVar

import attr

T = TypeVar("T")

LOSS_TYPES = ("ce", "bce", "ip", "vic", "barlow", "neg_cos", "dino", "swav", "supcon", "nnclr")
CONTRASTIVE_LOSS_TYPES = ("ce", "bce", "ip")  # the losses that read negatives from the batch and/or the queue
IN_BATCH_LOSS_TYPES = ("supcon", "nnclr")  # losses whose candidates are the other samples of the batch
MLP_ACTIVATIONS = ("relu", "gelu")
OPTIMIZERS = ("sgd", "lars")
MLP_NORMALIZATIONS = (None, "bn", "br", "ln", "gn")
PREDICTION_MLP_NORMALIZATIONS = ("same",) + MLP_NORMALIZATIONS
DATASETS = ("stl10", "cifar10", "imagenet", "imagefolder", "synthetic")
TRANSFORM_TYPES = ("simclr", "byol")
AUGMENTATION_BACKENDS = ("batched", "pil")
VIEW_PAIR_REDUCTIONS = ("sum", "mean")
SYNC_BATCH_NORMS = (None, "heads", "all")
WS_RESNETS = ("ws_resnet18", "ws_resnet34", "ws_resnet50", "ws_resnet101", "ws_resnet152")


@functools.lru_cache(maxsize=1)
def encoder_archs() -> Tuple[str, ...]:
    """Names accepted by ``encoder_arch``: torchvision classification models and weight-standardized ResNets."""
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models)) + WS_RESNETS


def _tuple2(value: Any) -> Tuple[float, float]:
    return tuple(float(v) for v in value)  # type: ignore[return-value]


@attr.s(auto_attribs=True, frozen=True, kw_only=True)
class ModelParams:
    """All knobs of :class:`moco.SelfSupervisedMethod`. The defaults are MoCo v2 with a ResNet-18 on STL-10."""

    # --- encoder -------------------------------------------------------------------------------------------------
    encoder_arch: str = "resnet18"  # torchvision classification model name, or ws_resnet{18,34,50,101,152}
    encoder_layer: Optional[str] = None  # representation = output of this encoder submodule (name, or child index)
    use_cifar_stem: Optional[bool] = None  # 3x3/stride-1 first conv, no max-pool; None = on for datasets of <= 64 px
    embedding_dim: int = 512  # width of the encoder output (checked against the real encoder at construction)
    shuffle_batch_norm: bool = False  # MoCo shuffle-BN: permute keys across processes around the momentum encoder
    channels_last: bool = True  # encoder weights and images in channels_last memory format (faster convolutions)

    # --- data ----------------------------------------------------------------------------------------------------
    dataset_name: str = "stl10"  # one of DATASETS
    data_path: Optional[str] = None  # dataset root; None = env DATA_PATH, then the working directory
    batch_size: int = 256  # images per device per optimizer step (each image gives num_global_crops views)
    transform_crop_size: Optional[int] = None  # side of the global crops in px; None = the dataset's default
    transform_s: float = 0.5  # colour-jitter strength s (brightness/contrast/saturation 0.8s, hue 0.2s)
    transform_apply_blur: bool = True  # Gaussian blur (p=0.5, sigma 0.1-2) in the "simclr" pipeline
    transform_type: str = "simclr"  # "simclr": MoCo v2/SimCLR views; "byol": asymmetric blur/solarize pair
    augmentation_backend: str = "batched"  # "batched": views made per batch on the training device; "pil": per image
    num_global_crops: int = 2  # views per image at transform_crop_size
    num_local_crops: int = 0  # extra small views per image (multi-crop); they are queries only
    local_crop_size: Optional[int] = None  # side of local crops in px; None = 3/7 of the global crop (96/224)
    global_crop_scale: Tuple[float, float] = attr.ib(default=(0.2, 1.0), converter=_tuple2)  # area fraction range
    local_crop_scale: Tuple[float, float] = attr.ib(default=(0.05, 0.4), converter=_tuple2)  # area fraction range
    holdout_fraction: float = 0.1  # "imagefolder" without a val/ folder: fraction of train held out for validation
    skip_corrupt_images: bool = False  # skip unreadable images (and report how many) instead of raising
    synthetic_image_size: int = 32  # "synthetic": side of the generated images in px
    synthetic_train_size: int = 4096  # "synthetic": number of training images
    synthetic_val_size: int = 1024  # "synthetic": number of validation images
    data_seed: int = 0  # seed of the synthetic images, of held-out splits and of the validation probe's split
    seed: int = 0  # run seed: data order and per-sample augmentations; train.py also seeds weight init and RNGs
    num_data_workers: int = 4  # DataLoader worker processes per device
    drop_last_batch: bool = True  # drop the incomplete last training batch (queues need equal batches)
    pin_data_memory: bool = True  # page-locked host memory for faster host-to-GPU copies

    # --- method: embeddings, target network, negatives -------------------------------------------------------------
    K: int = 65536  # queue length (number of stored negative keys; it starts empty, negatives are real keys only)
    dim: int = 128  # output width of the projection (and prediction) MLP
    m: float = 0.996  # momentum of the target (lagging) network's EMA, in [0, 1]
    T: float = 0.2  # softmax temperature of the contrastive losses
    eqco_alpha: int = 65536  # EqCo alpha: the negative count whose gradient scale is kept
    use_eqco_margin: bool = False  # EqCo: scale the negative sum by eqco_alpha / (number of negatives)
    use_negative_examples_from_batch: bool = False  # other samples of the batch are negatives
    use_negative_examples_from_queue: bool = True  # the queue of past keys supplies negatives
    use_both_augmentations_as_queries: bool = False  # symmetric loss: every global view is also a query
    use_lagging_model: bool = True  # targets come from an EMA copy of encoder+projection (else the online net)
    use_target_stop_gradient: bool = False  # without a lagging model: no gradient through the targets (SimSiam)
    use_momentum_schedule: bool = False  # cosine schedule of the EMA momentum from m to 1 over all optimizer steps
    use_unit_sphere_projection: bool = True  # L2-normalize queries and keys before the loss
    loss_type: str = "ce"  # "ce", "bce", "ip", "vic", "barlow", "neg_cos", "dino", "swav", "supcon", "nnclr"
    loss_constant_factor: float = 1  # multiplier of the total loss (BYOL uses 2)
    view_pair_reduction: str = "sum"  # combine the (query view, key view) losses by "sum" (BYOL) or "mean" (SimCLR)
    use_vicreg_loss: bool = False  # must agree with loss_type == "vic"
    invariance_loss_weight: float = 25.0  # VICReg lambda (mean squared error between views)
    variance_loss_weight: float = 25.0  # VICReg mu (hinge on per-dimension std)
    covariance_loss_weight: float = 1.0  # VICReg nu (off-diagonal covariance)
    variance_loss_epsilon: float = 1e-4  # VICReg epsilon inside the std
    barlow_lambda: float = 0.0051  # Barlow Twins weight of the off-diagonal cross-correlation terms
    num_prototypes: int = 3000  # "dino": output width of the teacher/student head; "swav": number of prototypes
    teacher_temperature: float = 0.07  # DINO teacher softmax temperature after warmup (the student uses T)
    teacher_temperature_warmup_start: float = 0.04  # DINO teacher temperature at epoch 0, raised linearly
    teacher_temperature_warmup_epochs: int = 30  # DINO epochs of linear teacher-temperature warmup
    center_momentum: float = 0.9  # DINO EMA momentum of the teacher-output center
    freeze_prototypes_epochs: int = 1  # "dino"/"swav": epochs during which the prototype layer gets no update
    sinkhorn_epsilon: float = 0.05  # SwAV entropy regularization of the Sinkhorn-Knopp codes
    sinkhorn_iterations: int = 3  # SwAV Sinkhorn-Knopp iterations
    swav_queue_length: int = 0  # SwAV: stored features per global view that enlarge the Sinkhorn batch (0 = none)
    swav_queue_start_epoch: int = 15  # SwAV: first epoch that uses the feature queue

    # --- heads -----------------------------------------------------------------------------------------------------
    projection_mlp_layers: int = 2  # 0 = Identity, 1 = Linear, n = (n-1) x [Linear, norm, ReLU] + Linear
    prediction_mlp_layers: int = 0  # same convention; 0 for methods without a predictor
    mlp_hidden_dim: int = 512  # hidden width of both MLPs
    mlp_normalization: Optional[str] = None  # hidden-layer norm: None, "bn", "br" (BatchRenorm), "ln", "gn" (32 groups)
    prediction_mlp_normalization: Optional[str] = "same"  # as mlp_normalization, or "same" to copy it
    use_mlp_weight_standardization: bool = False  # weight-standardized Linear for the hidden MLP layers
    mlp_activation: str = "relu"  # hidden-layer activation of both MLPs: "relu" or "gelu" (DINO)
    projection_output_batch_norm: bool = False  # BatchNorm without affine on the projection output (SimSiam, MoCo v3)
    prediction_mlp_hidden_dim: Optional[int] = None  # hidden width of the prediction MLP; None = mlp_hidden_dim

    # --- optimization ----------------------------------------------------------------------------------------------
    lr: float = 0.5  # peak learning rate (after warmup)
    momentum: float = 0.9  # SGD / LARS momentum
    weight_decay: float = 1e-4  # L2 weight decay (not applied to parameters excluded from LARS)
    max_epochs: int = 320  # training length in epochs (train.py passes it to the Trainer)
    final_lr_schedule_value: float = 0.0  # learning rate at the end of the cosine schedule
    optimizer_name: str = "sgd"  # "sgd" or "lars"
    lars_warmup_epochs: float = 1  # LARS only: linear learning-rate warmup length in epochs (applied per step)
    lars_eta: float = 1e-3  # LARS trust coefficient
    exclude_matching_parameters_from_lars: List[str] = attr.ib(factory=list, converter=list)  # name substrings
    exclude_bias_and_norm_from_lars: bool = False  # every bias and normalization-layer parameter: no LARS, no decay
    use_constant_prediction_lr: bool = False  # the prediction MLP keeps the peak learning rate (SimSiam)

    # --- distributed -----------------------------------------------------------------------------------------------
    gather_keys_for_queue: bool = False  # all-gather keys from every process before they enter the queue
    gather_negatives_across_devices: bool = True  # in-batch candidates from every process, with gradient (else local)
    vicreg_gather_across_devices: bool = True  # VICReg variance/covariance on every process's batch, with gradient
    sync_batch_norm: Optional[str] = None  # BatchNorm statistics over all processes: None, "heads", "all" (+encoder)

    # --- long runs -------------------------------------------------------------------------------------------------
    collapse_std_fraction: float = 0.1  # warn when step_embedding_std < this fraction of 1/sqrt(projection width)...
    collapse_patience_steps: int = 100  # ... for this many consecutive steps (the collapse monitor; 0 fraction: off)

    def __attrs_post_init__(self) -> None:
        validate_params(self)

    @property
    def uses_queue(self) -> bool:
        """Whether a queue of past keys is kept: negatives of a contrastive loss, or NNCLR's support set."""
        return (
            self.loss_type in CONTRASTIVE_LOSS_TYPES and self.use_negative_examples_from_queue
        ) or self.loss_type == "nnclr"

    @property
    def resolved_prediction_mlp_hidden_dim(self) -> int:
        return self.mlp_hidden_dim if self.prediction_mlp_hidden_dim is None else self.prediction_mlp_hidden_dim

    @property
    def resolved_prediction_mlp_normalization(self) -> Optional[str]:
        return (
            self.mlp_normalization if self.prediction_mlp_normalization == "same" else self.prediction_mlp_normalization
        )


def _fail(field: str, message: str) -> None:
    raise ValueError(f"ModelParams.{field}: {message}")


def _check_choice(params: ModelParams, field: str, allowed: Tuple[Any, ...]) -> None:
    value = getattr(params, field)
    if value not in allowed:
        close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        _fail(field, f"got {value!r}; allowed values are {', '.join(repr(a) for a in allowed)}.{hint}")


def _check_range(
    params: ModelParams, field: str, low: float, high: float = math.inf, *, low_open: bool = False
) -> None:
    value = getattr(params, field)
    below = value <= low if low_open else value < low
    if below or value > high:
        bracket = "(" if low_open else "["
        _fail(field, f"got {value!r}; expected a value in {bracket}{low}, {high}]")


def validate_params(p: ModelParams) -> None:
    """Raise ``ValueError`` for impossible settings and warn for suspicious ones; called by ``ModelParams``."""
    _check_choice(p, "loss_type", LOSS_TYPES)
    _check_choice(p, "optimizer_name", OPTIMIZERS)
    _check_choice(p, "mlp_normalization", MLP_NORMALIZATIONS)
    _check_choice(p, "prediction_mlp_normalization", PREDICTION_MLP_NORMALIZATIONS)
    _check_choice(p, "dataset_name", DATASETS)
    _check_choice(p, "transform_type", TRANSFORM_TYPES)
    _check_choice(p, "augmentation_backend", AUGMENTATION_BACKENDS)
    _check_choice(p, "view_pair_reduction", VIEW_PAIR_REDUCTIONS)
    _check_choice(p, "mlp_activation", MLP_ACTIVATIONS)
    _check_choice(p, "sync_batch_norm", SYNC_BATCH_NORMS)
    _check_choice(p, "encoder_arch", encoder_archs())

    for field in (
        "embedding_dim",
        "batch_size",
        "dim",
        "mlp_hidden_dim",
        "max_epochs",
        "num_global_crops",
        "synthetic_image_size",
        "synthetic_train_size",
        "synthetic_val_size",
        "num_prototypes",
        "sinkhorn_iterations",
    ):
        _check_range(p, field, 1)
    for field in (
        "K",
        "num_local_crops",
        "num_data_workers",
        "projection_mlp_layers",
        "prediction_mlp_layers",
        "weight_decay",
        "final_lr_schedule_value",
        "transform_s",
        "lars_warmup_epochs",
        "invariance_loss_weight",
        "variance_loss_weight",
        "covariance_loss_weight",
        "barlow_lambda",
        "teacher_temperature_warmup_epochs",
        "freeze_prototypes_epochs",
        "swav_queue_length",
        "swav_queue_start_epoch",
    ):
        _check_range(p, field, 0)
    for field in (
        "T",
        "lr",
        "lars_eta",
        "eqco_alpha",
        "variance_loss_epsilon",
        "teacher_temperature",
        "teacher_temperature_warmup_start",
        "sinkhorn_epsilon",
    ):
        _check_range(p, field, 0, low_open=True)
    _check_range(p, "m", 0, 1)
    _check_range(p, "center_momentum", 0, 1)
    _check_range(p, "momentum", 0, 1)
    _check_range(p, "holdout_fraction", 0, 1, low_open=True)
    _check_range(p, "seed", 0)
    _check_range(p, "collapse_std_fraction", 0)
    _check_range(p, "collapse_patience_steps", 1)
    if p.loss_constant_factor == 0 or not math.isfinite(p.loss_constant_factor):
        _fail("loss_constant_factor", f"got {p.loss_constant_factor!r}; expected a finite non-zero number")
    for field in ("transform_crop_size", "local_crop_size", "prediction_mlp_hidden_dim"):
        if getattr(p, field) is not None:
            _check_range(p, field, 1)
    for field in ("global_crop_scale", "local_crop_scale"):
        low, high = getattr(p, field) if len(getattr(p, field)) == 2 else (-1.0, -1.0)
        if not 0 < low <= high <= 1:
            _fail(field, f"got {getattr(p, field)!r}; expected (low, high) with 0 < low <= high <= 1")

    if p.use_vicreg_loss != (p.loss_type == "vic"):
        _fail(
            "use_vicreg_loss",
            f"is {p.use_vicreg_loss} but loss_type is {p.loss_type!r}; "
            "use_vicreg_loss=True goes with loss_type='vic' and only with it",
        )
    has_negatives = p.use_negative_examples_from_batch or p.use_negative_examples_from_queue
    if p.loss_type in ("ce", "bce") and not has_negatives:
        _fail(
            "loss_type",
            f"{p.loss_type!r} needs negatives: set use_negative_examples_from_batch or "
            "use_negative_examples_from_queue",
        )
    if p.loss_type in IN_BATCH_LOSS_TYPES and not p.use_negative_examples_from_batch:
        _fail(
            "use_negative_examples_from_batch",
            f"loss_type={p.loss_type!r} compares each anchor with the other "
            "samples of the batch; set use_negative_examples_from_batch=True",
        )
    if p.loss_type == "supcon" and p.use_negative_examples_from_queue:
        _fail("use_negative_examples_from_queue", "loss_type='supcon' has no labels for queued keys; set it to False")
    if p.loss_type == "dino" and p.use_unit_sphere_projection:
        _fail(
            "use_unit_sphere_projection",
            "loss_type='dino' takes softmaxes of the prototype logits, which must not be normalized; set it to False",
        )
    if p.loss_type == "swav" and p.swav_queue_length % p.batch_size != 0:
        _fail("swav_queue_length", f"{p.swav_queue_length} must be a multiple of batch_size {p.batch_size}")
    if p.use_eqco_margin and p.loss_type != "ce":
        _fail("use_eqco_margin", f"the EqCo margin is defined for loss_type='ce', not {p.loss_type!r}")
    if p.uses_queue:
        if p.K == 0:
            _fail("K", "the queue is used (use_negative_examples_from_queue=True) but K=0")
        if p.K % p.batch_size != 0:
            _fail(
                "K",
                f"queue length {p.K} must be a multiple of batch_size {p.batch_size} (whole batches enter the queue)",
            )
    if p.projection_mlp_layers == 0 and p.dim != p.embedding_dim:
        _fail(
            "dim",
            f"projection_mlp_layers=0 makes the projection the identity, so dim ({p.dim}) must equal "
            f"embedding_dim ({p.embedding_dim})",
        )
    for field, norm in (
        ("mlp_normalization", p.mlp_normalization),
        ("prediction_mlp_normalization", p.resolved_prediction_mlp_normalization),
    ):
        if norm == "gn" and p.mlp_hidden_dim % 32 != 0:
            _fail(field, f"'gn' uses 32 groups, so mlp_hidden_dim ({p.mlp_hidden_dim}) must be a multiple of 32")
    if p.use_both_augmentations_as_queries and p.num_global_crops < 2:
        _fail("num_global_crops", "a symmetric loss needs at least 2 global crops")
    if p.num_global_crops < 2 and p.num_local_crops == 0:
        _fail("num_global_crops", f"got {p.num_global_crops}; two views are needed (add global or local crops)")

    def suspicious(message: str) -> None:
        warnings.warn(f"Suspicious configuration: {message}", UserWarning, stacklevel=4)

    if p.loss_type in ("vic", "barlow", "neg_cos", "dino", "swav") and has_negatives:
        suspicious(f"loss_type={p.loss_type!r} reads no negatives; use_negative_examples_from_* are ignored")
    if p.loss_type == "dino" and not p.use_lagging_model:
        suspicious("DINO's teacher is an EMA of the student, but use_lagging_model=False")
    if p.loss_type in ("swav", "nnclr", "supcon", "barlow") and p.use_lagging_model:
        suspicious(f"loss_type={p.loss_type!r} is defined without a momentum encoder, but use_lagging_model=True")
    if p.loss_type == "vic" and p.use_unit_sphere_projection:
        suspicious("VICReg expects raw embeddings, but use_unit_sphere_projection=True normalizes them")
    if p.loss_type in ("ce", "bce") and not p.use_unit_sphere_projection:
        suspicious(f"loss_type={p.loss_type!r} on unnormalized embeddings: logits are unbounded")
    if not p.use_lagging_model and p.use_momentum_schedule:
        suspicious("use_momentum_schedule has no effect without a lagging model")
    heads_have_batch_norm = (
        p.projection_output_batch_norm
        or (p.projection_mlp_layers >= 2 and p.mlp_normalization == "bn")
        or (p.prediction_mlp_layers >= 2 and p.resolved_prediction_mlp_normalization == "bn")
    )
    if p.sync_batch_norm == "heads" and not heads_have_batch_norm:
        suspicious("sync_batch_norm='heads' but the projection and prediction MLPs have no BatchNorm layer")
    if p.shuffle_batch_norm and p.sync_batch_norm == "all":
        suspicious("shuffle_batch_norm is redundant with sync_batch_norm='all' (key statistics are already global)")
    if p.shuffle_batch_norm and not p.use_lagging_model:
        suspicious("shuffle_batch_norm shuffles the momentum encoder's batch, but use_lagging_model=False")
    if p.gather_keys_for_queue and not p.uses_queue:
        suspicious("gather_keys_for_queue has no effect without a queue")
    if (
        p.loss_type in ("ip", "neg_cos")
        and not has_negatives
        and not p.use_lagging_model
        and not p.use_target_stop_gradient
    ):
        suspicious("a loss without negatives, without a lagging model and without a stop-gradient collapses")
    if p.use_target_stop_gradient and p.use_lagging_model:
        suspicious("use_target_stop_gradient only matters without a lagging model (EMA targets get no gradient)")


def build_attrs(cls: Callable[..., T], params: Optional[Mapping[str, Any] | Any] = None, **overrides: Any) -> T:
    """An instance of the attrs class ``cls`` from an instance, a dict of fields or None, with keyword overrides on
    top; an unknown name raises ``ValueError`` (with the closest field name), so no override is silently dropped."""
    if isinstance(params, cls):  # type: ignore[arg-type]
        base: Dict[str, Any] = attr.asdict(params)
    elif params is None:
        base = {}
    elif isinstance(params, Mapping):
        base = dict(params)
    else:
        raise TypeError(f"params must be {cls.__name__}, a dict or None, not {type(params).__name__}")
    fields = attr.fields_dict(cls)  # type: ignore[arg-type]
    merged = {**base, **overrides}
    unknown = [name for name in merged if name not in fields]
    if unknown:
        hints = [
            f"{u!r}" + (f" (did you mean {c[0]!r}?)" if (c := difflib.get_close_matches(u, fields, n=1)) else "")
            for u in unknown
        ]
        raise ValueError(f"{cls.__name__} has no field {', '.join(hints)}")
    return cls(**merged)


def make_params(params: Optional[Mapping[str, Any] | ModelParams] = None, **overrides: Any) -> ModelParams:
    """Build validated params from a ``ModelParams``, a dict of fields, or keywords; unknown names raise."""
    return build_attrs(ModelParams, params, **overrides)


def small_run_overrides(preset: ModelParams, batch_size: int) -> Dict[str, Any]:
    """Field overrides that shrink ``preset`` for a quick CPU run at ``batch_size`` (tests, smoke runs): narrow heads,
    16 prototypes, at most 2 local crops, queues of 4 batches; the method itself is unchanged."""
    fields: Dict[str, Any] = dict(batch_size=batch_size, mlp_hidden_dim=64, dim=32)
    if preset.uses_queue:
        fields["K"] = 4 * batch_size
    if preset.loss_type in ("dino", "swav"):
        fields.update(
            num_prototypes=16,
            swav_queue_length=2 * batch_size if preset.swav_queue_length else 0,
            num_local_crops=min(preset.num_local_crops, 2),
        )
    if preset.prediction_mlp_hidden_dim is not None:
        fields["prediction_mlp_hidden_dim"] = 16
    return fields


# Short runs: the presets' epoch-denominated schedules were written for 100-1000 epochs. Each is capped at the
# fraction of the run it takes in its paper's shortest recipe, so a run of a few epochs is not all warmup.
SHORT_RUN_WARMUP_FRACTION = 0.1  # LR warmup: 10 of 100 epochs (MoCo v3, VICReg, Barlow Twins: 10 of 100-1000)
SHORT_RUN_TEACHER_WARMUP_FRACTION = 0.3  # DINO teacher temperature: 30 of 100 epochs
SHORT_RUN_FREEZE_FRACTION = 0.01  # frozen prototypes: SwAV's official 313 of 31,300+ iterations, DINO's 1 of 100
SHORT_RUN_MAX_MOMENTUM = 0.99  # EMA time constant 100 steps (solo-learn's CIFAR recipes start at 0.99)
# Peak lr of the SGD presets in short runs. Their lrs (0.5 at batch 256) suit hundreds of epochs; in 4 epochs of
# 10,000 CIFAR-10 images SimCLR's kNN accuracy was 30.6% at lr 0.5, 29.7% at 1.5, 36.1% at 0.12 and 38.5% at 0.05
# (random encoder 31.2%), MoCo v2's 29.8% at 0.5 and 32.7% at 0.05. A lower lr did not lift the LARS presets above
# random (their steps are already a small fraction lr * eta of each weight's norm); at 0.2x: BYOL 28.2% -> 27.8%,
# NNCLR 31.1% -> 30.9%, SwAV 27.0% -> 30.4%.
SHORT_RUN_SGD_LR_SCALE = 0.1


def short_run_overrides(preset: ModelParams) -> Dict[str, Any]:
    """Field overrides that scale ``preset``'s schedules to a run of ``preset.max_epochs`` epochs.

    Warmups and prototype freezing are capped at a fraction of the run (the SHORT_RUN_* constants) and the EMA
    momentum at 0.99: at 0.996 the target's time constant, 250 steps, exceeds a 160-step run, and its weights
    would stay close to their random initialisation. SGD presets get a tenth of their peak lr (see
    SHORT_RUN_SGD_LR_SCALE). Runs of 100 epochs or more get no overrides.
    """
    epochs = preset.max_epochs
    if epochs >= 100:
        return {}
    lr_scale = SHORT_RUN_SGD_LR_SCALE if preset.optimizer_name == "sgd" else 1.0
    return dict(
        lr=preset.lr * lr_scale,
        lars_warmup_epochs=min(preset.lars_warmup_epochs, SHORT_RUN_WARMUP_FRACTION * epochs),
        teacher_temperature_warmup_epochs=min(
            preset.teacher_temperature_warmup_epochs, round(SHORT_RUN_TEACHER_WARMUP_FRACTION * epochs)
        ),
        freeze_prototypes_epochs=min(preset.freeze_prototypes_epochs, int(SHORT_RUN_FREEZE_FRACTION * epochs)),
        m=min(preset.m, SHORT_RUN_MAX_MOMENTUM),
    )


def _preset(name: str, fields: Mapping[str, Any], doc: str) -> Callable[..., ModelParams]:
    def preset(**overrides: Any) -> ModelParams:
        return make_params({**fields, **overrides})

    preset.__name__ = preset.__qualname__ = name
    preset.__doc__ = doc + "\n\nFields set: " + ", ".join(f"{k}={v!r}" for k, v in fields.items())
    return preset


MoCoV2Params = _preset("MoCoV2Params", {}, "MoCo v2 (Chen et al. 2020, arXiv:2003.04297): the ModelParams defaults.")

MoCoParams = _preset(
    "MoCoParams",
    dict(projection_mlp_layers=1, T=0.07, m=0.999),
    "MoCo v1 (He et al. 2019, arXiv:1911.05722): one linear projection, T=0.07, constant m=0.999.",
)

_BIAS_NORM_EXCLUDED_LARS = dict(optimizer_name="lars", exclude_bias_and_norm_from_lars=True)

BYOLParams = _preset(
    "BYOLParams",
    dict(
        prediction_mlp_layers=2,
        mlp_normalization="bn",
        loss_type="ip",
        use_negative_examples_from_queue=False,
        use_both_augmentations_as_queries=True,
        use_momentum_schedule=True,
        loss_constant_factor=2,
        transform_type="byol",
        global_crop_scale=(0.08, 1.0),
        **_BIAS_NORM_EXCLUDED_LARS,
    ),
    "BYOL (Grill et al. 2020, arXiv:2006.07733): predictor, BN heads, 2-2cos per ordering summed over both orderings, "
    "EMA momentum cosine-scheduled to 1 per step, LARS with biases and norm layers excluded. Heads are ResNet-18 "
    "sized (512 hidden, 128 out) instead of the paper's 4096/256.",
)

VICRegParams = _preset(
    "VICRegParams",
    dict(
        use_vicreg_loss=True,
        loss_type="vic",
        vicreg_gather_across_devices=True,
        use_lagging_model=False,
        use_unit_sphere_projection=False,
        use_negative_examples_from_queue=False,
        projection_mlp_layers=3,
        mlp_normalization="bn",
        final_lr_schedule_value=0.002,
        lars_warmup_epochs=10,
        **_BIAS_NORM_EXCLUDED_LARS,
    ),
    "VICReg (Bardes et al. 2021, arXiv:2105.04906): invariance/variance/covariance 25/25/1 on raw embeddings of a "
    "3-layer BN expander, LARS with biases and norm layers excluded, 10 warmup epochs, cosine to 0.002.",
)

EqCoParams = _preset(
    "EqCoParams",
    dict(use_eqco_margin=True, K=256, eqco_alpha=65536),
    "EqCo (Zhu et al. 2020, arXiv:2010.01929): MoCo v2 with a 256-key queue whose negative term is rescaled to act "
    "like eqco_alpha negatives.",
)

_SIMCLR = dict(
    use_negative_examples_from_batch=True,
    gather_negatives_across_devices=True,
    use_negative_examples_from_queue=False,
    use_lagging_model=False,
    use_both_augmentations_as_queries=True,
    K=0,
    m=0.0,
    view_pair_reduction="mean",
)

SimCLRParams = _preset(
    "SimCLRParams",
    _SIMCLR,
    "SimCLR (Chen et al. 2020, arXiv:2002.05709): NT-Xent over the 2B views of a batch, 2B-2 negatives per anchor "
    "(same-view ones included), averaged over the 2B anchors.",
)

SimCLRv2Params = _preset(
    "SimCLRv2Params",
    dict(_SIMCLR, projection_mlp_layers=3, mlp_normalization="bn", projection_output_batch_norm=True),
    "SimCLR v2 (Chen et al. 2020, arXiv:2006.10029): SimCLR with a 3-layer projection head, BatchNorm after every "
    "layer (hidden width = encoder width).",
)

_NO_NEGATIVES = dict(use_negative_examples_from_queue=False, use_negative_examples_from_batch=False)

BarlowTwinsParams = _preset(
    "BarlowTwinsParams",
    dict(
        loss_type="barlow",
        use_lagging_model=False,
        use_unit_sphere_projection=False,
        projection_mlp_layers=3,
        mlp_normalization="bn",
        mlp_hidden_dim=2048,
        dim=2048,
        barlow_lambda=0.0051,
        transform_type="byol",
        global_crop_scale=(0.08, 1.0),
        lr=0.2,
        weight_decay=1.5e-6,
        lars_warmup_epochs=10,
        **_NO_NEGATIVES,
        **_BIAS_NORM_EXCLUDED_LARS,
    ),
    "Barlow Twins (Zbontar et al. 2021, arXiv:2103.03230): cross-correlation of batch-standardized projections pushed "
    "to the identity (lambda=0.0051), 3-layer BN projector (2048 wide for ResNet-18 instead of 8192), LARS with "
    "biases and norm layers excluded.",
)

SimSiamParams = _preset(
    "SimSiamParams",
    dict(
        loss_type="neg_cos",
        use_lagging_model=False,
        use_target_stop_gradient=True,
        use_both_augmentations_as_queries=True,
        view_pair_reduction="mean",
        use_unit_sphere_projection=False,
        projection_mlp_layers=3,
        mlp_normalization="bn",
        projection_output_batch_norm=True,
        mlp_hidden_dim=2048,
        dim=2048,
        prediction_mlp_layers=2,
        prediction_mlp_hidden_dim=512,
        use_constant_prediction_lr=True,
        lr=0.05,
        weight_decay=1e-4,
        **_NO_NEGATIVES,
    ),
    "SimSiam (Chen & He 2020, arXiv:2011.10566): -cos(p, stopgrad(z)) averaged over both orderings, no momentum "
    "encoder, 3-layer projector with BN on its output, bottleneck predictor (2048-512-2048) whose learning rate is "
    "not scheduled; SGD lr 0.05 per 256 images.",
)


def MoCoV3Params(**overrides: Any) -> ModelParams:
    """MoCo v3 (Chen, Xie & He 2021, arXiv:2104.02057): no queue; each view's query against the momentum keys of the
    other view in the batch (keys of all processes), summed over both orderings and scaled by 2T as in the official
    code; BN projector with a BN output and BN predictor (4096 hidden, 256 out); momentum 0.99 cosine-scheduled to 1;
    LARS lr 0.6 per 256 images, 10 warmup epochs, wd 1e-6. T=0.2 (solo-learn's ResNet-18 value; the official
    ResNet-50 code uses 1.0). loss_constant_factor follows T unless given."""
    temperature = overrides.get("T", 0.2)
    fields = dict(
        use_negative_examples_from_batch=True,
        use_negative_examples_from_queue=False,
        use_both_augmentations_as_queries=True,
        T=temperature,
        loss_constant_factor=2 * temperature,
        m=0.99,
        use_momentum_schedule=True,
        projection_mlp_layers=2,
        prediction_mlp_layers=2,
        mlp_normalization="bn",
        projection_output_batch_norm=True,
        mlp_hidden_dim=4096,
        dim=256,
        lr=0.6,
        weight_decay=1e-6,
        lars_warmup_epochs=10,
        transform_type="byol",
        global_crop_scale=(0.08, 1.0),
        **_BIAS_NORM_EXCLUDED_LARS,
    )
    return make_params({**fields, **overrides})


DINOParams = _preset(
    "DINOParams",
    dict(
        loss_type="dino",
        use_both_augmentations_as_queries=True,
        view_pair_reduction="mean",
        use_unit_sphere_projection=False,
        projection_mlp_layers=3,
        mlp_hidden_dim=2048,
        dim=256,
        mlp_activation="gelu",
        num_prototypes=4096,
        T=0.1,
        teacher_temperature=0.07,
        teacher_temperature_warmup_start=0.04,
        teacher_temperature_warmup_epochs=30,
        center_momentum=0.9,
        freeze_prototypes_epochs=1,
        m=0.996,
        use_momentum_schedule=True,
        num_local_crops=8,
        global_crop_scale=(0.4, 1.0),
        local_crop_scale=(0.05, 0.4),
        transform_type="byol",
        lr=0.3,
        weight_decay=1e-6,
        lars_warmup_epochs=10,
        **_NO_NEGATIVES,
        **_BIAS_NORM_EXCLUDED_LARS,
    ),
    "DINO (Caron et al. 2021, arXiv:2104.14294): student/teacher self-distillation; teacher = EMA (0.996 cosine to 1) "
    "of encoder + head, centered (momentum 0.9) and sharpened (temperature 0.04 -> 0.07 over 30 epochs; student "
    "0.1); 3-layer GELU head, L2-normalized bottleneck and a weight-normalized last layer (4096 outputs for "
    "ResNet-18 instead of 65536) frozen for the first epoch; 2 global + 8 local crops; LARS as in DINO's ResNet "
    "recipe.",
)

SwAVParams = _preset(
    "SwAVParams",
    dict(
        loss_type="swav",
        use_lagging_model=False,
        use_target_stop_gradient=True,
        use_both_augmentations_as_queries=True,
        view_pair_reduction="mean",
        projection_mlp_layers=2,
        mlp_normalization="bn",
        mlp_hidden_dim=2048,
        dim=128,
        num_prototypes=3000,
        T=0.1,
        sinkhorn_epsilon=0.05,
        sinkhorn_iterations=3,
        freeze_prototypes_epochs=1,
        swav_queue_length=3840,
        swav_queue_start_epoch=15,
        num_local_crops=6,
        transform_s=1.0,
        global_crop_scale=(0.14, 1.0),
        local_crop_scale=(0.05, 0.14),
        lr=0.6,
        final_lr_schedule_value=0.0006,
        weight_decay=1e-6,
        lars_warmup_epochs=0,
        **_NO_NEGATIVES,
        **_BIAS_NORM_EXCLUDED_LARS,
    ),
    "SwAV (Caron et al. 2020, arXiv:2006.09882): swapped prediction of Sinkhorn-Knopp codes (epsilon 0.05, 3 "
    "iterations, fp32) over 3000 normalized prototypes, T=0.1, codes from the 2 global crops predicted by every "
    "other crop (6 local crops), a 3840-feature queue from epoch 15, prototypes frozen for the first epoch, LARS "
    "lr 0.6 to 0.0006 (the batch-256 recipe).",
)

SupConParams = _preset(
    "SupConParams",
    dict(
        loss_type="supcon",
        use_negative_examples_from_batch=True,
        use_negative_examples_from_queue=False,
        use_lagging_model=False,
        use_both_augmentations_as_queries=True,
        view_pair_reduction="mean",
        T=0.1,
        K=0,
    ),
    "Supervised contrastive learning (Khosla et al. 2020, arXiv:2004.11362), L_out: every other view of the same "
    "class is a positive, averaged outside the log; T=0.1. Needs labelled data.",
)

NNCLRParams = _preset(
    "NNCLRParams",
    dict(
        loss_type="nnclr",
        use_negative_examples_from_batch=True,
        use_negative_examples_from_queue=False,
        use_lagging_model=False,
        use_target_stop_gradient=True,
        use_both_augmentations_as_queries=True,
        view_pair_reduction="mean",
        T=0.1,
        K=65536,
        projection_mlp_layers=3,
        mlp_normalization="bn",
        projection_output_batch_norm=True,
        mlp_hidden_dim=2048,
        dim=256,
        prediction_mlp_layers=2,
        prediction_mlp_hidden_dim=4096,
        lr=0.3,
        weight_decay=1e-6,
        lars_warmup_epochs=10,
        transform_type="byol",
        global_crop_scale=(0.08, 1.0),
        **_BIAS_NORM_EXCLUDED_LARS,
    ),
    "NNCLR (Dwibedi et al. 2021, arXiv:2104.14548): the positive of each image is the nearest neighbour of its "
    "projection in a 65536-entry support set; InfoNCE (T=0.1) of that neighbour against the other view's "
    "predictions in the batch, averaged over both orderings; 3-layer BN projector, 4096-wide predictor, LARS.",
)

PRESETS: Dict[str, Callable[..., ModelParams]] = {
    "moco_v2": MoCoV2Params,
    "moco": MoCoParams,
    "moco_v3": MoCoV3Params,
    "byol": BYOLParams,
    "simclr": SimCLRParams,
    "simclr_v2": SimCLRv2Params,
    "vicreg": VICRegParams,
    "eqco": EqCoParams,
    "barlow_twins": BarlowTwinsParams,
    "simsiam": SimSiamParams,
    "dino": DINOParams,
    "swav": SwAVParams,
    "supcon": SupConParams,
    "nnclr": NNCLRParams,
}
