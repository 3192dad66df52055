"""The rules across fields that every method shares, checked when ModelParams are built: impossible settings raise
``ValueError`` naming the field, suspicious but legal ones warn. Each method's own rules are in its method file
(``Method.check``, ``Method.check_options``, ``Method.check_memory``), and so is what it needs to be built."""

from __future__ import annotations

import math

from selfsup import methods
from selfsup.data.sources import FILE_DATASETS, crop_size
from selfsup.methods.method import Method
from selfsup.methods.options import SharedParams, fail, suspicious
from selfsup.nn.backbones import check_encoder_options
from selfsup.nn.vit import is_timm_vit
from selfsup.optim.options import check_optim_options
from selfsup.options import check_fields


def validate_params(p: SharedParams) -> None:
    """Raise ``ValueError`` for impossible settings and warn for suspicious ones; called by ``ModelParams``."""
    check_fields(p)
    check_encoder_options(p)
    check_optim_options(p)
    if p.loss_constant_factor == 0 or not math.isfinite(p.loss_constant_factor):
        fail("loss_constant_factor", f"got {p.loss_constant_factor!r}; expected a finite non-zero number")
    for field in ("global_crop_scale", "local_crop_scale"):
        low, high = getattr(p, field) if len(getattr(p, field)) == 2 else (-1.0, -1.0)
        if not 0 < low <= high <= 1:
            fail(field, f"got {getattr(p, field)!r}; expected (low, high) with 0 < low <= high <= 1")
    for registered in methods.methods():
        registered.check_options(p)
    method = methods.method_of(p.loss_type)
    check_complete(method, p)
    if method.vit_only and not is_timm_vit(p.encoder_arch):
        fail("encoder_arch", f"loss_type={p.loss_type!r} works on the patch tokens of a Vision Transformer; got "
                             f"{p.encoder_arch!r} (use a timm ViT, e.g. 'timm:vit_tiny_patch16_224' with patch_size=4 "
                             "for 32-px images)")
    if method.vit_only and p.encoder_image_size not in (None, crop_size(p)):
        fail("encoder_image_size", f"loss_type={p.loss_type!r} masks the patch grid of its views, so the ViT must "
                                   f"be built for the crop size ({crop_size(p)} px); got {p.encoder_image_size} (set "
                                   "None)")
    if method.vit_only and p.encoder_layer is not None:
        fail("encoder_layer", f"loss_type={p.loss_type!r} reads the ViT's tokens; the representation cannot be a "
                              "hidden layer (set it to None)")
    method.check(p)
    method.check_memory(p)

    if p.projection_mlp_layers == 0 and p.dim != p.embedding_dim:
        fail("dim", f"projection_mlp_layers=0 makes the projection the identity, so dim ({p.dim}) must equal "
                    f"embedding_dim ({p.embedding_dim})")
    for field, norm in (
        ("mlp_normalization", p.mlp_normalization),
        ("prediction_mlp_normalization", p.resolved_prediction_mlp_normalization),
    ):
        if norm == "gn" and p.mlp_hidden_dim % 32 != 0:
            fail(field, f"'gn' uses 32 groups, so mlp_hidden_dim ({p.mlp_hidden_dim}) must be a multiple of 32")
    if p.use_both_augmentations_as_queries and p.num_global_crops < 2:
        fail("num_global_crops", "a symmetric loss needs at least 2 global crops")
    if p.num_global_crops + p.num_local_crops < method.min_views:
        fail("num_global_crops", f"got {p.num_global_crops}; loss_type={p.loss_type!r} needs {method.min_views} "
                                 "views (add global or local crops)")

    if method.batch_candidates:
        if p.use_negative_examples_from_queue or not p.use_negative_examples_from_batch:
            suspicious(f"loss_type={p.loss_type!r} always contrasts each anchor with the other samples of the batch "
                       "and with no queue of negatives; use_negative_examples_from_batch=False and "
                       "use_negative_examples_from_queue=True are ignored")
    elif not method.reads_negatives and (p.use_negative_examples_from_batch or p.use_negative_examples_from_queue):
        suspicious(f"loss_type={p.loss_type!r} reads no negatives; use_negative_examples_from_* are ignored")
    if method.momentum_target is True and not p.use_lagging_model:
        suspicious(f"loss_type={p.loss_type!r} is defined with an EMA target (teacher), but use_lagging_model=False")
    if method.momentum_target is False and p.use_lagging_model:
        suspicious(f"loss_type={p.loss_type!r} is defined without a momentum encoder, but use_lagging_model=True")
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
    if p.gather_keys_for_queue and not method.uses_queue(p):
        suspicious("gather_keys_for_queue has no effect without a queue")
    if p.decode_on_device and (p.augmentation_backend != "batched" or p.dataset_name not in FILE_DATASETS):
        suspicious(f"decode_on_device decodes image files for the batched views; it has no effect with "
                   f"dataset_name={p.dataset_name!r} and augmentation_backend={p.augmentation_backend!r}")
    if p.use_target_stop_gradient and p.use_lagging_model:
        suspicious("use_target_stop_gradient only matters without a lagging model (EMA targets get no gradient)")


def check_complete(method: Method, p: SharedParams) -> None:
    """Raise, naming what is missing, when the method of ``p`` cannot be trained: it defines no step, its option group
    is not among the fields of ``p``, or building its step reads a field of the params that no group declares."""
    missing = method.missing()
    if method.options is not None and not isinstance(p, method.options):
        missing.append(f"its option group {method.options.__name__} is not among the params' fields (the method was "
                       "registered after ModelParams was assembled: put its file in selfsup/methods/)")
    if missing:
        fail("loss_type", f"{p.loss_type!r} selects the method {type(method).__name__} ({method.source()}), which is "
                          f"incomplete: {'; '.join(missing)}")
    try:
        method.dry_run(p)
    except AttributeError as error:
        if error.obj is not p:
            raise
        fail("loss_type", f"{p.loss_type!r} selects the method {type(method).__name__} ({method.source()}), which "
                          f"reads the field {error.name!r}, declared by no option group; declare it in the method's "
                          "option group (Method.options)")
