"""Long runs: exact resume (MoCo, BYOL, SimCLR; at an epoch boundary and mid-epoch), atomic and checked checkpoint
files, the non-finite loss guard, the collapse monitor and seeding.

Resume equivalence: one run of N = 8 steps (2 epochs of 4) straight, and one run that is killed at the start of step
6 after the Trainer's checkpoints were written (epoch end: step 4, mid-epoch: steps 3 and 6); fresh module and Trainer
objects resume from a checkpoint and finish the 8 steps. Every tensor of the module state (weights, EMA target, queue
and pointer, BatchNorm counters) and of the optimizer state must be exactly equal to the straight run's.
"""

from __future__ import annotations

import os
import shutil
import warnings
from typing import Any, Callable, Dict, List

import attr
import pytest
import pytorch_lightning as pl
import torch
from helpers import cpu_trainer, tiny
from pytorch_lightning.callbacks import ModelCheckpoint
from test_shards import write as write_shards
from torch import nn

from selfsup import data
from selfsup.cli import train
from selfsup.config import BYOLParams, DINOParams, MAETinyParams, ModelParams, SimCLRParams
from selfsup.nn.vit import is_timm
from selfsup.train import checkpoints, health
from selfsup.train.module import SelfSupervisedMethod
from selfsup.train.pipeline import pretrain_datasets


class Killed(Exception):
    """Stands for the process being killed."""


class KillAtStep(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            raise Killed


def small_encoder() -> nn.Module:
    """A two-layer convolutional encoder with BatchNorm, [B, 3, 32, 32] -> [B, 32]: fast, and stateful like a ResNet.
    Its dropout draws from torch's global RNG, which a resume must therefore restore."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Dropout(0.1),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


# MoCo: queue + EMA key encoder, SGD, the default (batched) augmentations. BYOL: LARS, cosine momentum schedule,
# BatchRenorm heads (step counters), per-step LR warmup. SimCLR: in-batch negatives, the per-image ("pil")
# augmentations in two worker processes. DINO: per-epoch teacher temperature, center buffer, multi-crop. MoCo on
# shards: litdata's streaming loader, from shards of a generated folder (39 training images: 4 batches an epoch).
# MAE: a ViT (stochastic depth draws from the global RNG), per-step masks, AdamW and its schedules.
# Each makes its params in a folder of its own (the shards' home).
METHODS: Dict[str, Callable[[str], ModelParams]] = {
    "moco": lambda _: tiny(ModelParams, embedding_dim=32),
    "byol": lambda _: tiny(BYOLParams, embedding_dim=32, lars_warmup_epochs=0.5, mlp_normalization="br"),
    "simclr": lambda _: tiny(SimCLRParams, embedding_dim=32, augmentation_backend="pil", num_data_workers=2),
    "dino": lambda _: tiny(DINOParams, embedding_dim=32, teacher_temperature_warmup_epochs=2),
    "moco_shards": lambda root: tiny(ModelParams, embedding_dim=32, dataset_name="shards",
                                     data_path=write_shards(root)),
    "mae": lambda _: tiny(MAETinyParams, lars_warmup_epochs=0.5, final_weight_decay=0.2, gradient_clip_norm=1.0,
                          drop_path_rate=0.1),
}
STEPS, KILLED_AT = 8, 6
RESUME_FROM = {"epoch boundary": "epoch=0-step=4.ckpt", "mid-epoch": "step=6.ckpt"}


def run(params: ModelParams, directory: str, ckpt_path: Any = None, kill_at: Any = None,
        max_epochs: int = 2) -> pl.Trainer:
    """Fit for ``max_epochs`` (2) epochs as train.py does (seeded, atomic checkpoints at every epoch end), plus a
    checkpoint every 3 steps; returns the Trainer (its module is trainer.lightning_module)."""
    pl.seed_everything(params.seed, verbose=False)
    model = SelfSupervisedMethod(params, backbone=None if is_timm(params.encoder_arch) else small_encoder())
    callbacks: List[pl.Callback] = [*checkpoints.checkpoint_callbacks(directory, every_n_epochs=1),
                                    ModelCheckpoint(dirpath=directory, filename="{step}", every_n_train_steps=3,
                                                    save_top_k=-1, enable_version_counter=False)]
    if kill_at is not None:
        callbacks.append(KillAtStep(kill_at))
    trainer = cpu_trainer(max_epochs=max_epochs, limit_val_batches=0, num_sanity_val_steps=0, callbacks=callbacks,
                          enable_checkpointing=True, plugins=[checkpoints.AtomicCheckpointIO()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's notes on small data sets and non-empty checkpoint folders
        try:
            trainer.fit(model, ckpt_path=ckpt_path)
        except Killed:
            pass
    return trainer


def state_of(trainer: pl.Trainer) -> Dict[str, torch.Tensor]:
    """Module state and optimizer state, flattened to name -> tensor."""
    state = {f"module.{k}": v for k, v in trainer.lightning_module.state_dict().items()}
    optimizer = trainer.optimizers[0].state_dict()
    for index, values in optimizer["state"].items():
        state.update({f"optimizer.{index}.{k}": v for k, v in values.items() if isinstance(v, torch.Tensor)})
    return state


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Dict[str, Any]]:
    """Per method: the params, the straight run's final state and checkpoints, the killed run's checkpoint folder."""
    out = {}
    for name, make in METHODS.items():
        root = tmp_path_factory.mktemp(name)
        params = make(str(root))
        straight = run(params, str(root / "straight"))
        assert straight.global_step == STEPS
        killed = run(params, str(root / "killed"), kill_at=KILLED_AT)
        assert killed.global_step == KILLED_AT
        out[name] = dict(params=params, final=state_of(straight), straight=str(root / "straight"),
                         killed=str(root / "killed"))
    return out


def assert_equal_states(actual: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    different = [k for k in expected if not torch.equal(actual[k], expected[k])]
    assert not different, f"{len(different)} of {len(expected)} tensors differ, e.g. {different[:5]}"


@pytest.mark.parametrize("point", sorted(RESUME_FROM))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_resume_continues_exactly_like_the_uninterrupted_run(runs, method, point, tmp_path):
    setup = runs[method]
    checkpoint = os.path.join(setup["killed"], RESUME_FROM[point])
    resumed = run(setup["params"], str(tmp_path), ckpt_path=checkpoint)
    assert resumed.global_step == STEPS
    assert_equal_states(state_of(resumed), setup["final"])
    module = resumed.lightning_module
    memory = getattr(module.step, "memory", None)
    if memory is not None:
        assert int(memory.ptr) == STEPS * 8 % module.params.K


def test_a_run_resumed_with_more_epochs_follows_the_schedule_of_the_new_length(runs, tmp_path):
    params = runs["moco"]["params"]
    short = run(attr.evolve(params, max_epochs=1), str(tmp_path / "short"), max_epochs=1)
    assert short.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # the end of its cosine
    extended = run(params, str(tmp_path / "extended"), ckpt_path=str(tmp_path / "short" / "last.ckpt"),
                   kill_at=KILLED_AT)
    reference = torch.load(os.path.join(runs["moco"]["killed"], "step=6.ckpt"), weights_only=False)
    assert extended.lr_scheduler_configs[0].scheduler.get_last_lr() == reference["lr_schedulers"][0]["_last_lr"]
    assert extended.optimizers[0].param_groups[0]["lr"] > 0


def loader_batches(params: ModelParams, workers: int, resume: Any = None) -> List[torch.Tensor]:
    """The first view of every batch of two epochs (or of what is left after ``resume``)."""
    dataset, _ = pretrain_datasets(params)
    loader = data.make_loader(dataset, batch_size=8, shuffle=True, drop_last=True, num_workers=workers,
                              pin_memory=False, seed=params.seed)
    if resume is not None:
        loader.load_state_dict(resume)
    out = []
    for epoch in range(resume["epoch"] if resume else 0, 2):
        loader.sampler.set_epoch(epoch)
        out += [views[0] for views, _ in loader]
    return out


def test_training_views_depend_only_on_seed_epoch_and_position():
    params = METHODS["simclr"]("")  # per-image augmentations
    alone = loader_batches(params, workers=0)
    assert len(alone) == 8 and len({batch.sum().item() for batch in alone}) == 8
    assert all(torch.equal(a, b) for a, b in zip(alone, loader_batches(params, workers=2)))
    resumed = loader_batches(params, workers=2, resume={"epoch": 1, "consumed": 16})
    assert len(resumed) == 2 and all(torch.equal(a, b) for a, b in zip(resumed, alone[6:]))


def test_two_runs_with_the_same_seed_are_identical_and_another_seed_differs(runs):
    setup = runs["moco"]
    straight, killed = (torch.load(os.path.join(setup[run], "step=6.ckpt"), weights_only=False)["state_dict"]
                        for run in ("straight", "killed"))
    assert all(torch.equal(straight[k], killed[k]) for k in straight)
    pl.seed_everything(1, verbose=False)
    other = SelfSupervisedMethod(attr.evolve(setup["params"], seed=1), backbone=small_encoder()).state_dict()
    assert not torch.equal(other["model.0.weight"], straight["model.0.weight"])


def test_a_killed_save_leaves_the_previous_file_and_a_truncated_one_is_named(runs, tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    shutil.copytree(runs["moco"]["killed"], folder)
    last = str(folder / "last.ckpt")
    before = torch.load(last, weights_only=False)["global_step"]

    def killed_while_writing(obj: Any, f: Any) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")
        raise Killed

    monkeypatch.setattr(checkpoints.torch, "save", killed_while_writing)
    with pytest.raises(Killed):
        checkpoints.atomic_save({"global_step": 99}, last)
    monkeypatch.undo()
    assert torch.load(last, weights_only=False)["global_step"] == before  # still the complete previous file
    assert sorted(os.listdir(folder)) == sorted(os.listdir(runs["moco"]["killed"]))  # no temporary file left

    truncated = folder / "step=6.ckpt"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    with pytest.raises(checkpoints.CheckpointError,
                       match=r"step=6\.ckpt cannot be resumed from: the file is truncated"):
        train.resume_path(str(truncated), str(folder))
    with pytest.raises(checkpoints.CheckpointError, match=r"step=6\.ckpt"):
        cpu_trainer(plugins=[checkpoints.AtomicCheckpointIO()]).fit(
            SelfSupervisedMethod(runs["moco"]["params"], backbone=small_encoder()), ckpt_path=str(truncated))
    os.utime(truncated)  # the newest file, but incomplete: auto skips it
    with pytest.warns(UserWarning, match=r"skipping truncated or corrupt checkpoints: .*step=6\.ckpt"):
        chosen = train.resume_path("auto", str(folder))
    assert os.path.basename(chosen) != "step=6.ckpt" and checkpoints.is_complete_checkpoint(chosen)
    assert train.resume_path("auto", str(tmp_path / "none")) is None


class PoisonAt(pl.Callback):
    """Sets one projection weight to NaN before the batch of global step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(module.step.projection.parameters()).view(-1)[0] = float("nan")


def test_a_non_finite_loss_stops_training_naming_the_step_and_no_checkpoint_follows(tmp_path):
    model = SelfSupervisedMethod(METHODS["moco"](""), backbone=small_encoder())
    saver = ModelCheckpoint(dirpath=str(tmp_path), filename="{step}", every_n_train_steps=1, save_top_k=-1)
    trainer = cpu_trainer(max_epochs=1, limit_val_batches=0, callbacks=[PoisonAt(2), saver], enable_checkpointing=True,
                          plugins=[checkpoints.AtomicCheckpointIO()])
    with pytest.raises(health.NonFiniteError, match=r"non-finite loss at global step 2 \(epoch 0\): "
                                                     r"step_train_loss=nan, .*the last good checkpoint is .*step=2"):
        trainer.fit(model)
    assert sorted(os.listdir(tmp_path)) == ["step=1.ckpt", "step=2.ckpt"]
    # the weights are NaN now: no checkpoint gets written, whoever asks
    with pytest.raises(health.NonFiniteError, match=r"refusing to write a checkpoint at global step 3: non-finite "
                                                     r"values in model\.0\.weight, .* and \d+ more\. The last good "
                                                     r"checkpoint is .*step=2\.ckpt"):
        trainer.save_checkpoint(tmp_path / "later.ckpt")
    assert not (tmp_path / "later.ckpt").exists()


class Constant(nn.Module):
    """A collapsed encoder: the same (learnable) embedding for every image."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding.expand(x.shape[0], -1)


@pytest.mark.parametrize("collapsed", [True, False])
def test_collapse_warning_fires_on_a_constant_encoder_only(collapsed):
    params = tiny(ModelParams, embedding_dim=32, collapse_patience_steps=2, lr=0.01)
    model = SelfSupervisedMethod(params, backbone=Constant(32) if collapsed else small_encoder())
    trainer = cpu_trainer(max_epochs=1, limit_val_batches=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model)
    collapse = [w for w in caught if issubclass(w.category, health.CollapseWarning)]
    std = float(trainer.callback_metrics[health.EMBEDDING_STD_METRIC])
    if collapsed:
        assert std == 0.0 and len(collapse) == 1
        assert "stayed below 0.0177 (0.1 / sqrt(32); about 0.177 when healthy) for 2 steps" in str(collapse[0].message)
    else:
        assert std > 0.1 / 32**0.5 and not collapse


def test_train_py_resume_auto_starts_afresh_then_continues(tmp_path):
    argv = ["--preset", "moco_v2", "--dataset_name", "synthetic", "--synthetic_train_size", "16", "--batch_size", "8",
            "--encoder_arch", "mobilenet_v3_small", "--embedding_dim", "576", "--K", "32", "--mlp_hidden_dim", "64",
            "--dim", "32", "--use_cifar_stem", "false", "--num_data_workers", "0", "--accelerator", "cpu",
            "--limit_val_batches", "0", "--root_dir", str(tmp_path), "--resume", "auto"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train.main(argv + ["--max_epochs", "1"])
        assert sorted(os.listdir(tmp_path / "checkpoints")) == ["last.ckpt"]
        path = train.main(argv + ["--max_epochs", "2"])
    assert torch.load(path, weights_only=False)["global_step"] == 4
