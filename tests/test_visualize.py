"""Embedding pictures: the 2-D map names every class in its legend, neighbours are the brute-force nearest ones, and
the callback writes its files during a real fit."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from helpers import cpu_trainer, tiny

from selfsup.config import MAETinyParams, SimCLRParams
from selfsup.data import SYNTHETIC_MEAN, SYNTHETIC_STD, UNLABELED
from selfsup.eval import visualize
from selfsup.train import summary
from selfsup.train.module import SelfSupervisedMethod


def clusters(n: int = 60, classes: int = 3) -> tuple:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % classes
    features = torch.eye(8)[labels] * 5 + torch.randn(n, 8, generator=generator)
    return features, labels


def test_the_map_colours_each_class_and_names_it_in_the_legend():
    features, labels = clusters()
    labels[-5:] = UNLABELED
    points = visualize.map_2d(features, "tsne", seed=0)
    assert points.shape == (60, 2) and np.allclose(points, visualize.map_2d(features, "tsne", seed=0))
    figure = visualize.embedding_figure(points, labels, ["cat", "dog", "fish"], "title")
    legend = figure.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["unlabeled", "cat", "dog", "fish"]
    colours = [tuple(c.get_facecolor()[0]) for c in figure.axes[0].collections]
    assert len(set(colours)) == 4


@pytest.mark.skipif(importlib.util.find_spec("umap") is None or importlib.util.find_spec("pynndescent") is None,
                    reason="umap-learn is not installed")
def test_umap_map():
    assert visualize.map_2d(clusters()[0], "umap").shape == (60, 2)


def test_neighbours_are_the_most_cosine_similar_other_samples():
    features = torch.randn(20, 5, generator=torch.Generator().manual_seed(1))
    queries = torch.tensor([0, 7])
    found = visualize.nearest_neighbours(features, queries, k=4)
    normalized = torch.nn.functional.normalize(features, dim=1)
    for row, query in enumerate(queries.tolist()):
        similarity = normalized @ normalized[query]
        similarity[query] = -2
        assert found[row].tolist() == similarity.topk(4).indices.tolist()


def test_the_retrieval_grid_and_the_probe_curve():
    features, labels = clusters(30)
    images = torch.rand(30, 3, 8, 8)
    grid = visualize.retrieval_figure((features, labels, images), None, "grid", queries=3, k=5)
    assert len(grid.axes) == 3 * 6
    curve = visualize.accuracy_figure({"valid_knn_acc": [(0, 10.0), (1, 20.0)], "valid_class_acc": []})
    assert [line.get_label() for line in curve.axes[0].get_lines()] == ["valid_knn_acc"]


def test_the_callback_writes_the_plots_and_the_probe_curve_of_a_fit(tmp_path):
    plots = visualize.EmbeddingPlots(str(tmp_path), SYNTHETIC_MEAN, SYNTHETIC_STD, "tsne", every_n_epochs=1)
    record = summary.ProbeRecord()
    model = SelfSupervisedMethod(tiny(SimCLRParams, synthetic_val_size=48, max_epochs=2))
    trainer = cpu_trainer(max_epochs=2, limit_train_batches=1, num_sanity_val_steps=0, callbacks=[plots, record])
    trainer.validate(model, verbose=False)  # the untrained encoder: a baseline, not an epoch of the curve
    assert set(plots.baseline) == {"valid_knn_acc", "valid_class_acc"} and plots.baseline == record.before
    trainer.fit(model)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["epoch001_neighbours.png", "epoch001_tsne.png", "final_neighbours.png", "final_tsne.png",
                     "probe_accuracy.png"]
    assert [epoch for epoch, _ in plots.history["valid_knn_acc"]] == [0, 1]
    assert record.after_epochs == 2 and not record.final_is_stale(trainer)
    assert record.after == {name: values[-1][1] for name, values in plots.history.items()}
    assert (record.classes, record.images, record.probed) == (10, 48, 48)
    trainer = cpu_trainer(max_epochs=1, limit_val_batches=1, callbacks=[record])
    trainer.validate(model, verbose=False)
    assert (record.images, record.probed) == (48, model.hparams.batch_size)


def test_the_probe_curve_draws_the_random_encoder_dashed():
    curve = visualize.accuracy_figure({"valid_knn_acc": [(0, 30.0), (1, 40.0)]}, {"valid_knn_acc": 12.5})
    trained, baseline = curve.axes[0].get_lines()
    assert baseline.get_label() == "valid_knn_acc, random encoder" and baseline.get_linestyle() == "--"
    assert list(baseline.get_ydata()) == [12.5, 12.5] and baseline.get_color() == trained.get_color()


def test_the_summary_block_compares_with_the_random_encoder():
    record = summary.ProbeRecord()
    record.before, record.after = {"valid_knn_acc": 21.8, "valid_class_acc": 37.0}, {"valid_knn_acc": 60.06}
    record.after_epochs, record.classes, record.images = 8, 10, 4096
    assert summary.summary_block(record, ["a.png", "b.png"], "q.ckpt").splitlines() == [
        "what was learned (validation set: 4096 images, 10 classes; chance 10.0%):",
        "                  random encoder    after 8 epochs",
        "  kNN (k=200)              21.8%             60.1%",
        "  pictures: a.png, b.png",
        "  checkpoint: q.ckpt",
    ]
    assert summary.summary_block(summary.ProbeRecord(), [], "q.ckpt").startswith("what was learned: not measured")
    record.probed = 512  # trainer.limit_val_batches: a class-sorted folder's first batches may hold one class
    assert summary.summary_block(record, [], "q.ckpt").splitlines()[0] == (
        "what was learned (validation set: the first 512 of 4096 images (trainer.limit_val_batches), 10 classes; "
        "chance 10.0%):")


def test_mae_adds_its_reconstruction_picture_to_the_plots(tmp_path):
    pytest.importorskip("matplotlib")
    plots = visualize.EmbeddingPlots(str(tmp_path), SYNTHETIC_MEAN, SYNTHETIC_STD, "tsne")
    model = SelfSupervisedMethod(tiny(MAETinyParams, synthetic_val_size=48))
    cpu_trainer(limit_train_batches=1, num_sanity_val_steps=0, callbacks=[plots]).fit(model)
    assert "final_reconstruction.png" in {p.name for p in tmp_path.iterdir()}
    assert model.training and model.model.training  # the picture was drawn in eval mode, and the modes restored
