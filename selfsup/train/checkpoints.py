"""Checkpoint files that survive: written atomically (a temporary file in the same folder, fsync, rename), so a kill
during a save leaves the previous file in place; a truncated or unreadable file is reported by name; the newest
complete one is found for ``--resume auto``; and the ModelCheckpoint callbacks of a run's checkpoint folder."""

from __future__ import annotations

import glob
import os
import tempfile
import warnings
import zipfile
from typing import Any, Callable, Dict, List, Optional

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

CHECKPOINT_SUFFIX = ".ckpt"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or unreadable; the message names it."""


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
