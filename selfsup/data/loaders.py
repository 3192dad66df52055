"""Data loaders. The training loader's order and per-sample seeds are functions of (seed, epoch, position), so the
views depend only on those: not on the number of worker processes or ranks, nor on whether the run was interrupted
and resumed; and it resumes mid-epoch from a checkpoint.

Randomness: the per-image augmentations draw from the global RNGs (torch, numpy, random) of the process that loads
the sample. The training loader (``make_loader(shuffle=True)``) seeds them before every sample from a seed drawn for
that sample's position in the epoch (:class:`EpochSampler`, :class:`SeededSamples`). Other loaders seed a generator
with ``seed`` and the distributed rank, from which PyTorch derives each worker's seed. With augmentation_backend
"batched" the training loader only decodes and resizes; batched.py draws the views.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

PREFETCH_BATCHES_PER_WORKER = 2  # deeper prefetching costs memory (a 224 px batch of 256 x 2 views is 300 MB)
SAMPLE_SEED_HIGH = 2**63 - 1  # the training loader's per-sample seeds are drawn from [0, SAMPLE_SEED_HIGH)


def _mixed_seed(*entropy: int) -> int:
    """A 64-bit seed that depends on every value of ``entropy`` (NumPy's SeedSequence hashing)."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1, dtype=np.uint64)[0])


def _world() -> Tuple[int, int]:
    """(number of processes, this process's rank); (1, 0) outside torch.distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def _rank_seed(seed: int) -> int:
    """``seed`` made distinct per distributed rank, so that ranks never draw the same augmentations."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return _mixed_seed(seed, torch.distributed.get_rank() if distributed else 0)


class EpochSampler(DistributedSampler):
    """This process's share of every epoch's sample order, a pure function of (``seed``, epoch), resumable mid-epoch.

    Epoch e's order is a permutation of the dataset drawn from (seed, e) (the identity without ``shuffle``), padded by
    repetition to a multiple of the number of processes W, as torch's DistributedSampler; process r takes the global
    positions r, r + W, r + 2W, ... Every global position also gets a seed drawn from (seed, e): items are pairs
    (dataset index, sample seed), which :class:`SeededSamples` turns into samples.

    ``set_epoch(e)`` (Lightning calls it before every epoch) selects the epoch of the next pass, and a pass without it
    is the next epoch. ``resume(e, consumed)`` makes the next pass of epoch e start at global position ``consumed``
    (it skips the positions that every process together has consumed), unless set_epoch selects another epoch.
    Being a DistributedSampler, Lightning keeps it under DDP instead of wrapping it in its own.
    """

    def __init__(self, dataset: Dataset, *, seed: int, shuffle: bool = True, num_replicas: int = 1,
                 rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0  # global position at which the next pass of self.epoch begins

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.start = epoch, 0

    def resume(self, epoch: int, consumed: int) -> None:
        self.epoch, self.start = epoch, consumed

    def plan(self, epoch: int) -> Tuple[Tensor, Tensor]:
        """(dataset index, sample seed) at every global position of ``epoch``: two int64 tensors [total_size]."""
        generator = torch.Generator().manual_seed(_mixed_seed(self.seed, epoch))
        size = len(self.dataset)  # type: ignore[arg-type]
        order = torch.randperm(size, generator=generator) if self.shuffle else torch.arange(size)
        order = order.repeat(math.ceil(self.total_size / max(size, 1)))[:self.total_size]
        return order, torch.randint(0, SAMPLE_SEED_HIGH, (self.total_size,), generator=generator)

    def __iter__(self) -> Any:
        epoch, start = self.epoch, self.start
        self.epoch, self.start = epoch + 1, 0
        order, seeds = self.plan(epoch)
        positions = torch.arange(self.rank, self.total_size, self.num_replicas)
        positions = positions[positions >= start]
        return iter(zip(order[positions].tolist(), seeds[positions].tolist()))


class SeededSamples(Dataset):
    """Items ``(index, seed)`` -> ``dataset[index]``, loaded with torch's (CPU), numpy's and Python's global RNGs
    seeded with ``seed``. The RNG states are restored after each batch, so the loading process's own random streams
    (the training process's, with ``num_workers=0``) are left as they were."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: Tuple[int, int]) -> Any:
        return self.__getitems__([item])[0]

    def __getitems__(self, items: Sequence[Tuple[int, int]]) -> List[Any]:
        saved = torch.default_generator.get_state(), np.random.get_state(), random.getstate()
        try:
            samples = []
            for index, seed in items:
                torch.default_generator.manual_seed(seed)
                np.random.seed(seed % 2**32)
                random.seed(seed)
                samples.append(self.dataset[index])
            return samples
        finally:
            torch.default_generator.set_state(saved[0])
            np.random.set_state(saved[1])
            random.setstate(saved[2])


class ResumableLoader(DataLoader):
    """The training DataLoader: an :class:`EpochSampler` over :class:`SeededSamples`, with a position for checkpoints
    (``state_dict``: the epoch and how many global positions have been consumed; ``load_state_dict``, which
    train.resume.ResumeState calls before a resumed run's first batch), so that a resumed epoch continues with the next
    unseen batch and the same views. Having ``state_dict`` also tells Lightning that the loader is resumable.

    Consumed means handed to the training loop, counted here rather than in the sampler, which workers read ahead of
    the training. A pass starts at its first ``next()`` (after Lightning's set_epoch), not at ``iter()``.
    """

    sampler: EpochSampler
    batch_size: int  # make_loader always batches (DataLoader's attribute is None only without batching)

    def __iter__(self) -> Any:
        sampler = self.sampler
        self._epoch, self._consumed = sampler.epoch, sampler.start  # what the sampler's pass starts from
        step = self.batch_size * sampler.num_replicas  # global positions per batch (all processes together)
        for batch in super().__iter__():
            self._consumed = min(self._consumed + step, sampler.total_size)
            yield batch

    def state_dict(self) -> Dict[str, int]:
        epoch, consumed = getattr(self, "_epoch", self.sampler.epoch), getattr(self, "_consumed", self.sampler.start)
        left = (self.sampler.total_size - consumed) // self.sampler.num_replicas  # per process
        if left < (self.batch_size if self.drop_last else 1):  # the epoch is over: the next one starts afresh
            epoch, consumed = epoch + 1, 0
        return {"epoch": epoch, "consumed": consumed}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.sampler.resume(state["epoch"], state["consumed"])
        self._epoch, self._consumed = state["epoch"], state["consumed"]


def make_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, drop_last: bool, num_workers: int,
                pin_memory: bool, seed: int = 0, collate_fn: Optional[Callable[[List[Any]], Any]] = None) -> Any:
    """A DataLoader with persistent, prefetching workers and page-locked memory only where a GPU can use it.

    ``shuffle=True`` gives the training loader, a :class:`ResumableLoader` whose order and augmentations are functions
    of (``seed``, epoch, position) (module docstring) and which resumes mid-epoch; otherwise the samples come in order,
    and workers are seeded from ``seed`` and the rank. Sharded datasets (shards.ShardDataset) get litdata's loader,
    which orders, splits across ranks and resumes them itself."""
    pin_memory = pin_memory and torch.cuda.is_available()
    generator = torch.Generator().manual_seed(_rank_seed(seed))
    with_order = getattr(dataset, "with_order", None)
    if with_order is not None:
        from selfsup.data.shards import shard_loader  # litdata: the stream extra

        return shard_loader(with_order(shuffle, seed, drop_last), batch_size, num_workers, pin_memory, generator,
                            collate_fn)
    workers = num_workers > 0
    settings: Dict[str, Any] = dict(
        batch_size=batch_size, drop_last=drop_last, num_workers=num_workers, pin_memory=pin_memory,
        persistent_workers=workers, prefetch_factor=PREFETCH_BATCHES_PER_WORKER if workers else None,
        generator=generator, collate_fn=collate_fn,
    )
    if not shuffle:
        return DataLoader(dataset, shuffle=False, **settings)
    world, rank = _world()
    sampler = EpochSampler(dataset, seed=seed, num_replicas=world, rank=rank)
    return ResumableLoader(SeededSamples(dataset), sampler=sampler, **settings)


def with_progress(batches: Iterable[Any], total: int, description: str, enabled: bool = True) -> Iterator[Any]:
    """The batches of ``batches`` (``(images, labels)`` pairs), with a progress bar that counts images and shows
    images per second (tqdm, on stderr)."""
    from tqdm.auto import tqdm  # Lightning's own progress bars use it

    with tqdm(total=total, desc=description, unit="img", unit_scale=True, disable=not enabled, leave=False) as bar:
        for batch in batches:
            yield batch
            bar.update(len(batch[-1]))
