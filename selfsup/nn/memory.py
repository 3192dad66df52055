"""What a method remembers across steps: MoCo's queue of past keys, NNCLR's support set and SwAV's feature queue are
one :class:`Memory`, a FIFO of the last ``size`` rows it was given."""

from __future__ import annotations

import warnings
from typing import Any, Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from selfsup import distributed

Views = Sequence[Optional[Tensor]]  # one tensor per view of a step, None for the views a tensor is not computed for


def check_length(field: str, size: int, batch_size: int) -> None:
    """The rule of a memory of ``size`` rows (set by the option ``field``, named in the error) fed ``batch_size`` rows
    per step and process: it holds whole batches (MoCo's original assertion)."""
    if size <= 0:
        raise ValueError(f"{field}: got {size}; a memory needs at least one batch of rows")
    if size % batch_size != 0:
        raise ValueError(f"{field}: memory length {size} must be a multiple of batch_size {batch_size} (whole batches "
                         "enter it)")


class Memory(nn.Module):
    """A FIFO ring of the last ``size`` rows of width ``dim`` written into it, in one slot per view of ``views``.

    Each :meth:`write` appends the rows of those views of the step (their keys or features, without gradient),
    gathered from every process with ``gather``. The memory starts empty and :meth:`read` returns the rows written
    so far, [slots, filled, dim] (so every negative or neighbour is a real row), or None before ``start_epoch`` and,
    with ``whole``, until it is full (SwAV scores its queue only once it is full). Rows, pointer and fill count are
    buffers, so checkpoints hold them. ``field`` (the option that sets its length) and ``gather_field`` (the one that
    turns gathering on, if any) name them in errors and warnings.

    Starting empty rather than with random unit vectors as MoCo does matters: early keys of a randomly initialised
    network lie in a narrow cone far from such vectors, so "point every query into the cone" separates the positive
    from all of them and collapses the run (observed: docs/benchmarks.md, "Measurements behind defaults").
    """

    rows: Tensor  # [slots, size, dim]
    ptr: Tensor  # 0-d long: the next row to write
    filled: Tensor  # 0-d long: how many rows of each slot hold data

    def __init__(self, dim: int, size: int, views: Sequence[int], field: str, gather: bool = False,
                 gather_field: Optional[str] = None, start_epoch: int = 0, whole: bool = False) -> None:
        super().__init__()
        self.views = list(views)
        self.field, self.gather, self.gather_field = field, gather, gather_field
        self.start_epoch, self.whole = start_epoch, whole
        self.register_buffer("rows", torch.zeros(len(self.views), size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self._filled = 0  # host copy of ``filled``: slicing by it needs no device sync
        self.active = start_epoch == 0

    @property
    def size(self) -> int:
        return self.rows.shape[1]

    def set_epoch(self, epoch: int) -> None:
        self.active = epoch >= self.start_epoch

    def read(self) -> Optional[Tensor]:
        """The rows written so far, [slots, filled, dim] (a view; the whole buffer once full), or None while the
        memory is not in use."""
        if not self.active or (self.whole and self._filled < self.size):
            return None
        return self.rows if self._filled == self.size else self.rows[:, : self._filled]

    @torch.no_grad()
    def write(self, keys: Views) -> None:
        """Append the rows [N, dim] of each of this memory's views of ``keys`` (wrapping around); no host sync."""
        if not self.active:
            return
        gather = distributed.gather if self.gather else distributed.identity
        rows = torch.stack([gather(keys[view].detach()) for view in self.views])  # type: ignore[union-attr]
        count = rows.shape[1]
        positions = (self.ptr + torch.arange(count, device=rows.device)) % self.size
        self.rows.index_copy_(1, positions, rows.to(self.rows.dtype))
        self.ptr.copy_((self.ptr + count) % self.size)
        self._filled = min(self._filled + count, self.size)
        self.filled.fill_(self._filled)

    def check_global_batch(self, batch_size: int, world_size: int) -> None:
        """The rules that need the number of processes, when fit starts: a gathering memory holds whole global
        batches; one that does not gather holds only rank 0's rows under DDP (a warning)."""
        if self.gather and self.size % (batch_size * world_size) != 0:
            raise ValueError(f"{self.field}: {self.size} must be a multiple of the global batch "
                             f"{batch_size * world_size} (batch_size {batch_size} x {world_size} processes): every "
                             "step writes the rows of all processes")
        if not self.gather and world_size > 1:
            fix = f"; set {self.gather_field}=True to write the whole global batch" if self.gather_field else ""
            warnings.warn(
                f"{self.field} without gathering, with {world_size} processes: each process writes only its own rows "
                f"and DDP broadcasts rank 0's buffers before every step, so every memory holds rank 0's rows "
                f"only{fix}", stacklevel=2)

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._filled = int(self.filled)
