"""Training throughput in the progress bar."""

from __future__ import annotations

import time
from typing import Any, Optional

import pytorch_lightning as pl

THROUGHPUT_METRIC = "img_per_s"


class Throughput(pl.Callback):
    """Training images per second over all processes, from the end of one batch to the end of the next (so data
    loading counts), smoothed exponentially; shown in the progress bar and logged as ``img_per_s``."""

    def __init__(self, smoothing: float = 0.9) -> None:
        self.smoothing = smoothing
        self.rate: Optional[float] = None
        self._last: Optional[float] = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = None  # the gap across validation and epoch boundaries is not training time

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last is not None and now > self._last:
            images = len(batch[-1]) * trainer.world_size
            rate = images / (now - self._last)
            self.rate = rate if self.rate is None else self.smoothing * self.rate + (1 - self.smoothing) * rate
            pl_module.log(THROUGHPUT_METRIC, self.rate, prog_bar=True, on_step=True, on_epoch=False,
                          batch_size=len(batch[-1]))
        self._last = now
