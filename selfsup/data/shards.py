"""Sharded datasets for many nodes (``dataset_name="shards"``), on litdata (the ``stream`` extra).

An image folder of a million files is the first thing that breaks when a run moves to many nodes: every epoch lists
and opens every file on a shared filesystem. ``selfsup-shards`` (:func:`write_shards`) packs the folder's train and
validation splits (the same splits ``"imagefolder"`` makes, held-out part included) into chunk files holding the
images' original bytes, and a run reads them sequentially, from a local folder or an object store (``s3://...``).

Why litdata rather than webdataset: its loader saves and restores its position (``StreamingDataLoader.state_dict``),
so a run resumes mid-epoch exactly, and it assigns chunks to ranks and workers deterministically from (seed, epoch,
number of processes); webdataset's tar streams would need both written on top. Its ``optimize`` writes the chunks in
parallel.

Each item keeps its index in its split, and the per-image views of a sample are drawn from seeds of (seed, epoch,
index), as the folder loader draws them (loaders.SeededSamples): they do not depend on the number of workers or
ranks, and survive a resume.
"""

from __future__ import annotations

import io
import json
import os
import random
from typing import Any, Callable, Dict, List, Optional, Tuple

import litdata
import numpy as np
import torch
from PIL import Image

from selfsup.data.files import DataError, FolderIndex, median_short_side, probe_images, to_rgb

METADATA = "selfsup_shards.json"
SPLITS = ("train", "val")
DEFAULT_CHUNK_BYTES = "64MB"


def _record(item: Tuple[int, str, int]) -> Dict[str, Any]:
    index, path, label = item
    with open(path, "rb") as f:
        return {"index": index, "label": label, "image": f.read()}


def write_shards(splits: Tuple[FolderIndex, FolderIndex], output_dir: str, chunk_bytes: str = DEFAULT_CHUNK_BYTES,
                 num_workers: int = 1) -> Dict[str, Any]:
    """Write the (train, validation) indices of an image folder as ``<output_dir>/train`` and ``<output_dir>/val``
    chunk files plus ``<output_dir>/selfsup_shards.json`` (classes, counts, default crop); returns the metadata.
    ``num_workers`` processes write the chunks."""
    train = splits[0]
    metadata: Dict[str, Any] = {
        "classes": train.classes,
        "image_size": median_short_side(probe_images(train.root, train.classes), skip_corrupt=False),
    }
    for split, index in zip(SPLITS, splits):
        items = [(i, path, label) for i, (path, label) in enumerate(index.samples)]
        folder = os.path.join(output_dir, split)
        litdata.optimize(fn=_record, inputs=items, output_dir=folder, chunk_bytes=chunk_bytes,
                         num_workers=num_workers, mode="overwrite")
        with open(os.path.join(folder, "index.json")) as f:
            if not json.load(f).get("chunks"):  # litdata reports a failed worker process but does not raise
                raise DataError(f"shards: writing {folder} failed (no chunks); see the errors above")
        metadata[split] = len(items)
    with open(os.path.join(output_dir, METADATA), "w") as f:
        json.dump(metadata, f, indent=1)
    return metadata


def read_metadata(root: str) -> Dict[str, Any]:
    """The metadata of the shards at ``root``; a clear error when there are none."""
    path = os.path.join(root, METADATA)
    if not os.path.isfile(path):
        raise DataError(f"shards: {path} does not exist; write shards with selfsup-shards --data_path <image folder> "
                        f"--output {root}, and point data_path at that output")
    with open(path) as f:
        return dict(json.load(f))


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0])


class ShardDataset(litdata.StreamingDataset):
    """One split of the shards at ``root``: items ``(transform(RGB image), label)``, or with ``encoded`` the image's
    bytes ``(uint8 tensor, label)`` for decoding on the training device. The global RNGs are seeded per sample from
    (``seed``, epoch, index) around the transform, and restored after it."""

    def __init__(self, root: str, split: str, transform: Callable[[Image.Image], Any], encoded: bool = False,
                 shuffle: bool = False, seed: int = 0, drop_last: bool = False) -> None:
        self.classes = list(read_metadata(root)["classes"])
        super().__init__(os.path.join(root, split), shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.root, self.split, self.image_transform, self.encoded = root, split, transform, encoded
        self.sample_seed = seed

    def with_order(self, shuffle: bool, seed: int, drop_last: bool) -> ShardDataset:
        """This split read in another order (the loader decides it: shuffled by the run's seed for training)."""
        return ShardDataset(self.root, self.split, self.image_transform, self.encoded, shuffle, seed, drop_last)

    def item_labels(self) -> np.ndarray:
        """The label of every item (int64 [N]), read from the chunks without decoding an image."""
        return np.array([int(super(ShardDataset, self).__getitem__(i)["label"]) for i in range(len(self))],
                        dtype=np.int64)

    def __getitem__(self, index: Any) -> Tuple[Any, int]:
        item = super().__getitem__(index)
        label = int(item["label"])
        if self.encoded:
            return torch.frombuffer(bytearray(item["image"]), dtype=torch.uint8), label
        with Image.open(io.BytesIO(bytes(item["image"]))) as image:
            image.load()
            rgb = to_rgb(image)
        saved = torch.default_generator.get_state(), np.random.get_state(), random.getstate()
        seed = _sample_seed(self.sample_seed, self.current_epoch, int(item["index"]))
        torch.default_generator.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        try:
            return self.image_transform(rgb), label
        finally:
            torch.default_generator.set_state(saved[0])
            np.random.set_state(saved[1])
            random.setstate(saved[2])


def shard_loader(dataset: ShardDataset, batch_size: int, num_workers: int, pin_memory: bool, generator: torch.Generator,
                 collate_fn: Optional[Callable[[List[Any]], Any]] = None) -> Any:
    """litdata's StreamingDataLoader of a shard dataset: resumable mid-epoch (state_dict / load_state_dict). Its own
    ``generator`` seeds the workers: drawn from the global RNG instead, every new iterator (a resumed epoch's
    included) would shift the RNG streams that a resume restores."""
    return litdata.StreamingDataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                                       pin_memory=pin_memory, collate_fn=collate_fn, generator=generator)
