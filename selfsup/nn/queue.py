"""The queue of past keys: MoCo's negatives, NNCLR's support set."""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch import Tensor, nn


class Queue(nn.Module):
    """FIFO of the last K keys (MoCo, He et al. 2019, arXiv:1911.05722), stored as columns of ``keys`` [D, K].

    It starts empty and :meth:`memory` returns only the columns written so far, so every negative (and every NNCLR
    neighbour) is a real key. MoCo fills the queue with random unit vectors instead; early keys of a randomly
    initialised network lie in a narrow cone, far from such vectors, so "point every query into the cone"
    separates the positive from all of them. At lr 0.5 that shortcut collapsed MoCo v2 within 5 steps on CIFAR-10
    (ResNet-18, K=4096 and K=256). Keys, pointer and fill count are buffers, so checkpoints hold them.
    """

    keys: Tensor  # [D, K]
    ptr: Tensor  # 0-d long: the next column to write
    filled: Tensor  # 0-d long: how many columns hold keys

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        self.register_buffer("keys", torch.zeros(dim, size))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self._filled = 0  # host copy of ``filled``: slicing by it needs no device sync

    def memory(self) -> Tensor:
        """The keys enqueued so far, [D, min(enqueued, K)] (a view; the whole buffer once full)."""
        return self.keys if self._filled == self.keys.shape[1] else self.keys[:, : self._filled]

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write keys [N, D] into the next N columns (wrapping around) and advance the pointer; no host sync."""
        size = self.keys.shape[1]
        columns = (self.ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.keys.index_copy_(1, columns, keys.T.to(self.keys.dtype))
        self.ptr.copy_((self.ptr + keys.shape[0]) % size)
        self._filled = min(self._filled + keys.shape[0], size)
        self.filled.fill_(self._filled)

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._filled = int(self.filled)
