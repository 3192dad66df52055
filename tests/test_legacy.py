"""Checkpoints and loss values written by the flat-module code before the package redesign (tests/fixtures/legacy,
made by tests/fixtures/make_legacy_fixtures.py) still hold: the checkpoints load, resume and give the same
embeddings, and every preset's criterion gives the same loss, metrics, gradients and state in float64."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict

import attrs
import pytest
import torch
from fixtures.make_legacy_fixtures import CHECKPOINT_PRESETS, small_encoder, small_params
from helpers import cpu_trainer

from selfsup.config import PRESETS
from selfsup.train.module import SelfSupervisedMethod

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy"
# Presets that changed on purpose after the fixtures were written: the checkpoint keeps the fields it was trained
# with, so it must load with those, not with today's preset.
CHANGED_SINCE_FIXTURE: Dict[str, Dict[str, Any]] = {
    # SimCLR's official BatchNorm projection head (issue 17).
    "simclr": dict(mlp_normalization=None, projection_output_batch_norm=False),
}
REFERENCE: Dict[str, Any] = torch.load(LEGACY / "reference.pt", weights_only=False)


def load(name: str) -> SelfSupervisedMethod:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SelfSupervisedMethod.load_from_checkpoint(LEGACY / f"{name}.ckpt", backbone=small_encoder())


@pytest.mark.parametrize("name", CHECKPOINT_PRESETS)
def test_legacy_checkpoint_loads_with_its_params_and_gives_the_same_embeddings(name):
    model = load(name).eval()
    assert model.params == attrs.evolve(small_params(name), **CHANGED_SINCE_FIXTURE.get(name, {}))
    expected = REFERENCE["checkpoints"][name]
    with torch.no_grad():
        assert torch.allclose(model(REFERENCE["images"]), expected["embeddings"], atol=1e-6)
        assert torch.allclose(model.project(REFERENCE["images"]), expected["projections"], atol=1e-6)


@pytest.mark.parametrize("name", ["moco_v2", "swav"])
def test_legacy_checkpoint_resumes_training(name, tmp_path):
    model = SelfSupervisedMethod(small_params(name), backbone=small_encoder())
    trainer = cpu_trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=0, num_sanity_val_steps=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, ckpt_path=LEGACY / f"{name}.ckpt")
    assert trainer.global_step == 6 and torch.isfinite(trainer.callback_metrics["step_train_loss"])


def _close(actual: Any, expected: Any) -> bool:
    if expected is None:
        return actual is None
    return actual is not None and torch.allclose(actual, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sorted(REFERENCE["criteria"]))
def test_every_criterion_gives_the_legacy_losses_gradients_and_state(name):
    reference = REFERENCE["criteria"][name]
    torch.manual_seed(0)
    criterion = SelfSupervisedMethod(small_params(name), backbone=small_encoder()).criterion.double()
    criterion.load_state_dict(reference["initial_state"])
    leaf = lambda views: [None if v is None else v.clone().requires_grad_() for v in views]  # noqa: E731
    queries, keys = leaf(reference["queries"]), leaf(reference["keys"])
    memory = None if reference["memory"] is None else reference["memory"].clone().requires_grad_()
    criterion.set_epoch(0)
    for expected in reference["passes"]:
        out = criterion(queries, keys, memory, reference["labels"])
        tensors = [t for t in (*queries, *keys, memory) if t is not None]
        grads = torch.autograd.grad(out.loss, tensors, allow_unused=True)
        assert _close(out.loss.detach(), expected["loss"])
        assert out.metrics.keys() == expected["metrics"].keys()
        assert all(_close(out.metrics[k].detach(), v) for k, v in expected["metrics"].items())
        assert len(grads) == len(expected["grads"]) and all(map(_close, grads, expected["grads"]))
        for update in reference["updates"]:
            criterion.after_step(update)
    state = criterion.state_dict()
    assert state.keys() == reference["final_state"].keys()
    assert all(_close(state[k], v) for k, v in reference["final_state"].items())


def test_the_fixture_covers_every_preset_of_the_flat_layout():
    assert len(REFERENCE["criteria"]) == 14 and set(REFERENCE["criteria"]) <= set(PRESETS)
