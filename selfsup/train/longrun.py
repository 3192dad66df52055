"""Long runs that survive: atomic checkpoints, exact resume, a non-finite loss guard and a collapse monitor.

What makes a resume exact (``trainer.fit(model, ckpt_path=...)``, ``train.py --resume PATH|auto``):

- weights, EMA target, queue and pointer, criterion buffers, BatchNorm / BatchRenorm counters: module state;
- optimizer (SGD or LARS momentum buffers) and the per-step learning-rate schedule: Lightning's optimizer and
  scheduler states; the EMA momentum schedule is a function of the restored global step;
- the position in the epoch and the augmentations still to come: ``data.ResumableLoader``, whose order and per-sample
  seeds are functions of (seed, epoch, position), and whose position :class:`ResumeState` saves and restores;
- the global random number generators of every process (torch CPU and CUDA, numpy, random), for anything else that
  draws from them (dropout, stochastic depth, the shuffle-BN permutation): :class:`ResumeState`.

Checkpoint files are written by :class:`AtomicCheckpointIO` (a temporary file in the same folder, fsync, rename), so a
kill during a save leaves the previous file in place, and a file that is truncated anyway is reported by name.

Reading values back from the device costs a host synchronization. The guard and the monitor therefore read the values
of step k at the end of step k + 1, by when the device has computed them (while the host has already queued step
k + 1): on a GPU the read should then not make the host wait (not measured here), on a CPU it costs nothing. The price
is that a non-finite loss is reported one step late, except that every checkpoint save first checks the pending step,
and refuses to write non-finite weights.
"""

from __future__ import annotations

import abc
import glob
import math
import os
import random
import tempfile
import warnings
import zipfile
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, cast

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import Tensor

CHECKPOINT_SUFFIX = ".ckpt"
EMBEDDING_STD_METRIC = "step_embedding_std"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or unreadable; the message names it."""


class NonFiniteError(RuntimeError):
    """The loss (or the weights about to be saved) became NaN or infinite; the message names the step and the last
    good checkpoint."""


class CollapseWarning(UserWarning):
    """The projections have (nearly) stopped varying across the batch."""


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoint files
# ---------------------------------------------------------------------------------------------------------------------

def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` such that ``path`` is either the old file or the complete new one, even if the process
    is killed or the machine fails during the save: write a temporary file in the same folder, fsync it, rename it over
    ``path`` and fsync the folder. A killed save leaves only a hidden ``.<name>.*.tmp`` file behind."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    _fsync_directory(directory)


def is_complete_checkpoint(path: str) -> bool:
    """Whether ``path`` is a whole torch zip checkpoint (its zip directory, written last, is present); cheap: reads the
    end of the file only."""
    return os.path.isfile(path) and zipfile.is_zipfile(path)


def _checkpoint_error(path: str, reason: str) -> CheckpointError:
    directory = os.path.dirname(os.path.abspath(path))
    others = [p for p in complete_checkpoints(directory) if os.path.abspath(p) != os.path.abspath(path)]
    hint = f"; complete checkpoints in {directory}: {', '.join(map(os.path.basename, others))}" if others else ""
    return CheckpointError(f"checkpoint {path} cannot be resumed from: {reason}{hint}")


def check_checkpoint_file(path: str) -> None:
    """Raise :class:`CheckpointError` naming ``path`` if it does not exist or is truncated (no zip directory)."""
    if not os.path.isfile(path):
        raise _checkpoint_error(path, "no such file")
    if not is_complete_checkpoint(path):
        raise _checkpoint_error(path, f"the file is truncated or corrupt ({os.path.getsize(path)} bytes, no zip "
                                      "directory at its end)")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with :func:`atomic_save` for local paths, and loading that names an unreadable file.

    ``pl.Trainer(plugins=[AtomicCheckpointIO()])``; every checkpoint the Trainer writes (ModelCheckpoint's, including
    "last", and ``trainer.save_checkpoint``) goes through it. Remote paths (``s3://`` ...) use Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: Dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_save(checkpoint, str(path))

    def load_checkpoint(self, path: Any, map_location: Optional[Callable] = lambda storage, loc: storage,
                        weights_only: Optional[bool] = None) -> Dict[str, Any]:
        if "://" not in str(path):
            check_checkpoint_file(str(path))
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except (RuntimeError, EOFError, OSError, ValueError) as error:
            raise _checkpoint_error(str(path), f"loading failed ({error})") from error


def complete_checkpoints(directory: str | os.PathLike[str]) -> List[str]:
    """The complete ``*.ckpt`` files of ``directory``, newest first (by modification time)."""
    paths = [p for p in glob.glob(os.path.join(directory, f"*{CHECKPOINT_SUFFIX}")) if is_complete_checkpoint(p)]
    return sorted(paths, key=os.path.getmtime, reverse=True)


def find_resume_checkpoint(directory: str) -> Optional[str]:
    """The newest complete checkpoint of ``directory`` (None if there is none); incomplete ones are skipped with a
    warning naming them (temporary files of interrupted saves are not checkpoints)."""
    broken = [p for p in sorted(glob.glob(os.path.join(directory, f"*{CHECKPOINT_SUFFIX}")))
              if not is_complete_checkpoint(p)]
    if broken:
        warnings.warn(f"skipping truncated or corrupt checkpoints: {', '.join(broken)}", stacklevel=2)
    complete = complete_checkpoints(directory)
    return complete[0] if complete else None


def checkpoint_callbacks(directory: str, every_n_epochs: int, last_every_n_steps: int = 0) -> List[ModelCheckpoint]:
    """ModelCheckpoints writing ``<directory>/last.ckpt`` after every epoch (or, with ``last_every_n_steps``, every that
    many optimizer steps) and keeping ``epoch=E-step=S.ckpt`` every ``every_n_epochs`` epochs (0: never)."""
    # Two ModelCheckpoints with the same triggers would share a state key, which Lightning rejects: one does both.
    one_does_both = every_n_epochs == 1 and not last_every_n_steps
    last = ModelCheckpoint(dirpath=directory, filename="{epoch}-{step}", save_top_k=-1 if one_does_both else 0,
                           save_last=True, enable_version_counter=False, every_n_train_steps=last_every_n_steps or None)
    if one_does_both or every_n_epochs <= 0:
        return [last]
    kept = ModelCheckpoint(dirpath=directory, filename="{epoch}-{step}", save_top_k=-1, every_n_epochs=every_n_epochs,
                           enable_version_counter=False)
    return [last, kept]


def last_good_checkpoint(trainer: pl.Trainer) -> str | os.PathLike[str]:
    """The newest complete checkpoint of the run's checkpoint folders, or the one it resumed from, for error messages
    (the file being written when a save is refused does not exist yet)."""
    folders = {callback.dirpath for callback in trainer.checkpoint_callbacks
               if isinstance(callback, ModelCheckpoint) and callback.dirpath}
    paths: List[str | os.PathLike[str]] = [path for folder in folders for path in complete_checkpoints(folder)[:1]]
    paths = [p for p in paths + [trainer.ckpt_path or ""] if p and os.path.isfile(p)]
    if not paths:
        return "none (this run has not written a checkpoint yet)"
    return max(paths, key=os.path.getmtime)


def check_finite_state(state: Mapping[str, Any], trainer: pl.Trainer) -> None:
    """Raise :class:`NonFiniteError` if a floating-point tensor of ``state`` (a state_dict) holds NaN or infinity.
    One host synchronization; meant for checkpoint saves."""
    floats = [(name, t) for name, t in state.items() if isinstance(t, Tensor) and t.is_floating_point()]
    if not floats or bool(torch.stack([torch.isfinite(t).all() for _, t in floats]).all()):
        return
    bad = [name for name, t in floats if not bool(torch.isfinite(t).all())]
    listed = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    raise NonFiniteError(f"refusing to write a checkpoint at global step {trainer.global_step}: non-finite values in "
                         f"{listed}. The last good checkpoint is {last_good_checkpoint(trainer)}")


# ---------------------------------------------------------------------------------------------------------------------
# Random number generators
# ---------------------------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------------------------
# Health of the training run
# ---------------------------------------------------------------------------------------------------------------------

def embedding_std(z: Tensor) -> Tensor:
    """Mean over dimensions of the standard deviation over the batch of the L2-normalized rows of ``z`` [B, d]: about
    1/sqrt(d) for embeddings spread over the sphere, 0 when they collapse to one point (methods.md, BYOL/SimSiam
    collapse signs). Population std, so a batch of 1 gives 0. A 0-d tensor, not read back to the host."""
    return F.normalize(z.detach().float(), dim=1).std(dim=0, correction=0).mean()


class _LaggedStepValues(pl.Callback, abc.ABC):
    """Reads values of training step k back to the host at the end of step k + 1 (module docstring), or earlier when
    a checkpoint is saved and at the end of training. Subclasses pick the values (``capture``, device tensors) and
    judge them (``check``, on host floats)."""

    def __init__(self) -> None:
        self._step = 0
        self._pending: Optional[Tuple[int, List[str], Tensor]] = None

    @abc.abstractmethod
    def capture(self, outputs: Any) -> Dict[str, Tensor]:
        """The values to check of a step's outputs (0-d device tensors), or {} for none."""

    @abc.abstractmethod
    def check(self, trainer: pl.Trainer, step: int, values: Dict[str, float]) -> None:
        """Judge the values captured at global step ``step``, now on the host."""

    def _flush(self, trainer: pl.Trainer) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            step, names, values = pending
            self.check(trainer, step, dict(zip(names, values.tolist())))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._flush(trainer)
        captured = self.capture(outputs)
        if captured:
            values = torch.stack([v.detach().float().reshape(()) for v in captured.values()])
            self._pending = (self._step, list(captured), values)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: Dict[str, Any]) -> None:
        self._flush(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer)


def _step_metrics(outputs: Any) -> Dict[str, Tensor]:
    """The metrics a training step returned: ``outputs["metrics"]``, else its loss."""
    if isinstance(outputs, Mapping):
        if "metrics" in outputs:
            return dict(outputs["metrics"])
        return {"loss": outputs["loss"]} if "loss" in outputs else {}
    return {"loss": outputs} if isinstance(outputs, Tensor) else {}


class NonFiniteLossGuard(_LaggedStepValues):
    """Stops training with :class:`NonFiniteError` when a loss term of a step is NaN or infinite, naming the global
    step, every logged value of that step and the last good checkpoint; checked at the latest before every checkpoint
    save, so no checkpoint is written after the step that went wrong."""

    def capture(self, outputs: Any) -> Dict[str, Tensor]:
        return _step_metrics(outputs)

    def check(self, trainer: pl.Trainer, step: int, values: Dict[str, float]) -> None:
        if all(math.isfinite(v) for v in values.values()):
            return
        terms = ", ".join(f"{name}={value:.6g}" for name, value in values.items())
        raise NonFiniteError(f"non-finite loss at global step {step} (epoch {trainer.current_epoch}): {terms}. "
                             f"Training stopped; the last good checkpoint is {last_good_checkpoint(trainer)}")


class CollapseMonitor(_LaggedStepValues):
    """Warns once (:class:`CollapseWarning`) when the logged ``step_embedding_std`` of the projections (width ``dim``)
    stays below ``fraction`` / sqrt(dim) for ``patience`` consecutive steps."""

    def __init__(self, dim: int, fraction: float, patience: int) -> None:
        super().__init__()
        self.threshold = fraction / math.sqrt(dim)
        self.dim, self.fraction, self.patience = dim, fraction, patience
        self.steps_below = 0
        self.warned = False

    def capture(self, outputs: Any) -> Dict[str, Tensor]:
        metric = _step_metrics(outputs).get(EMBEDDING_STD_METRIC)
        return {} if metric is None or self.warned else {EMBEDDING_STD_METRIC: metric}

    def check(self, trainer: pl.Trainer, step: int, values: Dict[str, float]) -> None:
        std = values[EMBEDDING_STD_METRIC]
        self.steps_below = self.steps_below + 1 if std < self.threshold else 0
        if self.steps_below >= self.patience and not self.warned:
            self.warned = True
            warnings.warn(CollapseWarning(
                f"the projections look collapsed: {EMBEDDING_STD_METRIC} has stayed below {self.threshold:.3g} "
                f"({self.fraction} / sqrt({self.dim}); about {1 / math.sqrt(self.dim):.3g} when healthy) for "
                f"{self.steps_below} steps, now {std:.3g} at global step {step}"), stacklevel=2)


def health_callbacks(dim: int, collapse_fraction: float, collapse_patience: int) -> Sequence[pl.Callback]:
    """What every SelfSupervisedMethod run gets (``configure_callbacks``): the resume state, the non-finite
    loss guard and the collapse monitor for projections of width ``dim``."""
    return [ResumeState(), NonFiniteLossGuard(), CollapseMonitor(dim, collapse_fraction, collapse_patience)]
