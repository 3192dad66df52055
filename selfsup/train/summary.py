"""What a run learned, in one block at its end: the validation probes of the trained encoder against those of the
same encoder before training, both measured in the run (``trainer.validate`` before ``fit``), and where the pictures
are."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn

from selfsup.eval.visualize import PROBE_METRICS, probe_metrics, validating_untrained

PROBE_NAMES = {"valid_knn_acc": "kNN (k=200)", "valid_class_acc": "linear probe"}


class ProbeRecord(pl.Callback):
    """The probe metrics of the validation before training (``before``) and of the latest one during or after it
    (``after``, with the number of epochs trained when it ran)."""

    def __init__(self) -> None:
        self.before: Dict[str, float] = {}
        self.after: Dict[str, float] = {}
        self.after_epochs = 0
        self.classes: Optional[int] = None
        self.images = 0
        self.probed = 0

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        probed = probe_metrics(trainer)
        loaders = trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        dataset = getattr(loader, "dataset", None)
        names = getattr(dataset, "classes", None)
        self.classes = len(names) if names else self.classes
        self.images = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else 0
        # limit_val_batches probes the first batches only, which for a class-sorted folder may be a single class
        batches = trainer.num_val_batches[0] if trainer.num_val_batches else 0
        batch_size = getattr(loader, "batch_size", None) or 0
        self.probed = min(self.images, int(batches) * batch_size) if batch_size else self.images
        if validating_untrained(trainer):
            self.before = probed
            return
        self.after = probed
        # during fit the epoch being validated is not counted yet; after fit it is
        self.after_epochs = trainer.current_epoch + (trainer.state.fn == TrainerFn.FITTING)

    def final_is_stale(self, trainer: pl.Trainer) -> bool:
        """Whether the last epoch trained was not validated (a validation interval that skips it)."""
        return bool(self.before) and self.after_epochs != trainer.current_epoch


def summary_block(record: ProbeRecord, pictures: Sequence[str], checkpoint: str) -> str:
    """The end-of-run block: each probe before and after training, the pictures and the checkpoint."""
    lines: List[str] = []
    if record.after:
        chance = f"; chance {100 / record.classes:.1f}%" if record.classes else ""
        classes = f", {record.classes} classes" if record.classes else ""
        images = (f"{record.images} images" if not 0 < record.probed < record.images else
                  f"the first {record.probed} of {record.images} images (trainer.limit_val_batches)")
        lines.append(f"what was learned (validation set: {images}{classes}{chance}):")
        lines.append(f"  {'':14}{'random encoder':>16}{f'after {record.after_epochs} epochs':>18}")
        for name in PROBE_METRICS:
            if name in record.after:
                before = f"{record.before[name]:.1f}%" if name in record.before else "-"
                lines.append(f"  {PROBE_NAMES[name]:14}{before:>16}{record.after[name]:>17.1f}%")
    else:
        lines.append("what was learned: not measured (no labelled validation data, or validation is off)")
    if pictures:
        lines.append("  pictures: " + ", ".join(pictures))
    lines.append(f"  checkpoint: {checkpoint}")
    return "\n".join(lines)
