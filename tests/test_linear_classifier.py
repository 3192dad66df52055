"""The linear probe: checkpoints of every preset load into it, its encoder stays frozen, errors name the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List

import pytest
import pytorch_lightning as pl
import torch
from helpers import cpu_trainer, tiny
from test_docs import PROBE_PROGRAM, commands

from selfsup.cli import linear as linear_cli
from selfsup.cli.common import given_fields, migrate_argv
from selfsup.config import PRESETS, ModelParams
from selfsup.eval import probes
from selfsup.eval.linear import LinearClassifierMethod, LinearClassifierMethodParams, make_linear_params
from selfsup.train.module import SelfSupervisedMethod

PROBE = dict(batch_size=8, max_epochs=1)  # the tiny datasets of helpers.TINY, 4 probe steps per epoch


def pretrain(params: ModelParams, path: Path) -> pl.Trainer:
    trainer = cpu_trainer(fast_dev_run=True)
    trainer.fit(SelfSupervisedMethod(params))
    trainer.save_checkpoint(path)
    return trainer


def write_checkpoint(params: ModelParams, path: Path, **changes: Any) -> SelfSupervisedMethod:
    """A checkpoint with what trainer.save_checkpoint stores for the probe, without training; ``changes`` edit the
    state dict (None removes a key)."""
    model = SelfSupervisedMethod(params)
    state = model.state_dict()
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    torch.save({"state_dict": state, "hyper_parameters": dict(model.hparams)}, path)
    return model


def encoder_modes(module: torch.nn.Module) -> List[bool]:
    return [m.training for m in module.modules()]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_a_checkpoint_into_the_probe(name, tmp_path):
    path = tmp_path / "pretrained.ckpt"
    pretraining = pretrain(tiny(PRESETS[name]), path)
    probe = LinearClassifierMethod.from_moco_checkpoint(path, **PROBE)
    saved = torch.load(path, weights_only=True)["state_dict"]
    pretrained = {key[len("model.") :]: value for key, value in saved.items() if key.startswith("model.")}
    assert probe.model.state_dict().keys() == pretrained.keys()
    assert all(torch.equal(value, pretrained[key]) for key, value in probe.model.state_dict().items())
    # The probe sees the validation images as pretraining did (dataset, crop, normalization): the encoder of the
    # checkpoint reproduces the kNN accuracy logged on fast_dev_run's single validation batch.
    images, labels = next(iter(probe.val_dataloader()))
    knn = probes.half_split_knn_accuracy(probe.encode(images), labels, probe.params.data_seed)
    assert knn == pytest.approx(float(pretraining.callback_metrics["valid_knn_acc"]))

    trainer = cpu_trainer(limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(probe)
    metrics = trainer.callback_metrics
    names = ("step_train_loss", "step_train_acc1", "step_train_acc5", "valid_loss", "valid_acc1", "valid_acc5")
    assert set(names) <= set(metrics)
    assert all(torch.isfinite(metrics[n]) for n in names)
    assert 0 <= float(metrics["valid_acc1"]) <= float(metrics["valid_acc5"]) <= 100


def test_encoder_stays_frozen_in_eval_mode_with_unchanged_batchnorm_statistics(tmp_path):
    path = tmp_path / "pretrained.ckpt"
    write_checkpoint(tiny(ModelParams), path)
    probe = LinearClassifierMethod.from_moco_checkpoint(path, **PROBE)
    encoder_before = {k: v.clone() for k, v in probe.model.state_dict().items()}
    classifier_before = probe.classifier.weight.detach().clone()
    assert any(k.endswith("running_mean") for k in encoder_before)
    modes: List[List[bool]] = []

    class RecordModes(pl.Callback):
        def on_train_batch_start(self, trainer: pl.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
            modes.append(encoder_modes(module.model))

    trainer = cpu_trainer(max_epochs=2, limit_val_batches=1, callbacks=[RecordModes()])
    trainer.fit(probe)
    assert len(modes) == 8 and not any(any(step) for step in modes)
    assert probe.classifier.training  # only the encoder is pinned to eval mode
    assert all(torch.equal(value, encoder_before[key]) for key, value in probe.model.state_dict().items())
    assert not torch.equal(probe.classifier.weight, classifier_before)
    assert not any(p.requires_grad for p in probe.model.parameters())
    trainer.save_checkpoint(tmp_path / "probe.ckpt")  # the probe itself round-trips through its own checkpoint
    restored = LinearClassifierMethod.load_from_checkpoint(tmp_path / "probe.ckpt")
    assert restored.params == probe.params and torch.equal(restored.classifier.weight, probe.classifier.weight)


def test_precomputed_features_train_the_same_classifier(tmp_path):
    path = tmp_path / "pretrained.ckpt"
    write_checkpoint(tiny(ModelParams), path)
    results = []
    for precompute in (False, True):
        pl.seed_everything(0)
        probe = LinearClassifierMethod.from_moco_checkpoint(path, lr=1.0, precompute_features=precompute, **PROBE)
        trainer = cpu_trainer(num_sanity_val_steps=0)
        trainer.fit(probe)
        results.append((probe.classifier.weight.detach(), float(trainer.callback_metrics["valid_loss"])))
    (images_weight, images_loss), (features_weight, features_loss) = results
    assert not torch.equal(images_weight, torch.zeros_like(images_weight))
    assert torch.allclose(images_weight, features_weight, rtol=1e-4, atol=1e-6)
    assert images_loss == pytest.approx(features_loss, rel=1e-4)


def test_stem_and_hidden_layer_come_from_the_checkpoint(tmp_path):
    # use_cifar_stem=None resolves to the CIFAR stem for the 32 px pretraining images; a probe on 96 px images (where
    # the default would be the ImageNet stem) still builds the encoder the weights belong to.
    path = tmp_path / "stem.ckpt"
    write_checkpoint(tiny(ModelParams, use_cifar_stem=None), path)
    probe = LinearClassifierMethod.from_moco_checkpoint(path, synthetic_image_size=96)
    assert probe.params.use_cifar_stem is True and probe.model.conv1.kernel_size == (3, 3)

    path = tmp_path / "hidden.ckpt"
    model = write_checkpoint(tiny(ModelParams, encoder_layer="layer3", embedding_dim=1024), path)
    probe = LinearClassifierMethod.from_moco_checkpoint(path)
    images = torch.randn(2, 3, 32, 32)
    model.eval()
    assert torch.allclose(probe.encode(images), model(images), atol=1e-4)
    assert probe.classifier.in_features == 1024


@pytest.mark.parametrize(
    "changes, overrides, message",
    [
        (
            {"model.layer4.1.bn2.running_mean": None, "model.fc.weight": torch.zeros(10, 512)},
            {},
            r"missing keys: model.layer4.1.bn2.running_mean; unexpected keys: model.fc.weight",
        ),
        (
            {},
            {"use_cifar_stem": True},
            r"different shapes: model.conv1.weight \(64, 3, 7, 7\) there, \(64, 3, 3, 3\) here",
        ),
    ],
)
def test_encoder_weights_that_do_not_fit_are_named(tmp_path, changes, overrides, message):
    path = tmp_path / "edited.ckpt"
    write_checkpoint(tiny(ModelParams), path, **changes)
    with pytest.raises(ValueError, match=rf"checkpoint {path}: .*{message}"):
        LinearClassifierMethod.from_moco_checkpoint(path, **overrides)


def test_missing_or_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"checkpoint {tmp_path / 'absent.ckpt'}: no such file"):
        LinearClassifierMethod.from_moco_checkpoint(tmp_path / "absent.ckpt")
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=f"checkpoint {text}: not a readable PyTorch checkpoint"):
        LinearClassifierMethod.from_moco_checkpoint(text)
    weights = tmp_path / "weights.ckpt"
    torch.save({"conv.weight": torch.zeros(1)}, weights)
    with pytest.raises(ValueError, match=f"checkpoint {weights}: expected a checkpoint of SelfSupervisedMethod"):
        LinearClassifierMethod.from_moco_checkpoint(weights)


def test_params_are_validated_with_the_field_named():
    assert LinearClassifierMethodParams().lr == 30.0 and LinearClassifierMethodParams().max_epochs == 100
    with pytest.raises(ValueError, match=r"LinearClassifierMethodParams.lr: got 0"):
        LinearClassifierMethodParams(lr=0)
    with pytest.raises(ValueError, match=r"LinearClassifierMethodParams.dataset_name: got 'cifar'.*'cifar10'"):
        LinearClassifierMethodParams(dataset_name="cifar")
    with pytest.raises(ValueError, match=r"no field 'max_epoch' \(did you mean 'max_epochs'\?\)"):
        make_linear_params(max_epoch=3)


def test_learning_rate_steps_at_60_and_80_percent_of_the_epochs():
    probe = LinearClassifierMethod(dataset_name="synthetic", use_cifar_stem=False, lr=2.0, max_epochs=10)
    probe.trainer = cpu_trainer(max_epochs=10)
    scheduler = probe.configure_optimizers()["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(10):
        lrs.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([2.0] * 6 + [0.2] * 2 + [0.02] * 2)


def test_command_line_prints_probe_and_knn_accuracies(tmp_path, capsys):
    path = tmp_path / "pretrained.ckpt"
    write_checkpoint(tiny(ModelParams), path)
    argv = ["--checkpoint", str(path), "--max_epochs", "1", "--batch_size", "8", "--accelerator", "cpu"]
    results = linear_cli.main(argv + ["--root_dir", str(tmp_path), "--precompute_features", "true"])
    assert set(results) == {"valid_acc1", "valid_acc5", "knn_acc"}
    assert f"kNN (k=200, T=0.1) top-1 {results['knn_acc']:.2f}%" in capsys.readouterr().out


def test_documented_probe_commands_parse_into_valid_params():
    documented = commands(PROBE_PROGRAM)
    assert documented
    for argv in documented:
        config = linear_cli.build_parser().parse_args(migrate_argv(argv, LinearClassifierMethodParams))
        make_linear_params(given_fields(config, LinearClassifierMethodParams))
