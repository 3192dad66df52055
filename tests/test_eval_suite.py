"""The evaluation suite: its protocols against constructed cases, its subsets, fine-tuning, the report of
selfsup-eval, and the errors it raises before any work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from helpers import cpu_trainer, tiny
from PIL import Image
from test_docs import EVAL_PROGRAM, commands
from torch.utils.data import TensorDataset

from selfsup.cli import eval as eval_cli
from selfsup.config import MAEParams, SimCLRParams
from selfsup.data.sources import dataset_labels, finetune_transform
from selfsup.eval import probes
from selfsup.eval.finetune import FineTuneMethod, finetune_parameter_groups, layer_id
from selfsup.eval.linear import LinearClassifierMethod
from selfsup.eval.suite import (
    SuiteOptions,
    check_label_fraction,
    class_balanced_subset,
    mean_and_spread,
    subset_size,
)
from selfsup.train.module import SelfSupervisedMethod

SYNTHETIC = dict(dataset_name="synthetic", synthetic_train_size=64, synthetic_val_size=32, use_cifar_stem=False,
                 num_data_workers=0)
QUICK = ["--max_epochs", "2", "--batch_size", "16", "--finetune_epochs", "1", "--finetune_batch_size", "16",
         "--label_fractions", "0.25", "0.5", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]


def pretrained(path: Path, **overrides: Any) -> Path:
    """A SimCLR checkpoint after two steps on the tiny synthetic data."""
    trainer = cpu_trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(SelfSupervisedMethod(tiny(SimCLRParams, **overrides)))
    trainer.save_checkpoint(path)
    return path


# --- protocols on constructed data -----------------------------------------------------------------------------------
def separable_features(per_class: int, classes: int, dim: int, seed: int) -> TensorDataset:
    """Class c's features: a large value in the c-th block of dim // classes dimensions, small noise everywhere
    (linearly separable, also once every dimension is standardized)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat(per_class)
    features = 0.1 * torch.randn(len(labels), dim, generator=generator)
    block = dim // classes
    for c in range(classes):
        features[labels == c, c * block:(c + 1) * block] += 3.0
    return TensorDataset(features, labels)


@pytest.mark.parametrize("standardize", [False, True])
def test_linear_probe_reaches_100_percent_on_linearly_separable_features(standardize):
    probe = LinearClassifierMethod(**SYNTHETIC, batch_size=16, max_epochs=5, precompute_features=True,
                                   standardize_features=standardize, lr=1.0 if standardize else 30.0)
    probe.use_features(separable_features(8, 10, 512, seed=0), separable_features(4, 10, 512, seed=1))
    trainer = cpu_trainer(max_epochs=5)
    trainer.fit(probe)
    assert float(trainer.callback_metrics["valid_acc1"]) == 100.0
    if standardize:  # a BatchNorm without affine parameters: per-dimension mean 0, variance 1 over the batch
        probe.train()
        features = separable_features(8, 10, 512, seed=2).tensors[0]
        standardized = probe.standardize(features)
        assert torch.allclose(standardized.mean(0), torch.zeros(512), atol=1e-5)
        variance = features.var(0, correction=0)
        eps = probe.standardize.eps  # type: ignore[union-attr]
        assert torch.allclose(standardized.var(0, correction=0), variance / (variance + eps), rtol=1e-4)
    # the low-shot protocol's logistic regression (standardized features: few noise dimensions per example)
    x, y = (t.numpy() for t in separable_features(20, 10, 16, seed=0).tensors)
    test = tuple(t.numpy() for t in separable_features(4, 10, 16, seed=1).tensors)
    assert probes.logistic_regression_accuracies((x, y), test) == [100.0]  # type: ignore[arg-type]


def test_use_features_needs_precomputed_features():
    probe = LinearClassifierMethod(**SYNTHETIC)
    with pytest.raises(ValueError, match="precompute_features=True"):
        probe.use_features(separable_features(1, 10, 512, 0), separable_features(1, 10, 512, 1))


def test_subsets_are_class_balanced_reproducible_and_differ_by_seed():
    labels = np.array([0] * 100 + [1] * 50 + [2] * 30 + [-1] * 20)
    subset = class_balanced_subset(labels, 0.1, seed=0)
    assert np.bincount(labels[subset]).tolist() == [10, 5, 3]  # round-half-up of 10%, per class; never a -1
    assert np.array_equal(subset, np.sort(subset)) and len(set(subset.tolist())) == len(subset)
    assert np.array_equal(subset, class_balanced_subset(labels, 0.1, seed=0))
    assert not np.array_equal(subset, class_balanced_subset(labels, 0.1, seed=1))
    assert subset_size(0.05, 10) == 1 and subset_size(0.04, 10) == 0  # half rounds up
    assert len(class_balanced_subset(labels, 1.0, seed=3)) == 180


def test_a_label_fraction_that_empties_a_class_is_named():
    labels = np.array([0] * 100 + [1] * 40)
    check_label_fraction(labels, ["cat", "dog"], 0.02)  # 2 cats, 1 dog (0.8 rounds up)
    with pytest.raises(ValueError, match=r"label_fractions: 0.01 .* class 'dog' \(40 images\) .* 1/40 = 0.025"):
        check_label_fraction(labels, ["cat", "dog"], 0.01)
    with pytest.raises(ValueError, match=r"'bird' \(0 images\)"):
        check_label_fraction(labels, ["cat", "dog", "bird"], 0.5)


def test_mean_and_spread_over_seeds():
    assert mean_and_spread([10.0, 20.0, 30.0]) == {"values": [10.0, 20.0, 30.0], "mean": 20.0, "std": 10.0}
    assert mean_and_spread([7.0])["std"] == 0.0


@pytest.mark.parametrize("changes, message", [
    (dict(protocols=("knn", "probe")), "protocols: got"),
    (dict(protocols=()), "protocols: got"),
    (dict(knn_k=(0,)), "knn_k"),
    (dict(label_fractions=(0.0,)), "label_fractions"),
    (dict(label_fractions=(1.5,)), "label_fractions"),
    (dict(lowshot_seeds=()), "lowshot_seeds"),
])
def test_suite_options_name_the_bad_field(changes, message):
    with pytest.raises(ValueError, match=message):
        SuiteOptions(**changes)


def test_labels_are_read_without_loading_images(tmp_path):
    probe = LinearClassifierMethod(**SYNTHETIC)
    train, _ = probe.image_datasets()
    assert dataset_labels(train).tolist() == [i % 10 for i in range(64)]
    folder = write_image_folder(tmp_path / "folder", classes=3, per_class=4)
    probe = LinearClassifierMethod(dataset_name="imagefolder", data_path=str(folder), num_data_workers=0)
    train, test = probe.image_datasets()
    assert sorted(dataset_labels(train).tolist() + dataset_labels(test).tolist()) == sorted([0, 1, 2] * 4)


# --- fine-tuning -----------------------------------------------------------------------------------------------------
def test_finetune_transform_augments_at_the_crop_size():
    from selfsup.data.sources import DataSourceOptions

    transform = finetune_transform(DataSourceOptions(dataset_name="synthetic"))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    torch.manual_seed(0)
    views = [transform(image) for _ in range(4)]
    assert all(view.shape == (3, 32, 32) for view in views)
    assert any(not torch.equal(views[0], view) for view in views[1:])


def test_layer_wise_lr_decay_scales_by_hand():
    assert [layer_id(name, depth=2) for name in ("model.cls_token", "model.pos_embed", "model.patch_embed.proj.weight",
                                                  "model.blocks.0.attn.qkv.weight", "model.blocks.1.mlp.fc2.bias",
                                                  "model.norm.weight", "classifier.weight")] == [0, 0, 0, 1, 2, 3, 3]
    method = FineTuneMethod(**SYNTHETIC, encoder_arch="timm:vit_tiny_patch16_224", embedding_dim=192,
                            patch_size=8, finetune_layer_decay=0.5)
    vit = method.model
    depth = len(vit.blocks)
    groups = finetune_parameter_groups(method, weight_decay=0.05, layer_decay=0.5, depth=depth)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert scale_of[id(vit.cls_token)] == 0.5 ** (depth + 1)
    assert scale_of[id(vit.blocks[0].attn.qkv.weight)] == 0.5 ** depth
    assert scale_of[id(vit.blocks[-1].mlp.fc1.weight)] == 0.5
    assert scale_of[id(method.classifier.weight)] == 1.0
    assert decay_of[id(vit.blocks[0].attn.qkv.weight)] == 0.05
    assert decay_of[id(vit.blocks[0].attn.qkv.bias)] == decay_of[id(vit.norm.weight)] == 0
    assert decay_of[id(vit.pos_embed)] == decay_of[id(vit.cls_token)] == 0
    assert len(scale_of) == sum(1 for p in method.parameters() if p.requires_grad)
    assert method.optimizer_name == "adamw" and method.depth == depth
    assert FineTuneMethod(**SYNTHETIC).optimizer_name == "sgd"


def test_finetuning_trains_the_encoder_and_its_batchnorm_statistics():
    method = FineTuneMethod(**SYNTHETIC, finetune_batch_size=16)
    before = {k: v.clone() for k, v in method.model.state_dict().items()}
    trainer = cpu_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(method)
    after = method.model.state_dict()
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])
    assert not torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])
    assert {"valid_acc1", "valid_acc5"} <= trainer.callback_metrics.keys()


def test_finetuning_on_a_subset_smaller_than_a_batch_still_trains():
    method = FineTuneMethod(**SYNTHETIC, finetune_batch_size=32)
    method.restrict_training([0, 1, 2, 3, 4])
    assert len(method.train_dataloader().dataset) == 5  # type: ignore[arg-type]
    assert len(method.train_dataloader()) == 1


@pytest.mark.slow
def test_finetuning_a_random_encoder_beats_its_linear_probe():
    """The whole network adapts to the task; a linear layer on random features cannot."""
    data = dict(SYNTHETIC, synthetic_train_size=1024, synthetic_val_size=256)
    pl.seed_everything(0)
    probe = LinearClassifierMethod(**data, batch_size=128, max_epochs=20, precompute_features=True)
    trainer = cpu_trainer(max_epochs=20, check_val_every_n_epoch=20)
    trainer.fit(probe)
    linear = float(trainer.callback_metrics["valid_acc1"])
    pl.seed_everything(0)
    method = FineTuneMethod(**data, finetune_batch_size=32, finetune_base_lr=0.2)
    trainer = cpu_trainer(max_epochs=10, check_val_every_n_epoch=10)
    trainer.fit(method)
    tuned = float(trainer.callback_metrics["valid_acc1"])
    assert tuned > linear + 20, (tuned, linear)


# --- selfsup-eval ----------------------------------------------------------------------------------------------------
def write_image_folder(root: Path, classes: int, per_class: int, side: int = 32, flat: bool = False) -> Path:
    """<root>/train/<class>/<i>.png of noise images (or the images directly in train/ with ``flat``)."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / "train" / ("" if flat else f"class{c}")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{c}_{i}.png")
    return root


def read_report(out_dir: Path) -> Dict[str, Any]:
    return json.loads((out_dir / "eval.json").read_text())


def test_selfsup_eval_writes_one_row_per_checkpoint_and_every_protocol(tmp_path, capsys):
    first, second = pretrained(tmp_path / "a.ckpt"), pretrained(tmp_path / "b.ckpt", loss_type="byol")
    out = tmp_path / "eval"
    report = eval_cli.main(["--checkpoint", str(first), str(second), "--protocols", "knn", "linear", "finetune",
                            "lowshot", "--random_baseline", "true", "--out_dir", str(out), *QUICK,
                            "--synthetic_train_size", "64", "--synthetic_val_size", "32"])
    assert report == read_report(out)
    rows: List[Dict[str, Any]] = report["rows"]
    assert [row["checkpoint"] for row in rows] == [str(first), str(second), None]
    assert rows[2]["name"] == "random init (resnet18)" and rows[2]["method"] is rows[2]["params"] is None
    assert rows[1]["method"] == "byol" and rows[1]["params"]["loss_type"] == "byol"
    for row in rows:
        assert [entry["k"] for entry in row["knn"]] == [200, 20]
        assert 0 <= row["linear"]["top1"] <= row["linear"]["top5"] <= 100
        assert row["finetune"]["optimizer"] == "sgd" and row["finetune"]["epochs"] == 1
        assert [entry["fraction"] for entry in row["lowshot"]] == [0.25, 0.5]
        assert [entry["images"] for entry in row["lowshot"]] == [20, 34]  # classes of 7 and 6 images, half up
        assert len(row["lowshot"][0]["logistic"]["values"]) == 3
        assert row["data"]["train_images"] == 64 and row["data"]["test_images"] == 32
    assert report["suite"]["lowshot_seeds"] == [0, 1, 2] and report["linear_settings"]["max_epochs"] == 2
    table = (out / "eval.md").read_text()
    assert table.count("\n| ") == 3 and "kNN k=20" in table and "25% labels" in table
    assert "| random init (resnet18) | untrained (resnet18) |" in table
    assert "a.ckpt" in capsys.readouterr().out
    assert (out / "config.yaml").is_file()


def test_selfsup_eval_transfers_to_another_image_folder(tmp_path):
    checkpoint = pretrained(tmp_path / "a.ckpt")
    folder = write_image_folder(tmp_path / "other", classes=3, per_class=10)
    out = tmp_path / "eval"
    report = eval_cli.main(["--checkpoint", str(checkpoint), "--dataset_name", "imagefolder", "--data_path",
                            str(folder), "--holdout_fraction", "0.3", "--protocols", "knn", "linear",
                            "--num_data_workers", "0", "--out_dir", str(out), *QUICK])
    (row,) = report["rows"]
    assert row["data"]["dataset_name"] == "imagefolder" and row["data"]["classes"] == 3
    assert (row["data"]["train_images"], row["data"]["test_images"]) == (21, 9)
    assert [(entry["k"], entry["neighbours"]) for entry in row["knn"]] == [(200, 21), (20, 20)]  # k capped at the bank
    assert "(k=21)" in (out / "eval.md").read_text()


def test_lowshot_fine_tunes_each_seed_subset_when_asked(tmp_path):
    checkpoint = pretrained(tmp_path / "a.ckpt")
    out = tmp_path / "eval"
    report = eval_cli.main(["--checkpoint", str(checkpoint), "--protocols", "lowshot", "--lowshot_finetune", "true",
                            "--lowshot_seeds", "0", "1", "--out_dir", str(out), *QUICK, "--label_fractions", "0.5",
                            "--synthetic_train_size", "64", "--synthetic_val_size", "32"])
    (entry,) = report["rows"][0]["lowshot"]
    assert entry["seeds"] == [0, 1] and len(entry["finetune"]["values"]) == 2 and len(entry["logistic"]["values"]) == 2
    assert "50% fine-tune" in (out / "eval.md").read_text()


def test_bad_input_is_named_before_any_work(tmp_path):
    checkpoint = pretrained(tmp_path / "a.ckpt")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    out = tmp_path / "eval"

    def run(*argv: str) -> None:
        eval_cli.main(["--out_dir", str(out), *QUICK, *argv])

    with pytest.raises(ValueError, match="foreign.ckpt: expected a checkpoint of SelfSupervisedMethod"):
        run("--checkpoint", str(checkpoint), str(foreign))
    unlabeled = write_image_folder(tmp_path / "flat", classes=1, per_class=6, flat=True)
    with pytest.raises(ValueError, match="has no class folders; LinearClassifierMethod needs labels"):
        run("--checkpoint", str(checkpoint), "--dataset_name", "imagefolder", "--data_path", str(unlabeled))
    with pytest.raises(ValueError, match=r"0.01 of the training labels leaves class '\w+' \(4 images\)"):
        run("--checkpoint", str(checkpoint), "--protocols", "lowshot", "--label_fractions", "0.01")
    for flags in (["--trainer.max_epochs", "3"], ["--trainer.limit_val_batches", "0"], []):
        with pytest.raises(SystemExit):  # argparse's error: usage and the message on stderr
            run("--checkpoint", *([str(checkpoint)] if flags else []), *flags)
    assert not out.exists() or not (out / "eval.json").exists()


def test_a_vit_evaluated_on_images_of_another_size_names_both_sizes(tmp_path):
    params = tiny(MAEParams, encoder_arch="timm:vit_tiny_patch16_224", embedding_dim=192, patch_size=8)
    path = tmp_path / "mae.ckpt"
    model = SelfSupervisedMethod(params)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    with pytest.raises(ValueError, match=r"pretrained on 32-px images, and these images are 48 px; set "
                                         r"transform_crop_size=32 .* or encoder_image_size=32"):
        LinearClassifierMethod.from_moco_checkpoint(path, transform_crop_size=48)
    probe = LinearClassifierMethod.from_moco_checkpoint(path, transform_crop_size=48, encoder_image_size=32)
    assert probe(torch.zeros(2, 3, 48, 48)).shape == (2, 10)


def test_documented_eval_commands_parse():
    found = commands(EVAL_PROGRAM)
    assert found
    for argv in found:
        eval_cli.build_parser().parse_args(eval_cli.migrate(argv))


@pytest.mark.slow
def test_selfsup_eval_under_ddp_writes_one_report_with_the_frozen_feature_numbers_of_one_process(tmp_path):
    checkpoint = pretrained(tmp_path / "a.ckpt")
    argv = ["--checkpoint", str(checkpoint), "--protocols", "knn", "linear", "finetune", "lowshot", *QUICK,
            "--synthetic_train_size", "64", "--synthetic_val_size", "32"]
    single = eval_cli.main([*argv, "--out_dir", str(tmp_path / "one")])
    out = tmp_path / "two"
    done = subprocess.run([sys.executable, "-m", "selfsup.cli.eval", *argv, "--out_dir", str(out),
                           "--trainer.devices", "2", "--trainer.strategy", "ddp"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MEMBER: 2/2" in done.stderr + done.stdout
    assert (done.stdout + done.stderr).count("| a.ckpt |") == 1  # printed by global rank 0 only
    (row,) = read_report(out)["rows"]
    assert row["knn"] == single["rows"][0]["knn"] and row["lowshot"] == single["rows"][0]["lowshot"]
    assert 0 <= row["linear"]["top1"] <= 100 and 0 <= row["finetune"]["top1"] <= 100
