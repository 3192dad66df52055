"""The health of a training run: a non-finite loss guard, a refusal to checkpoint non-finite weights, and a collapse
monitor.

Reading values back from the device costs a host synchronization. The guard and the monitor therefore read the values
of step k at the end of step k + 1, by when the device has computed them (while the host has already queued step
k + 1): on a GPU the read then need not make the host wait, on a CPU it costs nothing. The price is that a non-finite
loss is reported one step late, except that every checkpoint save first checks the pending step, and refuses to write
non-finite weights.
"""

from __future__ import annotations

import abc
import math
import warnings
from typing import Any, Dict, List, Mapping, Optional, Tuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.train.checkpoints import last_good_checkpoint

EMBEDDING_STD_METRIC = "step_embedding_std"


class NonFiniteError(RuntimeError):
    """The loss (or the weights about to be saved) became NaN or infinite; the message names the step and the last
    good checkpoint."""


class CollapseWarning(UserWarning):
    """The projections have (nearly) stopped varying across the batch."""


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
