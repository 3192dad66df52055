"""The command lines: config files and the saved config of a run (which reruns it exactly), presets recorded in it,
the flat flags of earlier versions, Trainer arguments and logger selection, help from the fields' declarations."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import List

import attr
import pytest
import torch
import yaml

from selfsup.cli import common, embed, train
from selfsup.config import MoCoV3Params, ModelParams, SimCLRParams

# Two optimizer steps of MoCo v2 on 16 synthetic images with a small torchvision encoder.
TINY_RUN = ["--dataset_name", "synthetic", "--synthetic_train_size", "16", "--synthetic_val_size", "16",
            "--batch_size", "8", "--encoder_arch", "mobilenet_v3_small", "--embedding_dim", "576", "--K", "32",
            "--mlp_hidden_dim", "64", "--dim", "32", "--use_cifar_stem", "false", "--num_data_workers", "0",
            "--max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            "--embedding_plot", "none"]


def run(argv: List[str]) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train.main(argv)


def weights(checkpoint: str) -> dict:
    return torch.load(checkpoint, weights_only=False)["state_dict"]


def test_a_run_from_a_yaml_file_reruns_exactly_from_its_saved_config(tmp_path):
    config = {"preset": "moco_v2", "lr": 0.2, "seed": 3, "trainer": {"max_steps": 2}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    first = run(["--config", str(tmp_path / "run.yaml"), *TINY_RUN, "--root_dir", str(tmp_path / "first")])
    saved = tmp_path / "first" / common.CONFIG_FILE
    recorded = yaml.safe_load(saved.read_text())
    assert recorded["preset"] == "moco_v2" and recorded["lr"] == 0.2 and recorded["seed"] == 3
    assert recorded["trainer"]["max_steps"] == 2 and recorded["trainer"]["accelerator"] == "cpu"
    assert all(field.name in recorded for field in attr.fields(ModelParams))
    second = run(["--config", str(saved), "--root_dir", str(tmp_path / "second"),
                  "--checkpoint", str(tmp_path / "second.ckpt")])
    a, b = weights(first), weights(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.load(second, weights_only=False)["global_step"] == 2
    assert yaml.safe_load((tmp_path / "second" / common.CONFIG_FILE).read_text())["lr"] == 0.2


def test_flags_override_the_config_file_and_the_preset_in_their_order(tmp_path):
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"preset": "byol", "lr": 0.2}))
    parser = train.build_parser()
    config = train.parse(parser, ["--config", str(tmp_path / "run.yaml"), "--lr", "0.7"])
    params = train.params_from_config(config)
    assert params.lr == 0.7 and params.loss_type == "byol"  # the file's preset, the flag's lr
    # the fields a preset derives follow the fields given: MoCo v3's loss factor is 2T
    derived = train.params_from_config(train.parse(parser, ["--preset", "moco_v3", "--T", "0.5"]))
    assert derived == MoCoV3Params(T=0.5) and derived.loss_constant_factor == 1.0


def test_the_flat_flags_of_earlier_versions_still_work():
    old = ["--accelerator", "cpu", "--devices", "2", "--limit_train_batches", "0.5", "--transform_crop_size", "none",
           "--global_crop_scale", "0.08", "1", "--exclude_matching_parameters_from_lars", ".bias", ".bn",
           "--use_lagging_model", "false", "--mlp_normalization", "None"]
    new = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.limit_train_batches", "0.5",
           "--transform_crop_size", "null", "--global_crop_scale", "[0.08, 1]",
           "--exclude_matching_parameters_from_lars", '[".bias", ".bn"]', "--use_lagging_model", "false",
           "--mlp_normalization", "null"]
    parser = train.build_parser()
    assert common.migrate_argv(old, ModelParams)[:2] == ["--trainer.accelerator", "cpu"]
    assert train.parse(parser, old) == train.parse(parser, new)
    params = train.params_from_config(train.parse(parser, old))
    assert params.global_crop_scale == (0.08, 1.0) and params.exclude_matching_parameters_from_lars == [".bias", ".bn"]


def test_print_config_and_help_come_from_the_declarations(capsys):
    with pytest.raises(SystemExit) as exit_:
        train.parse(train.build_parser(), ["--preset", "simclr", "--lr", "0.3", "--print_config"])
    assert exit_.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["preset"] == "simclr" and printed["lr"] == 0.3 and "trainer" in printed
    help_text = train.build_parser().format_help()
    assert "peak learning rate (after warmup) (default: 0.5)" in help_text
    assert "--trainer.precision" in help_text and "--trainer.logger" in help_text


def test_a_logger_and_callbacks_are_chosen_on_the_command_line(tmp_path):
    run([*TINY_RUN, "--root_dir", str(tmp_path), "--trainer.max_steps", "2", "--trainer.log_every_n_steps", "1",
         "--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(tmp_path / "csv"),
         "--trainer.callbacks+", "LearningRateMonitor"])
    (metrics,) = (tmp_path / "csv").rglob("metrics.csv")
    header = metrics.read_text().splitlines()[0].split(",")
    assert {"step_train_loss", "img_per_s", "lr-SGD/regular"} <= set(header)  # the last: LearningRateMonitor's


@pytest.mark.slow
def test_the_embedding_plots_of_a_run_and_of_a_checkpoint(tmp_path):
    argv = [*TINY_RUN[:-2], "--synthetic_val_size", "64", "--root_dir", str(tmp_path)]
    checkpoint = run(argv + ["--embedding_plot", "tsne"])
    written = sorted(p.name for p in (tmp_path / "embeddings").iterdir())
    assert written == ["final_neighbours.png", "final_tsne.png", "probe_accuracy.png"]
    assert all((tmp_path / "embeddings" / name).read_bytes()[:4] == b"\x89PNG" for name in written)
    paths = embed.main(["--checkpoint", checkpoint, "--out_dir", str(tmp_path / "out"), "--max_images", "40",
                        "--num_data_workers", "0"])
    assert [Path(p).name for p in paths] == ["moco_v2_test_tsne.png", "moco_v2_test_neighbours.png"]


@pytest.mark.slow
def test_tensorboard_receives_the_figures(tmp_path):
    run([*TINY_RUN[:-2], "--synthetic_val_size", "64", "--root_dir", str(tmp_path), "--embedding_plot", "tsne",
         "--trainer.log_every_n_steps", "1"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((tmp_path / "lightning_logs").iterdir())), size_guidance={"images": 0})
    events.Reload()
    assert {"final_tsne", "final_neighbours", "probe_accuracy"} <= set(events.Tags()["images"])
    assert {"valid_knn_acc", "img_per_s", "lr"} <= set(events.Tags()["scalars"])



def test_short_runs_get_the_short_run_recipe_for_the_fields_not_given():
    parser = train.build_parser()

    def resolve(*argv: str):
        return train.resolve_params(train.parse(parser, ["--preset", "simclr", *argv]))

    short, line = resolve("--max_epochs", "4")
    assert short.lr == 0.05 and "short-run" in line and "lr 0.5 -> 0.05" in line
    assert resolve("--max_epochs", "4", "--lr", "0.3")[0].lr == 0.3  # a given field wins over the recipe
    paper, line = resolve("--max_epochs", "4", "--recipe", "paper")
    assert paper == SimCLRParams(max_epochs=4) and "as published" in line
    assert resolve("--max_epochs", "200")[0] == SimCLRParams(max_epochs=200)
