"""Decoding images on the training device: the loader workers only read the files' bytes, and the batch is decoded
where it is trained (torchvision.io.decode_jpeg, batched on CUDA with nvJPEG), then brought to the stored square of
the batched views, exactly as the loader path does on the host: the shorter side resized to S (bilinear,
antialiased), the centre square kept.

RandomResizedCrop sees the same stored square either way: its crops are drawn from the S x S centre square of each
image (sources.stored_image_size: S = crop / 0.875 for large images, 256 px for 224 px crops), never from the full
decoded resolution, so decoding a 4000 px photo on the device changes the cost, not the crops. The stored square
differs from the host path's by rounding only: host decoding is PIL (libjpeg-turbo) and PIL's resize, device decoding
nvJPEG (or libjpeg on a CPU device) and torch's antialiased resize (tests/test_decode.py states the tolerance).
Files that are not JPEG (PNG, ...) are decoded on the host by torchvision.io.decode_image and moved to the device.
"""

from __future__ import annotations

from typing import Any, List, NamedTuple, Sequence, Tuple

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from selfsup.data.files import DataError, Sample

JPEG_MAGIC = (0xFF, 0xD8, 0xFF)


class EncodedImages(NamedTuple):
    """The encoded files of a batch (uint8 1-D tensors, on the host), as the loader yields them."""

    data: List[Tensor]


def read_bytes(path: str) -> Tensor:
    """The bytes of a file as a uint8 1-D tensor."""
    with open(path, "rb") as f:
        return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)


def collate_encoded(batch: List[Tuple[Tensor, int]]) -> Tuple[EncodedImages, Tensor]:
    """(EncodedImages, labels [B]) of ``(bytes, label)`` items: the files differ in length, so they stay a list."""
    return EncodedImages([item for item, _ in batch]), torch.tensor([label for _, label in batch])


def is_jpeg(data: Tensor) -> bool:
    return len(data) >= 3 and tuple(data[:3].tolist()) == JPEG_MAGIC


def stored_square(image: Tensor, side: int) -> Tensor:
    """uint8 [3, H, W] -> [3, side, side]: the shorter side resized to ``side`` (bilinear, antialiased, as PIL), then
    the centre square."""
    height, width = image.shape[-2:]
    if min(height, width) != side:
        image = TF.resize(image, [side], antialias=True)
    return TF.center_crop(image, [side, side])


def decode_batch(encoded: Sequence[Tensor], side: int, device: torch.device) -> Tensor:
    """uint8 [B, 3, side, side] on ``device`` from the encoded files of a batch: the JPEGs decoded together on the
    device, the others on the host."""
    decoded: List[Any] = [None] * len(encoded)
    jpegs = [i for i, data in enumerate(encoded) if is_jpeg(data)]
    if jpegs:
        images = decode_jpeg([encoded[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
        for i, image in zip(jpegs, images):
            decoded[i] = image
    for i, data in enumerate(encoded):
        if decoded[i] is None:
            decoded[i] = decode_image(data, mode=ImageReadMode.RGB).to(device)
    return torch.stack([stored_square(image, side) for image in decoded])


class EncodedFileDataset(Dataset):
    """Items ``(file bytes as a uint8 tensor, label)`` of a list of image files: the loader's share of decoding on
    the device. Unreadable images surface when the batch is decoded (skip_corrupt_images applies to host decoding)."""

    def __init__(self, samples: Sequence[Sample], classes: Sequence[str] = ()) -> None:
        if not samples:
            raise DataError("EncodedFileDataset: no image files given")
        self.samples, self.classes = list(samples), list(classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Tensor, int]:
        path, label = self.samples[index]
        return read_bytes(path), label
