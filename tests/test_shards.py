"""Shards (dataset_name="shards"): written from a generated image folder, they hold the folder path's images and
labels exactly, split across ranks deterministically, and train like the folder; exact resume is in test_resume.py."""

from __future__ import annotations

import functools
import os
import warnings
from typing import Any, List

import attr
import numpy as np
import pytest
import torch
from helpers import cpu_trainer
from PIL import Image
from test_distributed import run_distributed

from selfsup import data
from selfsup.cli import shards as shards_cli
from selfsup.config import ModelParams, SimCLRParams
from selfsup.data.shards import ShardDataset, read_metadata
from selfsup.train.module import SelfSupervisedMethod


def make_folder(root: str, classes: int = 3, per_class: int = 14, seed: int = 0) -> str:
    """<root>/folder/train/<class>/<i>.jpg: small JPEGs of different sizes."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = os.path.join(root, "folder", "train", f"class{c}")
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (32 + i % 5, 36, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(folder, f"{i}.jpg"), quality=90)
    return os.path.join(root, "folder")


def write(root: str, **folder: Any) -> str:
    source = make_folder(root, **folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shards_cli.main(["--data_path", source, "--output", os.path.join(root, "shards"), "--chunk_bytes", "4KB"])
    return os.path.join(root, "shards")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write(str(tmp_path_factory.mktemp("shards")))


def as_folder(shard_root: str) -> ModelParams:
    return ModelParams(dataset_name="imagefolder", data_path=os.path.join(os.path.dirname(shard_root), "folder"),
                       num_data_workers=0)


def test_shards_hold_the_folder_splits_images_and_labels_exactly(shards):
    metadata = read_metadata(shards)
    assert metadata["classes"] == ["class0", "class1", "class2"] and (metadata["train"], metadata["val"]) == (39, 3)
    folder = as_folder(shards)
    streamed = ModelParams(dataset_name="shards", data_path=shards, num_data_workers=0)
    assert data.dataset_info(streamed) == attr.evolve(data.dataset_info(folder), name="shards")
    for split in (0, 1):  # train and the held-out validation split, through the evaluation transform
        expected = data.eval_datasets(folder)[split]
        dataset = data.eval_datasets(streamed)[split]
        loader = data.make_loader(dataset, batch_size=5, shuffle=False, drop_last=False, num_workers=0,
                                  pin_memory=False)
        images, labels = (torch.cat(parts) for parts in zip(*loader))
        assert len(labels) == len(expected)
        for i in range(len(expected)):  # unshuffled shards keep the folder's order: pixel tolerance 0
            image, label = expected[i]
            assert label == labels[i] and torch.equal(image, images[i])
        assert data.dataset_labels(dataset).tolist() == labels.tolist()  # without decoding


def test_encoded_shards_give_the_files_bytes(shards):
    dataset = ShardDataset(shards, "val", lambda image: image, encoded=True)
    encoded, label = dataset[0]
    path, expected_label = data.sources.folder_splits(as_folder(shards))[1].samples[0]
    with open(path, "rb") as f:
        assert bytes(encoded.numpy()) == f.read() and label == expected_label


def test_a_preset_trains_on_shards_and_missing_shards_are_named(shards, tmp_path):
    model = SelfSupervisedMethod(SimCLRParams(dataset_name="shards", data_path=shards, batch_size=8,
                                              num_data_workers=0, max_epochs=1, use_cifar_stem=False,
                                              mlp_hidden_dim=32, dim=16))
    trainer = cpu_trainer()
    trainer.fit(model)
    assert trainer.global_step == 39 // 8 and torch.isfinite(trainer.callback_metrics["step_train_loss"])
    with pytest.raises(data.DataError, match="selfsup_shards.json does not exist; write shards with selfsup-shards"):
        data.dataset_info(ModelParams(dataset_name="shards", data_path=str(tmp_path)))


@pytest.mark.slow
@pytest.mark.ddp
def test_each_rank_reads_its_own_chunks_deterministically(shards, tmp_path):
    job = functools.partial(_files_per_rank, root=shards)
    folders = [tmp_path / name for name in ("a", "b")]
    for folder in folders:
        folder.mkdir()
    first, second = (run_distributed(job, folder) for folder in folders)
    assert first == second  # the same split and order every time
    for epoch in range(2):
        rank0, rank1 = (set(first[rank][epoch]) for rank in range(2))
        assert not rank0 & rank1 and len(rank0 | rank1) == 39
    assert first[0][0] != first[0][1]  # another epoch, another order


def _files_per_rank(rank: int, root: str) -> List[List[int]]:
    """The files (by CRC-32 of their bytes) this rank reads in two epochs of the shuffled training shards (seed 7)."""
    dataset = ShardDataset(root, "train", lambda image: 0, encoded=True)
    loader = data.make_loader(dataset, batch_size=3, shuffle=True, drop_last=False, num_workers=0,
                              pin_memory=False, seed=7, collate_fn=lambda items: items)
    epochs = []
    for _ in range(2):
        epochs.append([_index_of(encoded) for batch in loader for encoded, _ in batch])
    return epochs


def _index_of(encoded: torch.Tensor) -> int:
    return int(encoded.sum())  # the files differ: the byte sum identifies each one
