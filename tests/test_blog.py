"""train_blog.py end to end at toy size: every configuration trains, the summary CSV and figure are written."""

from __future__ import annotations

import csv

import pytest
from helpers import TINY
from test_docs import BLOG_PROGRAM, commands

from selfsup.cli import blog as train_blog
from selfsup.config import ModelParams


@pytest.mark.parametrize("config", sorted(train_blog.CONFIGS))
def test_each_configuration_is_the_blog_variant(config):
    params = train_blog.blog_params(config, TINY)
    heads = (params.mlp_normalization, params.resolved_prediction_mlp_normalization)
    expected = {
        "base": ("bn", "bn"),
        "pred_only": (None, "bn"),
        "proj_only": ("bn", None),
        "no_norm": (None, None),
        "layer_norm": ("ln", "ln"),
        "xent": (None, None),
    }
    assert heads == expected[config]
    assert params.loss_type == ("contrastive" if config == "xent" else "byol")
    assert params.uses_queue == (config == "xent")
    assert params.optimizer_name == "sgd" and params.prediction_mlp_layers == params.projection_mlp_layers == 2
    assert isinstance(params, ModelParams) and params.batch_size == TINY["batch_size"]


@pytest.mark.slow
def test_tiny_run_writes_csv_and_figure(tmp_path):
    argv = ["--epochs", "1", "--seeds", "0", "--configs", "base", "no_norm", "xent", "--out_dir", str(tmp_path)]
    argv += ["--batch_size", "8", "--num_data_workers", "0"]
    argv += ["--synthetic_train_size", "32", "--synthetic_val_size", "32"]
    rows = train_blog.main(argv + ["--small", "--limit_train_batches", "2", "--accelerator", "cpu", "--devices", "1"])
    with open(tmp_path / "summary.csv") as handle:
        written = list(csv.DictReader(handle))
    assert [row["config"] for row in written] == ["base", "no_norm", "xent", train_blog.RANDOM_INIT]
    assert len(rows) == 4 and all(0 <= float(row["valid_knn_acc"]) <= 100 for row in written)
    assert all(-1 <= float(row["final_pos_cos"]) <= 1 for row in written[:3])
    assert (tmp_path / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((tmp_path / "base" / "seed_0").glob("events.out.tfevents.*"))


def test_documented_blog_commands_parse():
    documented = commands(BLOG_PROGRAM)
    assert documented
    for argv in documented:
        train_blog.build_parser().parse_args(argv)


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], dict(dataset_name="synthetic")),
        (["--small"], dict(dataset_name="synthetic", batch_size=128, use_cifar_stem=False)),
        (["--small", "--data-path", "cifar"], dict(dataset_name="imagefolder", data_path="cifar", batch_size=128)),
        (["--data-path", "x", "--dataset_name", "cifar10"], dict(dataset_name="cifar10", data_path="x")),
    ],
)
def test_data_path_replaces_the_small_runs_synthetic_images(argv, expected):
    overrides = train_blog.run_overrides(train_blog.build_parser().parse_args(argv + ["--epochs", "3"]))
    assert {k: overrides[k] for k in expected} == expected and overrides["max_epochs"] == 3


def test_short_runs_get_byols_recipe_over_the_blog_defaults_but_not_over_a_configuration():
    short = dict(TINY, max_epochs=4)
    base, xent = (train_blog.blog_params(config, short, short_run=True) for config in ("base", "xent"))
    assert base.lr == pytest.approx(0.08) and base.m == 0.99
    assert xent.lr == 0.02 and xent.m == 0.99
    full = train_blog.blog_params("base", dict(TINY, max_epochs=300), short_run=True)
    assert full.lr == 0.8 and full.m == train_blog.blog_params("base", TINY).m
