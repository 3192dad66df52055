"""Tests of data.py on data they generate: image folders, CIFAR-10 / STL-10 files in torchvision's layout, synthetic."""

from __future__ import annotations

import os
import pickle
import urllib.error
import urllib.request
from typing import Any, Dict, List

import attr
import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from selfsup import data
from selfsup.config import DataSourceOptions, ModelParams
from selfsup.train.pipeline import pretrain_datasets, view_transforms

SHARED_CIFAR10 = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets", "cifar10")


def params(**fields: Any) -> ModelParams:
    # the per-image PIL views (test_augment.py covers augmentation_backend="batched")
    return ModelParams(**{"batch_size": 8, "K": 64, "num_data_workers": 0, "augmentation_backend": "pil", **fields})


def save(path: str, image: Image.Image, **kwargs: Any) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, **kwargs)
    return path


def rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def write_bytes(path: str, content: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)
    return path


def truncated_png(path: str) -> str:
    save(path, rgb(40, 40, seed=9))
    with open(path, "rb") as f:
        content = f.read()
    return write_bytes(path, content[: len(content) // 2])


def mixed_tree(root: str) -> None:
    """Two classes, every file a different mode; the first (sorted) image of each class has short side 30 / 50."""
    save(f"{root}/cat/a.jpg", rgb(40, 30))
    save(f"{root}/cat/b.png", rgb(50, 50).convert("L"))
    rgba = rgb(64, 48).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((64, 48)))
    save(f"{root}/cat/nested/c.png", rgba)
    save(f"{root}/dog/a.png", rgb(50, 70).convert("P", palette=Image.Palette.ADAPTIVE))
    save(f"{root}/dog/b.tif", Image.fromarray(np.full((20, 20), 40000, np.uint16)))
    save(f"{root}/dog/c.jpg", rgb(33, 33).convert("CMYK"))
    write_bytes(f"{root}/dog/notes.txt", b"not an image")
    write_bytes(f"{root}/dog/._a.jpg", b"macOS resource fork, not an image")


def corrupt_tree(root: str) -> List[str]:
    save(f"{root}/a/0.png", rgb(20, 20))
    bad = [write_bytes(f"{root}/a/1_garbage.jpg", b"\x00garbage"), truncated_png(f"{root}/a/2_truncated.png")]
    save(f"{root}/b/0.png", rgb(20, 20, seed=1))
    return bad


# ---------------------------------------------------------------------------------------------------------------------
# Image files
# ---------------------------------------------------------------------------------------------------------------------

def pixels(image: Image.Image) -> List[tuple]:
    assert image.mode == "RGB"
    return [tuple(p) for p in np.asarray(image).reshape(-1, 3).tolist()]


def test_to_rgb_converts_every_mode_exactly() -> None:
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (10, 20, 30, 0))
    rgba.putpixel((1, 0), (10, 20, 30, 255))
    assert pixels(data.to_rgb(rgba)) == [(255, 255, 255), (10, 20, 30)]  # transparent -> white, opaque kept

    assert pixels(data.to_rgb(Image.new("L", (1, 1), 77))) == [(77, 77, 77)]
    assert pixels(data.to_rgb(Image.new("LA", (1, 1), (77, 0)))) == [(255, 255, 255)]

    palette = Image.new("P", (2, 1))
    palette.putpalette([200, 100, 50, 1, 2, 3] + [0] * 762)
    palette.putpixel((1, 0), 1)
    assert pixels(data.to_rgb(palette)) == [(200, 100, 50), (1, 2, 3)]
    palette.info["transparency"] = 1
    assert pixels(data.to_rgb(palette)) == [(200, 100, 50), (255, 255, 255)]

    sixteen_bit = Image.fromarray(np.array([[0, 128 * 257, 65535]], np.uint16))
    assert sixteen_bit.mode == "I;16"
    assert pixels(data.to_rgb(sixteen_bit)) == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]
    int32 = Image.fromarray(np.array([[-5, 65535, 70000]], np.int32))
    assert int32.mode == "I"
    assert pixels(data.to_rgb(int32)) == [(0, 0, 0), (255, 255, 255), (255, 255, 255)]

    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))
    assert pixels(data.to_rgb(cmyk)) == [(255, 0, 0)]


def test_index_image_folder_labels_sorted_classes_and_ignores_non_images(tmp_path: Any) -> None:
    mixed_tree(f"{tmp_path}/train")
    index = data.index_image_folder(f"{tmp_path}/train")
    assert index.classes == ["cat", "dog"]
    relative = [(os.path.relpath(p, f"{tmp_path}/train"), label) for p, label in index.samples]
    assert relative == [("cat/a.jpg", 0), ("cat/b.png", 0), ("cat/nested/c.png", 0),
                        ("dog/a.png", 1), ("dog/b.tif", 1), ("dog/c.jpg", 1)]


def test_validation_folder_uses_the_training_labels(tmp_path: Any) -> None:
    for name in ("ant", "bee", "cow"):
        save(f"{tmp_path}/train/{name}/0.png", rgb(8, 8))
    save(f"{tmp_path}/val/cow/0.png", rgb(8, 8))
    train = data.index_image_folder(f"{tmp_path}/train")
    assert [label for _, label in data.index_image_folder(f"{tmp_path}/val", train.classes).samples] == [2]

    save(f"{tmp_path}/val/yak/0.png", rgb(8, 8))
    with pytest.raises(data.DataError, match=f"{tmp_path}/val has class folders that the training folder lacks: yak"):
        data.index_image_folder(f"{tmp_path}/val", train.classes)


def test_holdout_split_is_stratified_disjoint_and_seeded(tmp_path: Any) -> None:
    samples = [(f"{label}/{i}.png", label) for label, count in ((0, 10), (1, 20), (2, 2), (3, 1)) for i in range(count)]
    index = data.FolderIndex(str(tmp_path), samples, ["a", "b", "c", "d"])
    kept, held = data.holdout_split(index, 0.2, seed=0)
    held_labels = [label for _, label in held.samples]
    assert [held_labels.count(label) for label in range(4)] == [2, 4, 1, 0]  # round(0.2 n), >= 1, never all
    assert sorted(kept.samples + held.samples) == sorted(samples)
    assert held.classes == kept.classes == index.classes
    assert data.holdout_split(index, 0.2, seed=0) == (kept, held)
    assert data.holdout_split(index, 0.2, seed=1)[1] != held

    with pytest.raises(data.DataError, match="too few images per class to hold out"):
        data.holdout_split(data.FolderIndex(str(tmp_path), samples[-1:], ["d"]), 0.5, seed=0)


def test_imagefolder_any_mode_gives_rgb_views_and_a_probed_crop(tmp_path: Any) -> None:
    mixed_tree(f"{tmp_path}/train")
    p = params(dataset_name="imagefolder", data_path=str(tmp_path), holdout_fraction=0.3)
    info = data.dataset_info(p)
    # median short side of the first images of the classes (30 and 50 px); small, so the CIFAR stem by default
    assert info == data.DatasetInfo("imagefolder", 40, data.IMAGENET_MEAN, data.IMAGENET_STD, 2, True)
    train, val = pretrain_datasets(p)
    assert (len(train), len(val)) == (4, 2)  # one of the three images of each class held out
    for index in range(len(train)):
        views, label = train[index]
        assert [(v.shape, v.dtype) for v in views] == [(torch.Size([3, 40, 40]), torch.float32)] * 2
        assert label in (0, 1)
    image, label = val[0]
    assert image.shape == (3, 40, 40) and label in (0, 1)


def test_imagefolder_default_crop_is_capped_at_224(tmp_path: Any) -> None:
    save(f"{tmp_path}/big/train/x/0.jpg", rgb(300, 260))
    save(f"{tmp_path}/mid/train/0.jpg", rgb(120, 100))  # flat (unlabeled) folder
    big = data.dataset_info(params(dataset_name="imagefolder", data_path=f"{tmp_path}/big"))
    assert (big.image_size, big.small_images, big.num_classes) == (224, False, 1)
    mid = data.dataset_info(params(dataset_name="imagefolder", data_path=f"{tmp_path}/mid"))
    assert (mid.image_size, mid.small_images, mid.num_classes) == (100, False, None)
    assert data.crop_size(params(dataset_name="imagefolder", data_path=f"{tmp_path}/mid", transform_crop_size=64)) == 64


def test_flat_folder_pretrains_unlabeled_but_cannot_be_probed(tmp_path: Any) -> None:
    for i in range(5):
        save(f"{tmp_path}/train/{i}.png", rgb(24, 24, seed=i))
    p = params(dataset_name="imagefolder", data_path=str(tmp_path), holdout_fraction=0.2)
    train, val = pretrain_datasets(p)
    assert (len(train), len(val)) == (4, 1)
    assert [train[i][1] for i in range(4)] + [val[0][1]] == [data.UNLABELED] * 5
    with pytest.raises(data.DataError, match=f"image folder {tmp_path}/train has no class folders, but the linear"):
        data.eval_datasets(p)


def test_imagefolder_val_folder_and_eval_datasets(tmp_path: Any) -> None:
    for split, count in (("train", 3), ("val", 2)):
        for name in ("a", "b"):
            for i in range(count):
                save(f"{tmp_path}/{split}/{name}/{i}.png", rgb(32, 32, seed=i))
    p = params(dataset_name="imagefolder", data_path=str(tmp_path))
    train, test = data.eval_datasets(p)
    assert (len(train), len(test)) == (6, 4)
    assert [test[i][1] for i in range(4)] == [0, 0, 1, 1]
    assert train[0][0].shape == (3, 32, 32)


def test_corrupt_image_raises_an_error_naming_the_file(tmp_path: Any) -> None:
    garbage, truncated = corrupt_tree(f"{tmp_path}/train")
    train, _ = pretrain_datasets(params(dataset_name="imagefolder", data_path=str(tmp_path),
                                             transform_crop_size=16))
    paths = [path for path, _ in train.samples]
    for bad in (garbage, truncated):
        if bad in paths:  # the other may have been held out
            with pytest.raises(data.DataError, match=f"cannot read image {bad}: .*skip_corrupt_images=True"):
                train[paths.index(bad)]


def test_skip_corrupt_images_substitutes_the_next_readable_image_and_counts(tmp_path: Any) -> None:
    garbage, truncated = corrupt_tree(f"{tmp_path}/train")
    dataset = data.ImageFileDataset(data.index_image_folder(f"{tmp_path}/train").samples, TF.pil_to_tensor,
                                    skip_corrupt=True)
    with pytest.warns(data.CorruptImageWarning) as caught:
        items = [dataset[i] for i in range(len(dataset))]
    assert [str(w.message).split(" (")[0] for w in caught] == [f"skipped unreadable image {garbage}",
                                                              f"skipped unreadable image {truncated}"]
    assert str(caught[1].message).endswith("2 skipped so far in this process")
    assert dataset.skipped == {garbage, truncated}
    # indices 1 and 2 (corrupt) fall through to index 3, the first image of class b
    assert [label for _, label in items] == [0, 1, 1, 1]
    assert torch.equal(items[1][0], items[3][0])


def test_skip_corrupt_images_also_covers_the_size_probe(tmp_path: Any) -> None:
    write_bytes(f"{tmp_path}/train/a/0.png", b"broken")
    save(f"{tmp_path}/train/b/0.png", rgb(20, 20))
    with pytest.raises(data.DataError, match=f"cannot read image {tmp_path}/train/a/0.png"):
        data.dataset_info(params(dataset_name="imagefolder", data_path=str(tmp_path)))
    info = data.dataset_info(params(dataset_name="imagefolder", data_path=str(tmp_path), skip_corrupt_images=True))
    assert info.image_size == 20


@pytest.mark.parametrize("layout, message", [
    ({}, "imagefolder training images (<data_path>/train): folder {root}/train does not exist"),
    ({"train/notes.txt": b"x"}, "image folder {root}/train contains no images"),
    ({"train/a/0.png": None, "train/b/notes.txt": b"x"}, "image folder {root}/train: class folders without images: b"),
    ({"train/a/0.png": None, "train/1.png": None}, "image folder {root}/train mixes class subfolders"),
])
def test_bad_image_folders_raise_errors_naming_the_path(tmp_path: Any, layout: Dict[str, Any], message: str) -> None:
    for name, content in layout.items():
        if content is None:
            save(f"{tmp_path}/{name}", rgb(8, 8))
        else:
            write_bytes(f"{tmp_path}/{name}", content)
    p = params(dataset_name="imagefolder", data_path=str(tmp_path), transform_crop_size=8)
    with pytest.raises(data.DataError, match=message.format(root=tmp_path).replace("(", r"\(").replace(")", r"\)")):
        pretrain_datasets(p)


def test_imagenet_layout(tmp_path: Any) -> None:
    for split in ("train", "val"):
        for name in ("n01", "n02"):
            save(f"{tmp_path}/imagenet/{split}/{name}/0.JPEG", rgb(260, 250), format="JPEG")
    p = params(dataset_name="imagenet", data_path=str(tmp_path))
    train, val = pretrain_datasets(p)
    views, label = train[1]
    assert [v.shape for v in views] == [(3, 224, 224)] * 2 and label == 1
    assert val[0][0].shape == (3, 224, 224)
    assert [type(t).__name__ for t in data.eval_transform(p).transforms] == [
        "Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert (data.eval_transform(p).transforms[0].size, data.eval_transform(p).transforms[1].size) == (
        256, (224, 224))

    os.rename(f"{tmp_path}/imagenet/val", f"{tmp_path}/imagenet/elsewhere")
    with pytest.raises(data.DataError, match=f"folder {tmp_path}/imagenet/val does not exist"):
        data.eval_datasets(p)


# ---------------------------------------------------------------------------------------------------------------------
# CIFAR-10 and STL-10 in torchvision's layout
# ---------------------------------------------------------------------------------------------------------------------

def existence_only(fpath: str, md5: Any = None) -> bool:
    return os.path.isfile(fpath)


def as_array(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image))


@pytest.fixture
def cifar_root(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Dict[str, Any]:
    """Two images per training batch (10 in all) and three test images, in cifar-10-batches-py pickles."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8),
              "test": rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)}
    labels = {"train": list(range(10)), "test": [7, 8, 9]}
    for batch in range(5):
        rows = slice(2 * batch, 2 * batch + 2)
        entry = {"data": images["train"][rows].transpose(0, 3, 1, 2).reshape(2, -1), "labels": labels["train"][rows]}
        (folder / f"data_batch_{batch + 1}").write_bytes(pickle.dumps(entry))
    (folder / "test_batch").write_bytes(pickle.dumps(
        {"data": images["test"].transpose(0, 3, 1, 2).reshape(3, -1), "labels": labels["test"]}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", existence_only)
    return {"root": str(tmp_path), "images": images, "labels": labels}


@pytest.fixture
def stl_root(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Dict[str, Any]:
    """3 train, 2 unlabeled and 2 test images in stl10_binary files (column-major images, 1-based labels)."""
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(1)
    images = {split: rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
              for split, n in (("train", 3), ("unlabeled", 2), ("test", 2))}
    labels = {"train": [0, 9, 4], "test": [3, 1]}
    for split, array in images.items():
        (folder / f"{split}_X.bin").write_bytes(array.transpose(0, 3, 2, 1).tobytes())
    for split, values in labels.items():
        (folder / f"{split}_y.bin").write_bytes(bytes(v + 1 for v in values))
    monkeypatch.setattr(torchvision.datasets.stl10, "check_integrity", existence_only)
    return {"root": str(tmp_path), "images": images, "labels": labels}


def test_cifar10_files_are_read_and_normalized_exactly(cifar_root: Dict[str, Any]) -> None:
    p = params(dataset_name="cifar10", data_path=cifar_root["root"])
    train, val = pretrain_datasets(p, view_transforms=as_array)
    assert (len(train), len(val)) == (10, 3)
    views, label = train[4]
    assert [torch.equal(v, torch.from_numpy(cifar_root["images"]["train"][4])) for v in views] == [True, True]
    assert label == 4
    image, label = val[2]
    expected = (torch.from_numpy(cifar_root["images"]["test"][2]).permute(2, 0, 1) / 255
                - torch.tensor(data.CIFAR10_MEAN).view(3, 1, 1)) / torch.tensor(data.CIFAR10_STD).view(3, 1, 1)
    assert torch.allclose(image, expected, atol=1e-6) and label == 9  # small images are evaluated whole

    views, _ = pretrain_datasets(p)[0][0]
    assert [(v.shape, v.dtype) for v in views] == [(torch.Size([3, 32, 32]), torch.float32)] * 2
    probe_train, probe_test = data.eval_datasets(p)
    assert (len(probe_train), len(probe_test)) == (10, 3) and probe_train[3][0].shape == (3, 32, 32)


def test_stl10_pretrains_on_train_plus_unlabeled(stl_root: Dict[str, Any]) -> None:
    p = params(dataset_name="stl10", data_path=stl_root["root"])
    train, val = pretrain_datasets(p, view_transforms=as_array)
    assert [train[i][1] for i in range(len(train))] == [0, 9, 4, -1, -1]
    stacked = np.concatenate([stl_root["images"]["train"], stl_root["images"]["unlabeled"]])
    assert all(torch.equal(train[i][0][0], torch.from_numpy(stacked[i])) for i in range(5))
    assert [val[i][1] for i in range(2)] == [3, 1] and val[0][0].shape == (3, 96, 96)

    views, _ = pretrain_datasets(p)[0][3]
    assert [(v.shape, v.dtype) for v in views] == [(torch.Size([3, 96, 96]), torch.float32)] * 2
    probe_train, probe_test = data.eval_datasets(p)
    assert [probe_train[i][1] for i in range(len(probe_train))] == [0, 9, 4] and len(probe_test) == 2


@pytest.mark.parametrize("name, files", [
    ("cifar10", ["data_batch_1", "data_batch_5", "test_batch", "batches.meta"]),
    ("stl10", ["train_X.bin", "train_y.bin", "unlabeled_X.bin", "test_X.bin", "test_y.bin"]),
])
def test_offline_download_failure_says_what_to_put_where(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                                         name: str, files: List[str]) -> None:
    def no_network(*args: Any, **kwargs: Any) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(data.DataError) as caught:
        pretrain_datasets(params(dataset_name=name, data_path=str(tmp_path / "nowhere")))
    message = str(caught.value)
    base_folder = data.sources._TORCHVISION[name].base_folder
    assert message.startswith(f"dataset {name!r}: the files are not in {tmp_path}/nowhere/{base_folder} and "
                              "downloading them failed (<urlopen error [Errno -3] Temporary failure")
    assert all(f in message for f in files)
    assert f"-C {tmp_path}/nowhere" in message and "dataset_name='imagefolder'" in message
    assert isinstance(caught.value.__cause__, urllib.error.URLError)


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic shapes
# ---------------------------------------------------------------------------------------------------------------------

def test_synthetic_is_deterministic_per_seed_split_and_index() -> None:
    def image(seed: int, split: str, index: int) -> np.ndarray:
        return np.asarray(data.SyntheticShapes(32, 100, seed, split, as_array).image(index)[0])

    assert np.array_equal(image(0, "train", 5), image(0, "train", 5))
    assert not np.array_equal(image(0, "train", 5), image(0, "train", 15))  # same class, other nuisances
    assert not np.array_equal(image(0, "train", 5), image(1, "train", 5))
    assert not np.array_equal(image(0, "train", 5), image(0, "val", 5))
    train, val = pretrain_datasets(params(dataset_name="synthetic", synthetic_train_size=30,
                                               synthetic_val_size=20, data_seed=3))
    assert (len(train), len(val)) == (30, 20)
    assert [train[i][1] for i in range(12)] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert torch.equal(val[7][0], val[7][0])  # evaluation is deterministic too
    views, _ = train[0]
    assert [(v.shape, v.dtype) for v in views] == [(torch.Size([3, 32, 32]), torch.float32)] * 2
    with pytest.raises(IndexError):
        train[30]


def test_synthetic_classes_differ_in_structure_not_in_nuisances() -> None:
    u, v = data.synthetic.shape_coordinates(64, (0.5, 0.5), 0.3, 0.0)
    masks = {name: mask(u, v) for name, mask, _ in data.SYNTHETIC_CLASSES}
    assert len(masks) >= 10
    for a in masks:
        for b in masks:
            if a < b:
                assert (masks[a] != masks[b]).mean() > 0.05, (a, b)
    centre, off_centre = (32, 32), (32, 32 + 14)  # 14 px = 0.73 radii right of the centre
    assert masks["disc"][centre] and not masks["ring"][centre] and masks["ring"][off_centre]
    assert (masks["horizontal_stripes"] == masks["horizontal_stripes"][:, :1]).all()  # constant along rows
    assert (masks["vertical_stripes"] == masks["vertical_stripes"][:1, :]).all()
    assert masks["square"][32 + 14, 32 + 14] and not masks["disc"][32 + 14, 32 + 14]  # corner at (0.76, 0.76) radii

    # the label is structural: every render of a class differs from the others of its class in colour
    rng = np.random.default_rng(0)
    renders = [data.synthetic.render_synthetic(0, 32, rng) for _ in range(3)]
    assert len({r[0, 0].tobytes() for r in renders}) == 3


def test_synthetic_statistics_match_the_declared_normalization() -> None:
    dataset = data.SyntheticShapes(32, 1000, 7, "train", as_array)
    images = np.stack([np.asarray(dataset.image(i)[0]) for i in range(1000)]) / 255
    assert np.allclose(images.mean(axis=(0, 1, 2)), data.SYNTHETIC_MEAN, atol=0.03)
    assert np.allclose(images.std(axis=(0, 1, 2)), data.SYNTHETIC_STD, atol=0.02)


# ---------------------------------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------------------------------

def describe(view: T.Compose) -> Dict[str, Any]:
    """The settings of a built-in view transform, read back from its steps."""
    out: Dict[str, Any] = {"blur_p": 0.0, "solarize_p": 0.0}
    for step in view.transforms:
        if isinstance(step, T.RandomResizedCrop):
            out.update(crop=step.size, scale=step.scale)
        elif isinstance(step, T.RandomApply) and isinstance(step.transforms[0], T.ColorJitter):
            jitter = step.transforms[0]
            out.update(jitter=(jitter.brightness[1] - 1, jitter.contrast[1] - 1, jitter.saturation[1] - 1,
                               jitter.hue[1]), jitter_p=step.p)
        elif isinstance(step, T.RandomApply) and isinstance(step.transforms[0], data.GaussianBlur):
            out.update(blur_p=step.p, blur_kernel=step.transforms[0].kernel_size)
        elif isinstance(step, T.RandomSolarize):
            out.update(solarize_p=step.p, solarize_threshold=step.threshold)
        elif isinstance(step, T.RandomGrayscale):
            out.update(grayscale_p=step.p)
    return out


def rounded(settings: Dict[str, Any]) -> Dict[str, Any]:
    return {k: tuple(round(x, 6) for x in v) if isinstance(v, tuple) else v for k, v in settings.items()}


def test_simclr_views() -> None:
    views = view_transforms(params(dataset_name="synthetic", transform_s=1.0))
    expected = {"crop": (32, 32), "scale": (0.2, 1.0), "jitter": (0.8, 0.8, 0.8, 0.2), "jitter_p": 0.8,
                "grayscale_p": 0.2, "blur_p": 0.5, "blur_kernel": 3, "solarize_p": 0.0}
    assert [rounded(describe(v)) for v in views] == [expected] * 2
    unblurred = view_transforms(params(dataset_name="synthetic", transform_apply_blur=False))
    assert [describe(v)["blur_p"] for v in unblurred] == [0.0, 0.0]


def test_byol_pair_is_asymmetric_and_differs_from_simclr() -> None:
    views = view_transforms(params(dataset_name="stl10", transform_type="byol", num_global_crops=3))
    common = {"crop": (96, 96), "scale": (0.2, 1.0), "jitter": (0.4, 0.4, 0.2, 0.1), "jitter_p": 0.8,
              "grayscale_p": 0.2, "blur_kernel": 9}
    first = {**common, "blur_p": 1.0, "solarize_p": 0.0}
    second = {**common, "blur_p": 0.1, "solarize_p": 0.2, "solarize_threshold": 0.5}
    assert [rounded(describe(v)) for v in views] == [first, second, first]  # BYOL's values at the default s = 0.5
    simclr = view_transforms(params(dataset_name="stl10"))
    assert rounded(describe(simclr[0]))["jitter"] == (0.4, 0.4, 0.4, 0.1) and describe(simclr[0])["blur_p"] == 0.5


def test_multi_crop_view_sizes() -> None:
    p = params(dataset_name="synthetic", num_local_crops=3)
    train, _ = pretrain_datasets(p)
    assert [tuple(v.shape) for v in train[0][0]] == [(3, 32, 32)] * 2 + [(3, 14, 14)] * 3  # round(32 * 3 / 7)
    local = describe(view_transforms(p)[2])
    assert (local["scale"], local["blur_p"], local["solarize_p"]) == ((0.05, 0.4), 0.5, 0.0)

    p = params(dataset_name="synthetic", synthetic_image_size=48, transform_crop_size=40, num_local_crops=1,
               local_crop_size=12, transform_type="byol")
    assert [tuple(v.shape) for v in pretrain_datasets(p)[0][0][0]] == [(3, 40, 40), (3, 40, 40), (3, 12, 12)]
    assert data.local_crop_size(params(dataset_name="imagenet"), 224) == 96


def test_blur_kernel_is_the_odd_size_near_10_percent_of_the_crop() -> None:
    assert [data.blur_kernel_size(c) for c in (14, 32, 40, 96, 224)] == [3, 3, 5, 9, 23]


@pytest.mark.parametrize("kernel, sigma", [(3, 0.1), (9, 1.3), (23, 2.0)])
def test_separable_blur_equals_torchvision_gaussian_blur(kernel: int, sigma: float) -> None:
    image = torch.rand(3, 40, 50, generator=torch.Generator().manual_seed(0))
    expected = TF.gaussian_blur(image, [kernel, kernel], [sigma, sigma])
    assert torch.allclose(data.GaussianBlur(kernel, (sigma, sigma))(image), expected, atol=1e-6)
    assert torch.allclose(data.GaussianBlur(kernel)(torch.ones(3, 1, 2)), torch.ones(3, 1, 2))  # smaller than kernel
    with pytest.raises(ValueError, match="kernel_size: got 4; expected an odd positive number"):
        data.GaussianBlur(4)


def test_user_supplied_view_transforms() -> None:
    p = params(dataset_name="synthetic", synthetic_train_size=10, num_local_crops=1)
    train, _ = pretrain_datasets(p, view_transforms=as_array)
    views, _ = train[0]
    assert len(views) == 3 and all(torch.equal(v, views[0]) for v in views)

    def constant(value: float) -> Any:
        return lambda image: torch.full((1,), value)

    train, _ = pretrain_datasets(p, view_transforms=[constant(1.0), constant(2.0), constant(3.0)])
    assert [v.item() for v in train[0][0]] == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match=r"view_transforms: expected one callable or a list of 3 callables "
                                         r"\(num_global_crops=2 \+ num_local_crops=1\), got 2 items"):
        pretrain_datasets(p, view_transforms=[constant(1.0), constant(2.0)])
    with pytest.raises(ValueError, match="view_transforms"):
        pretrain_datasets(p, view_transforms=[constant(1.0), constant(2.0), "not callable"])


def test_eval_transform_is_deterministic_and_small_images_are_kept_whole() -> None:
    p = params(dataset_name="synthetic", synthetic_image_size=48, transform_crop_size=40)
    transform = data.eval_transform(p)
    image = data.SyntheticShapes(48, 1, 0, "val", as_array).image(0)[0]
    assert torch.equal(transform(image), transform(image)) and transform(image).shape == (3, 40, 40)
    assert (transform.transforms[0].size, transform.transforms[1].size) == (40, (40, 40))


# ---------------------------------------------------------------------------------------------------------------------
# Parameters, paths and errors
# ---------------------------------------------------------------------------------------------------------------------

def test_dataset_info_defaults() -> None:
    assert data.dataset_info(params(dataset_name="stl10")) == data.DatasetInfo(
        "stl10", 96, data.STL10_MEAN, data.STL10_STD, 10, False)
    assert data.dataset_info(params(dataset_name="cifar10")).small_images
    assert data.dataset_info(params(dataset_name="synthetic", synthetic_image_size=80)) == data.DatasetInfo(
        "synthetic", 80, data.SYNTHETIC_MEAN, data.SYNTHETIC_STD, 10, False)
    assert data.crop_size(params(dataset_name="imagenet")) == 224
    assert data.crop_size(params(dataset_name="cifar10", transform_crop_size=24)) == 24


def test_data_path_falls_back_to_env_then_working_directory(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATA_PATH", str(tmp_path / "env"))
    assert data.resolve_data_path(params()) == str(tmp_path / "env")
    assert data.resolve_data_path(params(data_path=str(tmp_path / "given"))) == str(tmp_path / "given")
    monkeypatch.delenv("DATA_PATH")
    monkeypatch.chdir(tmp_path)
    assert data.resolve_data_path(params()) == str(tmp_path)


def test_the_data_functions_need_only_the_data_source_fields(tmp_path: Any) -> None:
    """The linear probe's params share the DataSourceOptions group with ModelParams; the data functions read nothing
    else."""
    for name in ("a", "b"):
        for i in range(5):
            save(f"{tmp_path}/train/{name}/{i}.png", rgb(16, 16, seed=i))
    source = DataSourceOptions(dataset_name="imagefolder", data_path=str(tmp_path), synthetic_train_size=8,
                               synthetic_val_size=4, num_data_workers=0, pin_data_memory=False)
    train, test = data.eval_datasets(source)
    assert (len(train), len(test)) == (8, 2)  # default holdout_fraction 0.1 -> 1 image per class
    assert [len(d) for d in data.eval_datasets(attr.evolve(source, dataset_name="synthetic"))] == [8, 4]
    with pytest.raises(ValueError, match="dataset_name: got 'mnist'; expected one of 'stl10', 'cifar10'"):
        data.eval_datasets(attr.evolve(source, dataset_name="mnist"))


# ---------------------------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------------------------

class SameImage(torch.utils.data.Dataset):
    """Eight copies of one noise image through random crops: two equal batches mean two equal RNG streams."""

    def __init__(self) -> None:
        self.image = rgb(32, 32)
        crop = T.Compose([T.RandomResizedCrop(16, scale=(0.05, 1.0)), T.ToTensor()])
        self.views = data.MultiView([crop, crop])

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> Any:
        return self.views(self.image), index


def batches(seed: int) -> List[torch.Tensor]:
    """Both views of the batches of two epochs; with two workers, consecutive batches come from different workers."""
    loader = data.make_loader(SameImage(), batch_size=2, shuffle=True, drop_last=False, num_workers=2,
                              pin_memory=True, seed=seed)
    return [torch.cat([views[0], views[1]]) for _ in range(2) for views, _ in loader]


def test_workers_never_repeat_views_and_a_seed_reproduces_the_batches() -> None:
    first = batches(seed=0)
    assert len({batch.numpy().tobytes() for batch in first}) == len(first) == 8
    assert all(torch.equal(a, b) for a, b in zip(first, batches(seed=0)))
    assert not all(torch.equal(a, b) for a, b in zip(first, batches(seed=1)))


def test_loader_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    with_workers = data.make_loader(SameImage(), batch_size=2, shuffle=False, drop_last=True, num_workers=2,
                                    pin_memory=True, seed=5)
    assert (with_workers.persistent_workers, with_workers.prefetch_factor, with_workers.drop_last) == (True, 2, True)
    assert with_workers.pin_memory == torch.cuda.is_available()
    without = data.make_loader(SameImage(), batch_size=2, shuffle=False, drop_last=False, num_workers=0,
                               pin_memory=False, seed=5)
    assert (without.persistent_workers, without.prefetch_factor) == (False, None)
    assert without.generator.initial_seed() == with_workers.generator.initial_seed()

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    on_rank_1 = data.make_loader(SameImage(), batch_size=2, shuffle=False, drop_last=False, num_workers=0,
                                 pin_memory=False, seed=5)
    assert on_rank_1.generator.initial_seed() != without.generator.initial_seed()


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_CIFAR10, "train")), reason="../shared cifar10 absent")
def test_shared_cifar10_tree_as_imagefolder() -> None:
    p = params(dataset_name="imagefolder", data_path=SHARED_CIFAR10)
    assert data.dataset_info(p) == data.DatasetInfo("imagefolder", 32, data.IMAGENET_MEAN, data.IMAGENET_STD, 10,
                                                    True)
    train, val = pretrain_datasets(p)
    assert (len(train), len(val)) == (45000, 5000)
    assert [tuple(v.shape) for v in train[0][0]] == [(3, 32, 32)] * 2
    assert data.crop_size(params(dataset_name="imagefolder", data_path=SHARED_CIFAR10, transform_crop_size=32)) == 32
