"""Recipes that rescale a preset: ``short_run_overrides`` for runs far shorter than the papers' schedules, and
``small_run_overrides`` for CPU tests and smoke runs. The shared rules are here; each method adds its own
(``Method.short_run_overrides``, ``Method.small_run_overrides``)."""

from __future__ import annotations

from typing import Any, Callable, Collection, Dict, Mapping, Tuple

from selfsup.config.params import ModelParams
from selfsup.nn.vit import is_timm_vit

SHORT_RUN_MAX_EPOCHS = 100  # runs of at least this many epochs keep the papers' schedules
# Short runs: the presets' epoch-denominated schedules were written for 100-1000 epochs. Each is capped at the
# fraction of the run it takes in its paper's shortest recipe, so a run of a few epochs is not all warmup.
SHORT_RUN_WARMUP_FRACTION = 0.1  # LR warmup: 10 of 100 epochs (MoCo v3, VICReg, Barlow Twins: 10 of 100-1000)
SHORT_RUN_MAX_MOMENTUM = 0.99  # EMA time constant 100 steps (solo-learn's CIFAR recipes start at 0.99)
# Peak lr of the SGD presets in short runs: their lrs (0.5 at batch 256) suit hundreds of epochs, and a tenth of
# them learned better in a few (docs/benchmarks.md, "Measurements behind defaults"); the LARS presets keep theirs.
SHORT_RUN_SGD_LR_SCALE = 0.1
SMALL_VIT = "timm:vit_tiny_patch16_224"  # the ViT of small runs, whatever the preset's


def short_run_overrides(preset: ModelParams) -> Dict[str, Any]:
    """Field overrides that scale ``preset``'s schedules to a run of ``preset.max_epochs`` epochs.

    The warmup is capped at a fraction of the run (SHORT_RUN_WARMUP_FRACTION) and the EMA momentum at 0.99: at 0.996
    the target's time constant, 250 steps, exceeds a 160-step run, and its weights would stay close to their random
    initialisation. SGD presets get a tenth of their peak lr (see SHORT_RUN_SGD_LR_SCALE). The method adds its own
    (DINO's teacher-temperature warmup, DINO's and SwAV's prototype freezing). Runs of SHORT_RUN_MAX_EPOCHS epochs
    or more get no overrides.
    """
    epochs = preset.max_epochs
    if epochs >= SHORT_RUN_MAX_EPOCHS:
        return {}
    lr_scale = SHORT_RUN_SGD_LR_SCALE if preset.optimizer_name == "sgd" else 1.0
    overrides: Dict[str, Any] = dict(lr=preset.lr * lr_scale)
    if preset.optimizer_name in ("lars", "adamw"):  # SGD runs have no warmup
        overrides["lars_warmup_epochs"] = min(preset.lars_warmup_epochs, SHORT_RUN_WARMUP_FRACTION * epochs)
    if preset.use_lagging_model:
        overrides["m"] = min(preset.m, SHORT_RUN_MAX_MOMENTUM)
    return {**overrides, **preset.method.short_run_overrides(preset)}


def small_run_overrides(preset: ModelParams, batch_size: int) -> Dict[str, Any]:
    """Field overrides that shrink ``preset`` for a quick CPU run at ``batch_size`` (tests, smoke runs): narrow heads,
    queues of 4 batches, a ViT-Tiny with 8-px patches for any ViT, and the method's own (e.g. 16 prototypes, at most 2
    local crops); the method itself is unchanged."""
    fields: Dict[str, Any] = dict(batch_size=batch_size, mlp_hidden_dim=64, dim=32)
    if is_timm_vit(preset.encoder_arch):  # ViT-Tiny on 32-px images: 16 tokens, and 4 for a 16-px local crop
        fields.update(encoder_arch=SMALL_VIT, embedding_dim=192, patch_size=8, local_crop_size=16)
    if preset.uses_queue:
        fields["K"] = 4 * batch_size
    if preset.prediction_mlp_hidden_dim is not None:
        fields["prediction_mlp_hidden_dim"] = 16
    fields.update(preset.method.small_run_overrides(preset, batch_size))
    return fields


def with_short_run_recipe(
    build: Callable[..., ModelParams], fields: Mapping[str, Any], keep: Collection[str] = ()
) -> Tuple[ModelParams, str]:
    """``build(**fields)`` with :func:`short_run_overrides` applied to every field not in ``keep`` (the ones a user
    set), and the run-log description of what the recipe changed ("none" for runs of SHORT_RUN_MAX_EPOCHS or more)."""
    published = build(**fields)
    recipe = {k: v for k, v in short_run_overrides(published).items() if k not in keep}
    params = build(**{**fields, **recipe}) if recipe else published
    return params, describe_overrides(published, recipe)


def describe_overrides(preset: ModelParams, overrides: Dict[str, Any]) -> str:
    """``overrides`` as "field old -> new" for the fields they change in ``preset`` (for run logs)."""
    changed = [f"{k} {_show(getattr(preset, k))} -> {_show(v)}" for k, v in overrides.items()
               if getattr(preset, k) != v]
    return ", ".join(changed) or "none"


def _show(value: Any) -> str:
    # 6 significant digits: a scaled lr prints as 0.08, not 0.08000000000000002.
    return f"{value:.6g}" if isinstance(value, float) else repr(value)
