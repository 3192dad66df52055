"""SelfSupervisedMethod end to end on CPU: every preset through pl.Trainer, checkpoints, hooks and schedules."""

from __future__ import annotations

import math
from typing import Any, List

import attr
import pytest
import pytorch_lightning as pl
import torch
from helpers import cpu_trainer, reloaded, tiny

from selfsup import distributed
from selfsup.config import PRESETS, BYOLParams, ModelParams, SimCLRParams, VICRegParams, make_params
from selfsup.methods.steps import Progress
from selfsup.train.module import SelfSupervisedMethod


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_trains_and_round_trips_through_a_checkpoint(name, tmp_path):
    params = tiny(PRESETS[name])
    model = SelfSupervisedMethod(params)
    trainer = cpu_trainer(fast_dev_run=True)
    trainer.fit(model)
    loss = trainer.callback_metrics["step_train_loss"]
    assert torch.isfinite(loss)
    loaded = reloaded(trainer, tmp_path / "model.ckpt")
    assert loaded.params == params
    restored = loaded.state_dict()
    if params.uses_queue:
        assert {"step.memory.rows", "step.memory.ptr", "step.memory.filled"} <= set(restored)
    if params.use_lagging_model:  # the EMA encoder: a joint-embedding step's target, or I-JEPA's
        assert any(k.startswith(("step.target.encoder.", "step.target_encoder.")) for k in restored)


def test_constructor_forms_apply_every_override():
    params = tiny(BYOLParams)
    assert SelfSupervisedMethod(params).params == params
    assert SelfSupervisedMethod(params, lr=0.05).params == attr.evolve(params, lr=0.05)
    assert SelfSupervisedMethod(attr.asdict(params)).params == params
    assert SelfSupervisedMethod(**attr.asdict(params)).params == params
    with pytest.raises(ValueError, match="no field 'learning_rate'"):
        SelfSupervisedMethod(params, learning_rate=0.1)
    with pytest.raises(ValueError, match="ModelParams.T: got -1"):
        SelfSupervisedMethod(params, T=-1)


def test_embedding_dim_is_checked_against_the_encoder():
    with pytest.raises(
        ValueError,
        match=r"embedding_dim is 512 but the encoder \(ResNet\) outputs 2048 features; set embedding_dim=2048",
    ):
        SelfSupervisedMethod(tiny(ModelParams, encoder_arch="resnet50"))


def test_cifar_stem_default_follows_image_size_and_can_be_forced():
    small = SelfSupervisedMethod(tiny(ModelParams, use_cifar_stem=None))
    assert small.model.conv1.kernel_size == (3, 3) and small.model.conv1.stride == (1, 1)
    assert small.model.conv1.padding == (1, 1) and isinstance(small.model.maxpool, torch.nn.Identity)
    forced_off = SelfSupervisedMethod(tiny(ModelParams, use_cifar_stem=False))
    assert forced_off.model.conv1.kernel_size == (7, 7)


def test_forward_returns_encoder_embeddings_and_project_the_projection():
    model = SelfSupervisedMethod(tiny(ModelParams)).eval()
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 512)
    assert model.project(x).shape == (2, 32)


class Recorder(pl.Callback):
    """Records what happens around each training batch."""

    def __init__(self) -> None:
        self.lrs: List[float] = []
        self.target_before: List[List[torch.Tensor]] = []
        self.target_after_step: List[List[torch.Tensor]] = []
        self.online_after_step: List[List[torch.Tensor]] = []
        self.queue_ptr: List[int] = []

    def on_train_batch_start(self, trainer: pl.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
        self.target_before.append([p.detach().clone() for p in module.step.target.parameters()])

    def on_train_batch_end(self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        # After the optimizer step, the EMA step and the enqueue: callbacks see the finished step's state.
        self.target_after_step.append([p.detach().clone() for p in module.step.target.parameters()])
        self.online_after_step.append(
            [p.detach().clone() for m in (module.model, module.step.projection) for p in m.parameters()]
        )
        if module.step.memory is not None:
            self.queue_ptr.append(int(module.step.memory.ptr))


def test_ema_update_follows_each_optimizer_step_with_the_scheduled_momentum():
    params = tiny(BYOLParams, synthetic_train_size=32, max_epochs=1)  # 4 steps, cosine m from .996 to 1
    model = SelfSupervisedMethod(params)
    recorder = Recorder()
    cpu_trainer(callbacks=[recorder], limit_val_batches=0).fit(model)
    total = 4
    for step in range(total):
        m = 1 - (1 - params.m) * (1 + math.cos(math.pi * (step + 1) / total)) / 2
        for before, online, after in zip(
            recorder.target_before[step], recorder.online_after_step[step], recorder.target_after_step[step]
        ):
            assert torch.allclose(after, m * before + (1 - m) * online, atol=1e-6)


def test_ema_waits_for_the_optimizer_step_under_gradient_accumulation():
    model = SelfSupervisedMethod(tiny(ModelParams))
    recorder = Recorder()
    cpu_trainer(callbacks=[recorder], limit_val_batches=0, accumulate_grad_batches=2).fit(model)
    unchanged = all(torch.equal(a, b) for a, b in zip(recorder.target_before[0], recorder.target_before[1]))
    changed = any(not torch.equal(a, b) for a, b in zip(recorder.target_before[1], recorder.target_before[2]))
    assert unchanged and changed


def test_queue_receives_one_batch_of_keys_per_step():
    model = SelfSupervisedMethod(tiny(ModelParams))
    recorder = Recorder()
    cpu_trainer(callbacks=[recorder], limit_val_batches=0).fit(model)
    # The callback sees the pointer after the step's enqueue: 8, 16, 24, 0 (4 steps of 8 keys into K=32).
    assert recorder.queue_ptr == [8, 16, 24, 0] and int(model.step.memory.ptr) == 0


def test_the_criterion_sees_the_memory_its_loss_read_before_the_step_writes_it():
    """The memory a step reads is a view of its rows; after the backward pass the criterion's after_step sees the
    step as the loss saw it, and only then do the step's keys replace the rows (K equals one batch here)."""
    model = SelfSupervisedMethod(tiny(ModelParams, K=8))
    step = model.step
    step.memory.write([None, torch.nn.functional.normalize(torch.randn(8, 32), dim=1)])
    seen = []
    step.criterion.after_step = lambda pair_step, output: seen.append(pair_step.memory.clone())
    views = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    out = step(model.model, views, torch.zeros(8, dtype=torch.long), Progress(0, 1))
    read = out.pair_step.memory.clone()
    step.after_backward(out, epoch=0)
    assert torch.equal(seen[0], read) and not torch.equal(step.memory.read(), read)


def test_lars_warmup_is_counted_in_epochs_and_applied_per_step():
    params = tiny(BYOLParams, lars_warmup_epochs=1, max_epochs=2, lr=0.4, final_lr_schedule_value=0.0)
    recorder = Recorder()
    cpu_trainer(callbacks=[recorder], limit_val_batches=0, max_epochs=2).fit(SelfSupervisedMethod(params))
    warmup = [0.1, 0.2, 0.3, 0.4]  # 4 steps per epoch: (step+1)/4 of lr
    cosine = [0.4 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)]
    assert recorder.lrs == pytest.approx(warmup + cosine)


def test_no_extra_train_mode_forward_passes():
    """Each BatchNorm / BatchRenorm sees exactly one train-mode forward per step (none for logging)."""
    model = SelfSupervisedMethod(tiny(BYOLParams, mlp_normalization="br"))
    cpu_trainer(limit_val_batches=0, max_steps=3).fit(model)
    counters = {
        "encoder": model.model.bn1.num_batches_tracked,
        "projection": model.step.projection.net[1].num_batches_tracked,
        "prediction": model.step.prediction.net[1].num_batches_tracked,
        "target encoder": model.step.target.encoder.bn1.num_batches_tracked,
        "target projection": model.step.target.projection.net[1].num_batches_tracked,
    }
    assert {name: int(c) for name, c in counters.items()} == {name: 3 for name in counters}


def test_simclr_uses_one_online_pass_over_both_views_and_no_target_copy():
    model = SelfSupervisedMethod(tiny(SimCLRParams))
    assert model.step.online_views == [0, 1] and not list(model.step.target.parameters())
    vicreg = SelfSupervisedMethod(tiny(VICRegParams))
    assert vicreg.step.online_views == [0, 1] and vicreg.step.query_views == [0]


def test_single_process_distributed_flags_do_not_crash(monkeypatch):
    # the warning is once per process
    monkeypatch.setattr(distributed.collectives, "_warned_single_process_shuffle", False)
    params = tiny(ModelParams, shuffle_batch_norm=True, gather_keys_for_queue=True)
    model = SelfSupervisedMethod(params)
    with pytest.warns(UserWarning, match="shuffle_batch_norm has no effect in a single process"):
        cpu_trainer(fast_dev_run=True).fit(model)


def test_logged_metric_names():
    trainer = cpu_trainer(fast_dev_run=True)
    trainer.fit(SelfSupervisedMethod(tiny(ModelParams)))
    assert {
        "step_train_loss",
        "step_pos_cos",
        "step_neg_cos",
        "step_train_acc1",
        "step_train_acc5",
        "m",
        "T",
        "lr",
    } <= set(trainer.callback_metrics)
    trainer = cpu_trainer(fast_dev_run=True)
    trainer.fit(SelfSupervisedMethod(tiny(VICRegParams)))
    assert {"loss_invariance", "loss_variance", "loss_covariance"} <= set(trainer.callback_metrics)


def test_validation_probe_reports_accuracies():
    params = tiny(ModelParams, synthetic_val_size=64)
    trainer = cpu_trainer(limit_train_batches=1)
    trainer.fit(SelfSupervisedMethod(params))
    for name in ("train_class_acc", "valid_class_acc"):
        assert 0.0 <= float(trainer.callback_metrics[name]) <= 100.0


def test_make_params_accepts_model_params_with_overrides():
    assert make_params(ModelParams(), lr=0.3).lr == 0.3


def test_channels_last_keeps_names_and_outputs_and_reaches_the_momentum_copy():
    torch.manual_seed(0)
    fast = SelfSupervisedMethod(tiny(ModelParams, channels_last=True)).eval()
    plain = SelfSupervisedMethod(tiny(ModelParams, channels_last=False)).eval()
    plain.load_state_dict(fast.state_dict())
    assert fast.state_dict().keys() == plain.state_dict().keys()
    assert fast.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.step.target.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(fast(x), plain(x), atol=1e-5)
    assert torch.allclose(fast.step.target.encoder(x), plain.step.target.encoder(x), atol=1e-5)
