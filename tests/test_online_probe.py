"""The online linear probe (``online_linear_probe``): a linear classifier on the encoder's detached features, trained
in every step by its own SGD. It must change nothing about the encoder's training (bit for bit, with BatchNorm,
gradient clipping and gradient accumulation), learn, leave unlabeled images out, resume exactly, round-trip through
checkpoints, and refuse the runs it cannot probe. Its DDP equivalence is a case of tests/test_distributed.py."""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Dict, Optional, Tuple

import attr
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from helpers import cpu_trainer, reloaded, tiny
from test_data import rgb, save
from test_resume import KILLED_AT, STEPS, assert_equal_states, run, small_encoder, state_of

from selfsup.config import BYOLParams, IJEPATinyParams, MAETinyParams, ModelParams
from selfsup.eval import online
from selfsup.eval.linear import LinearClassifierMethod
from selfsup.eval.online import OnlineLinearProbe
from selfsup.train.module import ENCODER, SelfSupervisedMethod

PROBE = "online_probe."


def fitted(params: ModelParams, **trainer: Any) -> pl.Trainer:
    """A seeded fit of ``params`` on the BatchNorm encoder of test_resume (its dropout draws from the global RNG)."""
    pl.seed_everything(params.seed, verbose=False)
    fit = cpu_trainer(limit_val_batches=0, num_sanity_val_steps=0, **trainer)
    fit.fit(SelfSupervisedMethod(params, backbone=small_encoder()))
    return fit


def probe_optimizer_state(trainer: pl.Trainer) -> Dict[str, torch.Tensor]:
    state = trainer.lightning_module.online_probe.optimizer.state_dict()["state"]
    return {f"probe optimizer.{i}.{k}": v for i, values in state.items() for k, v in values.items()}


# name: (params, Trainer arguments). MoCo: queue, EMA target, batched views; a gradient_clip_norm far below the
# gradient's norm clips every step, so a probe counted in the norm would change every update. BYOL: LARS, BatchRenorm
# heads, and gradient accumulation, whose micro-batches accumulate the probe's gradient too.
UNCHANGED: Dict[str, Callable[[], Tuple[ModelParams, Dict[str, Any]]]] = {
    "MoCo, BatchNorm encoder, clipped gradient": lambda: (tiny(ModelParams, embedding_dim=32,
                                                               gradient_clip_norm=0.01), {}),
    "BYOL, accumulated gradient": lambda: (tiny(BYOLParams, embedding_dim=32, mlp_normalization="br"),
                                           dict(accumulate_grad_batches=2)),
}


@pytest.mark.parametrize("name", sorted(UNCHANGED))
def test_the_probe_changes_nothing_the_encoder_and_the_method_learn(name):
    params, trainer = UNCHANGED[name]()
    without = fitted(params, **trainer)
    with_probe = fitted(attr.evolve(params, online_linear_probe=True), **trainer)
    plain = state_of(without)
    probed = state_of(with_probe)
    assert not [key for key in plain if key.startswith(f"module.{PROBE}")]  # off: the state of before
    assert_equal_states({k: v for k, v in probed.items() if not k.startswith(f"module.{PROBE}")}, plain)
    assert without.global_step == with_probe.global_step > 0
    weights = with_probe.lightning_module.online_probe.linear.weight
    assert bool(weights.abs().sum() > 0)  # and the probe did train
    assert set(probe_optimizer_state(with_probe)) == {"probe optimizer.0.momentum_buffer",
                                                      "probe optimizer.1.momentum_buffer"}


def test_the_probe_alone_separates_linearly_separable_classes():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(64, 8, generator=generator)
    labels = (features[:, 0] > 0).long()
    features[:, 0] += 2 * labels - 1  # a margin of 2 along the first axis
    rng = torch.get_rng_state()
    probe = OnlineLinearProbe(8, 2, lr=0.1)
    assert torch.equal(torch.get_rng_state(), rng)  # zero-initialized: the run's random draws stay the same
    before = probe.eval().accuracy(features, labels)  # as in validation: the BatchNorm's running statistics
    probe.train()
    for _ in range(50):
        loss, _ = probe(features, labels)
        loss.backward()
        probe.step(None)
    assert before is not None and before < 100
    assert probe.eval().accuracy(features, labels) == 100.0
    assert all(p.grad is None for p in probe.parameters())  # each step drops the gradient it used
    momentum = probe.double().optimizer.state[probe.linear.weight]["momentum_buffer"]
    assert momentum.dtype == torch.float64  # the optimizer's state follows the module, as its weights do


def test_unlabeled_rows_add_nothing_to_the_loss_and_the_accuracy():
    generator = torch.Generator().manual_seed(0)
    probe = OnlineLinearProbe(4, 3, lr=0.1)
    with torch.no_grad():
        probe.linear.weight.copy_(torch.randn(3, 4, generator=generator))
    features = torch.randn(6, 4, generator=generator)
    labels = torch.tensor([0, 2, -1, 1, -1, 2])
    loss, metrics = probe(features, labels)
    labelled = labels >= 0
    logits = probe.logits(features)[labelled]  # standardized with the statistics of the whole batch
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels[labelled]))
    expected = 100.0 * (logits.argmax(dim=1) == labels[labelled]).float().mean()
    torch.testing.assert_close(metrics["step_online_linear_acc"], expected)
    assert probe.accuracy(features, labels) == pytest.approx(float(expected))  # training mode: the same logits

    loss, metrics = probe(features, torch.full((6,), -1))
    loss.backward()
    assert float(loss.detach()) == 0.0 and all(bool(torch.isfinite(v)) for v in metrics.values())
    assert all(bool((p.grad == 0).all()) for p in probe.parameters())
    assert probe.accuracy(features, torch.full((6,), -1)) is None


def test_processes_with_different_labelled_counts_average_to_the_global_batch_gradient(monkeypatch):
    # Two processes hold 3 and 1 labelled images of 4: DDP's average of their gradients must be the gradient of the
    # mean loss over the 4 labelled images of the global batch (in eval mode, so the BatchNorm's statistics are the
    # same for one batch or two).
    generator = torch.Generator().manual_seed(0)
    probe = OnlineLinearProbe(4, 3, lr=0.1).eval()
    with torch.no_grad():
        probe.linear.weight.copy_(torch.randn(3, 4, generator=generator))
    features = torch.randn(8, 4, generator=generator)
    labels = torch.tensor([0, 2, -1, 1, -1, -1, 2, -1])
    halves = [(features[:4], labels[:4]), (features[4:], labels[4:])]
    counts = torch.tensor([float((y >= 0).sum()) for _, y in halves])
    monkeypatch.setattr(online.distributed, "world_size", lambda: 2)
    monkeypatch.setattr(online.distributed, "all_reduce_sum", lambda count: counts.sum())
    averaged = []
    for x, y in halves:
        probe.zero_grad()
        probe(x, y)[0].backward()
        averaged.append(probe.linear.weight.grad.clone())
    monkeypatch.undo()
    probe.zero_grad()
    probe(features, labels)[0].backward()
    torch.testing.assert_close((averaged[0] + averaged[1]) / 2, probe.linear.weight.grad)


def test_under_a_grad_scaler_the_probe_steps_on_the_unscaled_gradient_and_skips_an_overflow():
    features, labels = torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 2
    plain, scaled = OnlineLinearProbe(4, 2, lr=0.1), OnlineLinearProbe(4, 2, lr=0.1)
    plain(features, labels)[0].backward()
    plain.step(None)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaler.scale(scaled(features, labels)[0]).backward()
    scaled.step(scaler)
    scaler.update()  # as the main step does after it
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), scaled.parameters()))  # powers of 2: exact
    scaler.scale(scaled(features * float("inf"), labels)[0]).backward()
    scaled.step(scaler)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), scaled.parameters()))


def test_a_run_with_the_probe_resumed_mid_epoch_continues_exactly(tmp_path):
    params = tiny(ModelParams, embedding_dim=32, online_linear_probe=True)
    straight = run(params, str(tmp_path / "straight"))
    killed = run(params, str(tmp_path / "killed"), kill_at=KILLED_AT)
    assert killed.global_step == KILLED_AT
    resumed = run(params, str(tmp_path / "resumed"), ckpt_path=str(tmp_path / "killed" / "step=6.ckpt"))
    assert resumed.global_step == straight.global_step == STEPS
    expected = {**state_of(straight), **probe_optimizer_state(straight)}
    assert_equal_states({**state_of(resumed), **probe_optimizer_state(resumed)}, expected)
    assert any(key.startswith(f"module.{PROBE}") for key in expected)


def test_a_checkpoint_with_the_probe_loads_into_pretraining_and_into_the_linear_probe(tmp_path):
    params = tiny(ModelParams, online_linear_probe=True)
    pl.seed_everything(0, verbose=False)
    trainer = cpu_trainer(num_sanity_val_steps=0)
    trainer.fit(SelfSupervisedMethod(params))
    assert {"online_linear_acc", "step_online_linear_acc", "step_online_linear_loss"} <= trainer.callback_metrics.keys()
    path = tmp_path / "probe.ckpt"
    loaded = reloaded(trainer, path)  # every tensor of the state, the probe's weights included
    saved = trainer.lightning_module.online_probe.optimizer.state_dict()
    restored = loaded.online_probe.optimizer.state_dict()
    assert saved["state"].keys() == restored["state"].keys() and saved["state"]
    assert all(torch.equal(saved["state"][i]["momentum_buffer"], restored["state"][i]["momentum_buffer"])
               for i in saved["state"])

    linear = LinearClassifierMethod.from_moco_checkpoint(path, batch_size=8, max_epochs=1)
    encoder = trainer.lightning_module.state_dict()
    assert all(torch.equal(v, encoder[ENCODER + k]) for k, v in linear.model.state_dict().items())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's notes on loading a checkpoint without its Trainer
        without = SelfSupervisedMethod.load_from_checkpoint(path, online_linear_probe=False)
    assert not [key for key in without.state_dict() if key.startswith(PROBE)]
    assert all(torch.equal(v, encoder[k]) for k, v in without.state_dict().items())


def checkpoint_of_before(path: str, online_linear_probe: Optional[bool]) -> SelfSupervisedMethod:
    """A checkpoint as written before the probe existed (no probe fields, weights or optimizer), loaded back (with
    ``online_linear_probe`` set, unless None)."""
    model = SelfSupervisedMethod(tiny(ModelParams))
    hparams = {k: v for k, v in model.hparams.items() if not k.startswith("online_linear")}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams,
                "pytorch-lightning_version": pl.__version__}, path)
    overrides = {} if online_linear_probe is None else {"online_linear_probe": online_linear_probe}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = SelfSupervisedMethod.load_from_checkpoint(path, **overrides)
    assert not [w for w in caught if "online_linear" in str(w.message)]
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    return loaded


def test_a_checkpoint_from_before_the_probe_loads_silently_without_it_or_with_a_fresh_one(tmp_path):
    old = checkpoint_of_before(str(tmp_path / "old.ckpt"), None)
    assert not old.params.online_linear_probe
    probed = checkpoint_of_before(str(tmp_path / "old.ckpt"), True)
    assert not bool(probed.online_probe.linear.weight.any())


@pytest.mark.parametrize("preset", [MAETinyParams, IJEPATinyParams])
def test_a_masked_image_method_cannot_have_the_probe(preset):
    with pytest.raises(ValueError, match=r"ModelParams.online_linear_probe: loss_type='(mae|ijepa)' trains "
                                         r"(MAEStep|IJEPAStep), whose output has no encoder embeddings of whole views"):
        SelfSupervisedMethod(tiny(preset, online_linear_probe=True))


def test_an_unlabeled_image_folder_cannot_have_the_probe(tmp_path):
    for i in range(4):
        save(os.path.join(tmp_path, "train", f"{i}.png"), rgb(24, 24, seed=i))
    params = tiny(ModelParams, dataset_name="imagefolder", data_path=str(tmp_path), online_linear_probe=True)
    with pytest.raises(ValueError, match="ModelParams.online_linear_probe: dataset_name='imagefolder' has no classes"):
        SelfSupervisedMethod(params)
