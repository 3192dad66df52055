"""Cross-process helpers: gathers and reductions with and without gradient, MoCo's shuffle-BN, SyncBatchNorm for any
device. Every one is an exact no-op in a single process, so each distributed flag also runs on one device."""

from selfsup.dist.collectives import (
    all_reduce_max,
    all_reduce_sum,
    all_reduce_with_grad,
    batch_shuffle,
    batch_unshuffle,
    gather,
    gather_with_grad,
    is_distributed,
    rank,
    world_size,
)
from selfsup.dist.sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm

__all__ = ["SyncBatchNorm", "all_reduce_max", "all_reduce_sum", "all_reduce_with_grad", "batch_shuffle",
           "batch_unshuffle", "convert_sync_batchnorm", "gather", "gather_with_grad", "is_distributed", "rank",
           "world_size"]
