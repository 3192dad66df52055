"""Cross-process helpers: gathers and reductions with and without gradient, MoCo's shuffle-BN, SyncBatchNorm for any
device, and the options that turn them on. Every one is an exact no-op in a single process, so each distributed flag
also runs on one device."""

from selfsup.distributed.collectives import (
    all_reduce_max,
    all_reduce_sum,
    all_reduce_with_grad,
    batch_shuffle,
    batch_unshuffle,
    gather,
    gather_with_grad,
    identity,
    is_distributed,
    rank,
    step_generator,
    this_process_rows,
    world_size,
)
from selfsup.distributed.options import SYNC_BATCH_NORMS, DistributedOptions
from selfsup.distributed.sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm

__all__ = ["DistributedOptions", "SYNC_BATCH_NORMS", "SyncBatchNorm", "all_reduce_max", "all_reduce_sum",
           "all_reduce_with_grad", "batch_shuffle", "batch_unshuffle", "convert_sync_batchnorm", "gather",
           "gather_with_grad", "identity", "is_distributed", "rank", "step_generator", "this_process_rows",
           "world_size"]
