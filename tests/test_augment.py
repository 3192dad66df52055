"""Tests of batched.py: each batched operation against torchvision / PIL on the same input, the distributions of the
batched views against the PIL backend's on the same images, and the wiring through data.py and moco.py."""

from __future__ import annotations

import os
from typing import Any, List, Tuple

import attr
import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from helpers import TINY, cpu_trainer
from PIL import Image

from selfsup import data
from selfsup.config import BYOLParams, ModelParams, SimCLRParams
from selfsup.data import batched
from selfsup.train.module import SelfSupervisedMethod
from selfsup.train.pipeline import batch_views, pretrain_datasets, view_transforms

PLAIN = data.Photometric((0.0, 0.0, 0.0, 0.0), 0.0, 0.0)  # no jitter, blur or solarize: geometry and grayscale only


def synthetic_images(count: int, size: int = 32) -> Tuple[List[Image.Image], torch.Tensor]:
    """(PIL images, the same images as a uint8 batch [count, 3, size, size])."""
    shapes = data.SyntheticShapes(size, count, 0, "train", lambda image: image)
    images = [shapes.image(i)[0] for i in range(count)]
    return images, torch.stack([TF.pil_to_tensor(image) for image in images])


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------------------
# Each operation against its torchvision / PIL reference, on identical parameters
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("side, size", [(32, 32), (64, 24), (40, 56)])  # equal, shrinking (antialiased), enlarging
def test_resized_crop_and_flip_equal_pil_within_rounding(side: int, size: int) -> None:
    rng = np.random.default_rng(side)
    array = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    boxes = []
    for _ in range(20):
        width, height = rng.integers(1, side + 1, 2)
        boxes.append((rng.integers(0, side - width + 1), rng.integers(0, side - height + 1), width, height))
    left, top, width, height = torch.tensor(boxes, dtype=torch.float32).unbind(1)
    columns = batched.resize_weights(left, width, size, side)
    columns[1::2] = columns[1::2].flip(1)  # every other crop flipped
    source = torch.from_numpy(array).permute(0, 2, 1)[None].float()  # [1, side, 3, side]: 20 views of one image
    crops = batched.resized_crops(source, batched.resize_weights(top, height, size, side), columns)
    for i, (x, y, w, h) in enumerate(boxes):
        expected = TF.resized_crop(image, int(y), int(x), int(h), int(w), [size, size])  # PIL bilinear, antialiased
        expected = TF.pil_to_tensor(TF.hflip(expected) if i % 2 else expected).float()
        assert (crops[i] - expected).abs().max() <= 1.0 + 1e-3  # PIL rounds (and truncates) to uint8


@pytest.mark.parametrize("scale", [(0.2, 1.0), (0.05, 0.4), (0.9, 1.0)])  # (0.9, 1) falls back to the whole image often
def test_crop_boxes_follow_torchvision_random_resized_crop(scale: Tuple[float, float]) -> None:
    side, count = 32, 4000
    torch.manual_seed(0)
    reference = torch.tensor([T.RandomResizedCrop.get_params(torch.empty(1, side, side), list(scale), [3 / 4, 4 / 3])
                              for _ in range(count)], dtype=torch.float32)  # (top, left, height, width)
    boxes = batched.crop_boxes(count, side, torch.tensor([scale]).expand(count, 2), generator())
    assert ((boxes[:, :2] >= 0) & (boxes[:, :2] + boxes[:, 2:] <= side)).all()
    assert (boxes == boxes.round()).all()
    theirs = reference[:, [1, 0, 3, 2]]  # as (left, top, width, height)

    def describe(b: torch.Tensor) -> dict:
        return {"width": b[:, 2], "height": b[:, 3], "area": b[:, 2] * b[:, 3] / side ** 2,
                "whole": (b[:, 2:] == side).all(dim=1).float(), "centre_x": b[:, 0] + b[:, 2] / 2}

    ours, theirs = describe(boxes), describe(theirs)
    for name in ours:
        # 5 standard errors of the difference of two means of 4000 draws
        tolerance = 5 * float(torch.sqrt(ours[name].var() / count + theirs[name].var() / count)) + 1e-6
        assert abs(float(ours[name].mean() - theirs[name].mean())) <= tolerance, name


def test_color_jitter_in_any_order_equals_torchvision_functional_ops() -> None:
    x = torch.rand(6, 3, 20, 24, generator=generator())
    factors = torch.tensor([[1.3, 1, 1, 0], [1, 0.6, 1, 0], [1, 1, 1.5, 0], [1, 1, 1, 0.2], [0.7, 1.4, 0.5, -0.1],
                            [1, 1, 1, 0]])
    order = torch.tensor([[0, 1, 2, 3], [1, 0, 2, 3], [2, 1, 0, 3], [3, 2, 1, 0], [3, 1, 0, 2], [0, 1, 2, 3]])
    operations = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    expected = []
    for i in range(6):
        y = x[i]
        for op in order[i].tolist():
            y = operations[op](y, float(factors[i, op]))
        expected.append(y)
    # 5e-5: torchvision's grey level weighs red 0.2989, PIL (and batched.LUMA) 0.299
    assert torch.allclose(batched.color_jitter(x, factors, order), torch.stack(expected), atol=5e-5)


@pytest.mark.parametrize("shift", [-0.5, -0.2, 0.0, 0.13, 0.5])
def test_hue_shift_equals_torchvision(shift: float) -> None:
    x = torch.rand(4, 3, 16, 16, generator=generator())
    x[0] = 0.5  # grey: no hue
    expected = torch.stack([TF.adjust_hue(image, shift) for image in x])
    assert torch.allclose(batched.adjust_hue(x, torch.full((4,), shift)), expected, atol=1e-5)


def test_blur_with_per_sample_sigma_equals_torchvision() -> None:
    x = torch.rand(4, 3, 20, 24, generator=generator())
    sigma = torch.tensor([0.1, 0.7, 1.5, 2.0])
    expected = torch.stack([TF.gaussian_blur(x[i], [5, 5], [float(sigma[i])] * 2) for i in range(4)])
    assert torch.allclose(batched.gaussian_blur(x, 5, sigma), expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Distributions of whole views: batched vs PIL backend on the same images
# ---------------------------------------------------------------------------------------------------------------------

def assert_same_means(measured: torch.Tensor, expected: torch.Tensor, names: List[str]) -> None:
    """Columns of per-view quantities ([views, quantities], independent draws) have equal means: each difference of
    means is within 4 standard errors (a false alarm rate of ~6e-5 per quantity)."""
    error = torch.sqrt(measured.var(dim=0) / len(measured) + expected.var(dim=0) / len(expected))
    z = (measured.mean(dim=0) - expected.mean(dim=0)) / error
    assert (z.abs() < 4).all(), {name: round(float(v), 1) for name, v in zip(names, z)}


def test_geometry_flip_and_grayscale_frequencies_match_pil() -> None:
    """Views of a coordinate ramp (red = 8x + 4, green = 8y + 4, blue = 0) without colour jitter: blue > 0 marks a
    grayscale view; in the others the red range measures the crop width, the green range its height, and a red
    gradient falling from left to right a flip. Frequencies of grayscale, flips and crop-area bins and the mean crop
    area agree within 4 standard errors (2000 views each: ~0.05 for a frequency near 0.5, ~0.03 for the area)."""
    side, count = 32, 2000
    ramp = np.zeros((side, side, 3), dtype=np.uint8)
    ramp[..., 0] = 8 * np.arange(side)[None, :] + 4
    ramp[..., 1] = 8 * np.arange(side)[:, None] + 4
    torch.manual_seed(0)
    pil_view = data.view_transform(side, (0.2, 1.0), PLAIN, (0, 0, 0), (1, 1, 1))
    pil = torch.stack([pil_view(Image.fromarray(ramp)) for _ in range(count)])
    batch_views = batched.BatchedViews([data.ViewSpec(side, (0.2, 1.0), PLAIN)], (0, 0, 0), (1, 1, 1), seed=0)
    ours = batch_views(torch.from_numpy(ramp).permute(2, 0, 1)[None].expand(count, -1, -1, -1).contiguous())[0]
    names = ["flip", "area", "area<0.35", "area<0.5", "area<0.65", "area<0.8"]

    def measure(views: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(grayscale indicator per view, [colour views, names] quantities)."""
        pixels = views * 255
        grey = pixels[:, 2].amax(dim=(1, 2)) > 0.5
        colour = pixels[~grey]
        extent = side / (side - 1) / 8  # output pixel centres span (side - 1) / side of the crop
        width = (colour[:, 0].amax(dim=(1, 2)) - colour[:, 0].amin(dim=(1, 2))) * extent
        height = (colour[:, 1].amax(dim=(1, 2)) - colour[:, 1].amin(dim=(1, 2))) * extent
        area = width * height / side ** 2
        flipped = colour[:, 0, :, 0].mean(dim=1) > colour[:, 0, :, -1].mean(dim=1)
        bins = [area < bound for bound in (0.35, 0.5, 0.65, 0.8)]
        return grey.float(), torch.stack([flipped, area, *bins], dim=1).float()

    (pil_grey, pil_colour), (our_grey, our_colour) = measure(pil), measure(ours)
    assert abs(float(pil_grey.mean()) - data.GRAYSCALE_P) < 0.03 and abs(float(pil_colour[:, 0].mean()) - 0.5) < 0.05
    assert_same_means(our_grey[:, None], pil_grey[:, None], ["grayscale"])
    assert_same_means(our_colour, pil_colour, names)


@pytest.mark.parametrize("preset", [SimCLRParams, BYOLParams])
def test_view_statistics_match_pil(preset: Any) -> None:
    """Per view of 512 synthetic images, in pixel values: the per-channel mean and std, the mean saturation
    (max - min channel) and sharpness (mean absolute difference of horizontal neighbours; blur lowers it). Paired by
    image, the mean difference between the backends is within 4 standard errors for every statistic (PIL's blends
    truncate to uint8, darkening its views by up to ~2/255, within the ~4/255 standard error of the channel means;
    for scale, removing the blur gives z ~ 6 on sharpness)."""
    params = preset(dataset_name="synthetic", augmentation_backend="pil")
    images, batch = synthetic_images(512)
    torch.manual_seed(0)
    pil = [torch.stack([view(image) for image in images]) for view in view_transforms(params)]
    ours = batch_views(params)(batch)
    mean = torch.tensor(data.SYNTHETIC_MEAN)[None, :, None, None]
    std = torch.tensor(data.SYNTHETIC_STD)[None, :, None, None]

    def per_view(views: torch.Tensor) -> torch.Tensor:
        x = views * std + mean
        saturation = (x.amax(dim=1) - x.amin(dim=1)).mean(dim=(1, 2))
        sharpness = (x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3))
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3)), saturation[:, None], sharpness[:, None]], dim=1)

    names = ["mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "saturation", "sharpness"]
    for measured, expected in zip(ours, pil):  # BYOL: the views differ (blur 1.0 / 0.1, solarize 0 / 0.2)
        difference = per_view(measured) - per_view(expected)
        z = difference.mean(dim=0) / (difference.std(dim=0) / len(difference) ** 0.5)
        assert (z.abs() < 4).all(), {name: round(float(v), 1) for name, v in zip(names, z)}


# ---------------------------------------------------------------------------------------------------------------------
# BatchedViews: shapes, randomness, errors
# ---------------------------------------------------------------------------------------------------------------------

def test_views_of_each_size_normalization_and_channels_last() -> None:
    params = SimCLRParams(dataset_name="synthetic", synthetic_image_size=48, transform_crop_size=40,
                          num_local_crops=2, local_crop_size=12)
    _, batch = synthetic_images(3, 48)
    views = batch_views(params, channels_last=True)(batch)
    assert [tuple(v.shape) for v in views] == [(3, 3, 40, 40)] * 2 + [(3, 3, 12, 12)] * 2
    assert all(v.dtype == torch.float32 and v.is_contiguous(memory_format=torch.channels_last) for v in views)

    white = torch.full((2, 3, 8, 8), 255, dtype=torch.uint8)
    plain = batched.BatchedViews([data.ViewSpec(4, (1.0, 1.0), PLAIN)], (0.5, 0.25, 0.0), (0.5, 0.25, 2.0), seed=0)
    assert torch.allclose(plain(white)[0], torch.tensor([1.0, 3.0, 0.5]).view(1, 3, 1, 1).expand(2, 3, 4, 4))


def test_views_depend_only_on_seed_rank_step_and_repeat() -> None:
    params = SimCLRParams(dataset_name="synthetic")
    _, batch = synthetic_images(8)

    def views(step: int, rank: int, seed: int = 0) -> List[torch.Tensor]:  # a fresh module: as after a resume
        return batch_views(ModelParams(**{**TINY, "seed": seed}))(batch, step, rank)

    first = views(5, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, views(5, 0)))
    for other in (views(6, 0), views(5, 1), views(5, 0, seed=1)):
        assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[0], first[1])  # the two views of an image differ
    running = batch_views(ModelParams(**TINY))
    steps = [running(batch, step, 0)[0] for step in (4, 5, 5, 6)]  # step 5 twice: gradient accumulation
    assert torch.equal(steps[1], first[0]) and not torch.equal(steps[2], first[0])
    assert torch.equal(steps[3], views(6, 0)[0])
    assert batch_views(params).views == [data.ViewSpec(32, (0.2, 1.0), p)
                                                         for p in data.photometric_settings(params)[0]]


def test_batched_views_reject_anything_but_uint8_square_batches() -> None:
    views = batch_views(ModelParams(**TINY))
    for images in (torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 32, 30, dtype=torch.uint8),
                   torch.zeros(2, 1, 32, 32, dtype=torch.uint8)):
        with pytest.raises(ValueError, match=r"images: expected a uint8 batch of square images \[B, 3, S, S\]"):
            views(images)
    with pytest.raises(ValueError, match="ModelParams.augmentation_backend: got 'gpu'; allowed values are 'batched'"):
        ModelParams(augmentation_backend="gpu")


# ---------------------------------------------------------------------------------------------------------------------
# Wiring: data.py yields uint8 images, SelfSupervisedMethod makes the views on the device
# ---------------------------------------------------------------------------------------------------------------------

def test_stored_image_size_per_dataset(tmp_path: Any) -> None:
    def size(**fields: Any) -> int:
        p = ModelParams(**{"data_path": str(tmp_path), **fields})
        return data.stored_image_size(data.dataset_info(p), data.crop_size(p))

    assert (size(dataset_name="cifar10"), size(dataset_name="stl10"), size(dataset_name="imagenet")) == (32, 96, 256)
    assert size(dataset_name="stl10", transform_crop_size=64) == 96  # fixed-size datasets keep their native side
    assert size(dataset_name="synthetic", synthetic_image_size=24, transform_crop_size=32) == 32
    for folder, image_size in (("small", (40, 50)), ("large", (300, 260))):
        os.makedirs(tmp_path / folder / "train" / "a")
        Image.new("RGB", image_size).save(tmp_path / folder / "train" / "a" / "0.png")
    assert size(dataset_name="imagefolder", data_path=str(tmp_path / "small")) == 40  # small images: the crop
    assert size(dataset_name="imagefolder", data_path=str(tmp_path / "large")) == 256  # larger: crop / 0.875
    assert size(dataset_name="imagefolder", data_path=str(tmp_path / "large"), transform_crop_size=112) == 128


def test_batched_datasets_yield_uint8_images_and_custom_view_transforms_stay_per_image() -> None:
    params = ModelParams(**{**TINY, "synthetic_image_size": 24, "num_local_crops": 1})
    assert params.augmentation_backend == "batched"
    train, val = pretrain_datasets(params)
    image, label = train[3]
    assert (image.dtype, tuple(image.shape), label) == (torch.uint8, (3, 24, 24), 3)
    reference = data.SyntheticShapes(24, 32, 0, "train", TF.pil_to_tensor)[3][0]
    assert torch.equal(image, reference)  # decode only: no augmentation
    assert val[0][0].dtype == torch.float32  # the probe's images are unchanged

    custom = pretrain_datasets(params, view_transforms=T.ToTensor())[0][0][0]
    assert [tuple(v.shape) for v in custom] == [(3, 24, 24)] * 3
    params = attr.evolve(params, embedding_dim=8)
    assert isinstance(method(params).batch_views, batched.BatchedViews)
    assert method(params, view_transforms=T.ToTensor()).batch_views is None
    assert method(params, train_dataset=train).batch_views is None
    assert method(attr.evolve(params, augmentation_backend="pil")).batch_views is None


def method(params: ModelParams, **kwargs: Any) -> SelfSupervisedMethod:
    """A SelfSupervisedMethod with an 8-channel convolution as the encoder (cheap to build)."""
    encoder = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    return SelfSupervisedMethod(params, backbone=encoder, **kwargs)


def test_training_batches_become_views_and_validation_batches_pass_unchanged() -> None:
    model = method(ModelParams(**{**TINY, "num_local_crops": 1, "embedding_dim": 8}))
    trainer = cpu_trainer()
    model.trainer = trainer
    _, batch = synthetic_images(4)
    labels = torch.arange(4)
    trainer.training = True
    views, out_labels = model.on_after_batch_transfer((batch, labels), 0)
    assert [tuple(v.shape) for v in views] == [(4, 3, 32, 32)] * 2 + [(4, 3, 14, 14)]
    assert out_labels is labels
    trainer.validating = True
    images = torch.randn(4, 3, 32, 32)
    assert model.on_after_batch_transfer((images, labels), 0) == (images, labels)
