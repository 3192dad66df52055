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
from selfsup.methods import PairStep
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


# The criteria whose loss changed on purpose after the fixtures were written, and the fields that give the old one.
CRITERION_CHANGED_SINCE_FIXTURE: Dict[str, Dict[str, Any]] = {
    # VICReg's variance term follows the official code (the mean of the branches) since issue 24; the paper's sum
    # is the option the fixture used.
    "vicreg": dict(vicreg_variance_reduction="sum"),
}


def _rows(state: Dict[str, Any]) -> Dict[str, Any]:
    """A state with each memory slot's rows as a sorted list: the pre-v2 queue kept its rows newest first, the
    memory's ring keeps them in write order, and neither order matters to a loss."""
    return {k: [sorted(map(tuple, slot)) for slot in v.tolist()] if k == "memory.rows" else v
            for k, v in state.items()}


@pytest.mark.parametrize("name", sorted(REFERENCE["criteria"]))
def test_every_criterion_gives_the_legacy_losses_gradients_and_state(name):
    """The pre-v2 criteria got the queue as an input [D, K] (MoCo, NNCLR) or kept SwAV's feature queue themselves;
    the step's memory holds both now, so the inputs and the state are carried over through the checkpoint upgrade."""
    reference = REFERENCE["criteria"][name]
    params = attrs.evolve(small_params(name), **CRITERION_CHANGED_SINCE_FIXTURE.get(name, {}))

    def step_with(criterion_state: Dict[str, Any]) -> Any:
        torch.manual_seed(0)
        step = SelfSupervisedMethod(params, backbone=small_encoder()).step.double()
        missing, unexpected = step.load_state_dict({f"criterion.{k}": v for k, v in criterion_state.items()},
                                                   strict=False)
        assert not unexpected and not any(k.startswith("criterion.") for k in missing)
        return step

    step = step_with(reference["initial_state"])
    criterion, memory = step.criterion, step.memory
    leaf = lambda views: [None if v is None else v.clone().requires_grad_() for v in views]  # noqa: E731
    queries, keys = leaf(reference["queries"]), leaf(reference["keys"])
    columns = None if reference["memory"] is None else reference["memory"].clone().requires_grad_()
    step.set_epoch(0)
    for expected in reference["passes"]:
        given = memory.read() if columns is None and memory is not None else columns
        read = given if columns is None else columns.T[None]  # [D, K] key columns as one slot of rows
        out = criterion(queries, keys, read, reference["labels"])
        tensors = [t for t in (*queries, *keys, columns) if t is not None]
        grads = torch.autograd.grad(out.loss, tensors, allow_unused=True)
        assert _close(out.loss.detach(), expected["loss"])
        assert out.metrics.keys() == expected["metrics"].keys()
        assert all(_close(out.metrics[k].detach(), v) for k, v in expected["metrics"].items())
        assert len(grads) == len(expected["grads"]) and all(map(_close, grads, expected["grads"]))
        for update in reference["updates"]:
            if columns is None and memory is not None:
                memory.write(update)
            criterion.after_step(PairStep(queries, update, read, reference["labels"]), out)
    state = _rows({k: v for k, v in step.state_dict().items() if k.startswith(("criterion.", "memory."))})
    expected_state = _rows({k: v for k, v in step_with(reference["final_state"]).state_dict().items()
                            if k.startswith(("criterion.", "memory."))})
    if columns is not None:  # the pre-v2 MoCo and NNCLR criteria held no memory: their step's stays empty
        expected_state = {k: v for k, v in expected_state.items() if not k.startswith("memory.")}
        state = {k: v for k, v in state.items() if not k.startswith("memory.")}
    assert state.keys() == expected_state.keys()
    assert all(state[k] == v if k == "memory.rows" else _close(state[k], v) for k, v in expected_state.items())


def test_a_legacy_swav_state_without_a_feature_queue_loads_into_a_step_without_memory():
    params = attrs.evolve(small_params("swav"), swav_queue_length=0)
    step = SelfSupervisedMethod(params, backbone=small_encoder()).step
    state = {k: v for k, v in step.state_dict().items() if not k.startswith("criterion.")}
    state.update({"criterion.prototypes.weight": step.criterion.prototypes.weight.detach().clone(),
                  "criterion.feature_queue": torch.zeros(2, 0, params.dim), "criterion.queue_filled": torch.tensor(0)})
    assert step.memory is None
    step.load_state_dict(state)  # strict: the empty queue leaves nothing behind


def test_a_checkpoint_written_before_a_field_existed_warns_when_it_would_change_the_run():
    """VICReg's variance term follows the official code since vicreg_variance_reduction exists; a checkpoint without
    the field ran the paper's form."""
    model = SelfSupervisedMethod(small_params("vicreg"), backbone=small_encoder())
    saved = {name: value for name, value in attrs.asdict(model.params).items() if name != "vicreg_variance_reduction"}
    with pytest.warns(UserWarning, match="before ModelParams.vicreg_variance_reduction existed.*set "
                                         "vicreg_variance_reduction='sum'"):
        model.on_load_checkpoint({"hyper_parameters": saved})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.on_load_checkpoint({"hyper_parameters": attrs.asdict(model.params)})


def test_the_fixture_covers_every_preset_of_the_flat_layout():
    assert len(REFERENCE["criteria"]) == 14 and set(REFERENCE["criteria"]) <= set(PRESETS)
