"""Decoding on the training device: the stored squares equal the loader path's within one grey level, the module
decodes batches of encoded files where they are trained, and on a CPU device it keeps decoding in the loader."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from helpers import cpu_trainer
from PIL import Image

from selfsup import data
from selfsup.config import SimCLRParams
from selfsup.train.module import SelfSupervisedMethod

SIZES = [(300, 400), (257, 256), (512, 300), (40, 50), (1000, 700)]  # larger, equal, smaller than S, any aspect


def smooth_image(height: int, width: int, seed: int) -> Image.Image:
    """A photo-like image (JPEG compresses noise badly): bilinear upsampling of random colours."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8))
    return small.resize((width, height), Image.BILINEAR)


@pytest.fixture
def folder(tmp_path):
    """train/<class>/: JPEGs of several sizes and one PNG."""
    paths = []
    for i, (height, width) in enumerate(SIZES):
        path = tmp_path / "train" / f"c{i % 2}" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        smooth_image(height, width, i).save(path, quality=90)
        paths.append(str(path))
    png = tmp_path / "train" / "c0" / "p.png"
    smooth_image(120, 90, 9).save(png)
    return tmp_path, paths + [str(png)]


def test_device_decoding_equals_the_loader_path_within_one_grey_level(folder):
    _, paths = folder
    side = 256
    host = torch.stack([data.build_stored_image_transform(side)(data.load_rgb(p)) for p in paths])
    encoded = [data.decode.read_bytes(p) for p in paths]
    assert [data.decode.is_jpeg(e) for e in encoded] == [True] * len(SIZES) + [False]
    device = data.decode_batch(encoded, side, torch.device("cpu"))
    assert device.shape == host.shape == (len(paths), 3, side, side) and device.dtype == torch.uint8
    difference = (device.int() - host.int()).abs()
    assert difference.max() <= 1 and difference.float().mean() < 0.01  # resize rounding only, same decoder


def test_encoded_items_collate_and_the_module_decodes_them_on_transfer(folder):
    root, paths = folder
    params = SimCLRParams(dataset_name="imagefolder", data_path=str(root), holdout_fraction=0.2, batch_size=2,
                          num_data_workers=0, decode_on_device=True, use_cifar_stem=False)
    train, _ = data.pretrain_datasets(params, data.build_stored_image_transform(64), encoded=True)
    assert isinstance(train, data.EncodedFileDataset)
    batch = data.collate_encoded([train[0], train[1]])
    assert isinstance(batch[0], data.EncodedImages) and batch[1].tolist() == [train[0][1], train[1][1]]
    model = SelfSupervisedMethod(params)
    images, labels = model.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    side = model.pipeline.stored_side
    assert images.shape == (2, 3, side, side) and torch.equal(labels, batch[1])
    expected = torch.stack([data.build_stored_image_transform(side)(data.load_rgb(train.samples[i][0]))
                            for i in range(2)])
    assert (images.int() - expected.int()).abs().max() <= 1


def test_on_a_cpu_device_the_loader_keeps_decoding(folder):
    root, _ = folder
    params = SimCLRParams(dataset_name="imagefolder", data_path=str(root), holdout_fraction=0.2, batch_size=2,
                          num_data_workers=0, decode_on_device=True, use_cifar_stem=False, max_epochs=1)
    model = SelfSupervisedMethod(params)
    cpu_trainer(limit_train_batches=1, limit_val_batches=0).fit(model)
    assert not model.decode_on_device and isinstance(model.trainer.train_dataloader.dataset.dataset,
                                                     data.ImageFileDataset)


def test_non_file_datasets_cannot_be_decoded_on_the_device():
    with pytest.raises(ValueError, match="decoding on the device needs encoded image files"):
        data.pretrain_datasets(SimCLRParams(dataset_name="synthetic"), lambda image: image, encoded=True)
    with pytest.warns(UserWarning, match="decode_on_device decodes image files"):
        SimCLRParams(dataset_name="synthetic", decode_on_device=True)


def test_png_bytes_are_read_unchanged(folder):
    _, paths = folder
    with open(paths[-1], "rb") as f:
        assert bytes(data.decode.read_bytes(paths[-1]).numpy()) == f.read()
    assert Image.open(io.BytesIO(bytes(data.decode.read_bytes(paths[0]).numpy()))).size == (400, 300)
