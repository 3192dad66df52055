"""Exact resume: what Lightning does not restore by itself, the global random number generators of every process and
the training loader's position.

What makes a resume exact (``trainer.fit(model, ckpt_path=...)``, ``train.py --resume PATH|auto``):

- weights, EMA target, memory and pointer, criterion buffers, BatchNorm / BatchRenorm counters: module state;
- optimizer (SGD or LARS momentum buffers) and the per-step learning-rate schedule: Lightning's optimizer and
  scheduler states; the EMA momentum schedule is a function of the restored global step;
- the position in the epoch and the augmentations still to come: ``data.ResumableLoader``, whose order and per-sample
  seeds are functions of (seed, epoch, position), and whose position :class:`ResumeState` saves and restores;
- the global random number generators of every process (torch CPU and CUDA, numpy, random), for anything else that
  draws from them (dropout, stochastic depth, the shuffle-BN permutation): :class:`ResumeState`.

Checkpoint files themselves are written atomically (``train.checkpoints``).
"""

from __future__ import annotations

import random
import warnings
from typing import Any, Dict, List, Mapping, Optional, Tuple, cast

import numpy as np
import pytorch_lightning as pl
import torch


def rng_state() -> Dict[str, Any]:
    """This process's global RNG states, as tensors and Python numbers (loadable with torch.load(weights_only=True))."""
    # The global generator is a legacy MT19937 RandomState, whose state is this tuple (numpy's stubs allow a dict too).
    _, keys, position, has_gauss, gauss = cast(Tuple[str, np.ndarray, int, int, float], np.random.get_state())
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumeState(pl.Callback):
    """What Lightning does not restore by itself: the global RNG states of every process (each process gets its own
    back) and the training loader's position (Lightning 2.6 saves ``data.ResumableLoader``'s state with the loop state,
    but restores it only when it creates the loader, and ``configure_optimizers`` has created it before the loop
    state is restored, for estimated_stepping_batches).

    Both are applied at on_train_start: after Lightning's sanity-check validation, before the first batch and before
    Lightning's set_epoch, which keeps the loader's position only if it belongs to the epoch being resumed. Resumed on
    a different number of processes, the RNG states are not restored (with a warning).
    """

    KEY = "resume_state"

    def __init__(self) -> None:
        self._saved: Optional[Dict[str, Any]] = None

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: Dict[str, Any]) -> None:
        processes: List[Any] = [rng_state()]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: List[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, processes[0])  # Lightning saves on every process
            processes = gathered
        loader = trainer.train_dataloader
        position = loader.state_dict() if loader is not None and hasattr(loader, "state_dict") else None
        checkpoint[self.KEY] = {"rng": processes, "train_loader": position}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: Dict[str, Any]) -> None:
        self._saved = checkpoint.get(self.KEY)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        saved, self._saved = self._saved, None
        if saved is None:
            return
        loader = trainer.train_dataloader
        if saved["train_loader"] is not None and loader is not None and hasattr(loader, "load_state_dict"):
            loader.load_state_dict(saved["train_loader"])
        if len(saved["rng"]) != trainer.world_size:
            warnings.warn(f"the checkpoint holds the RNG states of {len(saved['rng'])} processes but this run has "
                          f"{trainer.world_size}; random draws outside the data pipeline continue from fresh states",
                          stacklevel=2)
            return
        set_rng_state(saved["rng"][trainer.global_rank])
