"""The online linear probe (solo-learn's and lightly's online classifier): a linear classifier trained during
pretraining, in every step, on the encoder's detached embeddings, by an optimizer of its own, so that a run reports a
linear accuracy as it goes and the encoder trains exactly as without it (``online_linear_probe``)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.amp import GradScaler

from selfsup import distributed
from selfsup.data.files import UNLABELED
from selfsup.distributed import SyncBatchNorm
from selfsup.methods.losses import fp32
from selfsup.methods.options import SharedParams, fail
from selfsup.methods.steps import TrainingStep

OPTIMIZER_KEY = "online_linear_probe_optimizer"  # the checkpoint entry of the probe's optimizer state
MOMENTUM = 0.9

Metrics = Dict[str, Tensor]


class OnlineLinearProbe(nn.Module):
    """A linear classifier [embedding_dim -> num_classes] on detached encoder embeddings standardized by a BatchNorm
    without affine parameters (as MAE's and MoCo v3's linear probes: the embeddings' scale, which differs between
    encoders and changes as they train, then sets no step size), trained by its own SGD (momentum 0.9, no weight
    decay, constant ``lr``); images labelled -1 (unlabeled) are left out.

    The LightningModule adds its loss to the method's, so one backward serves both (under DDP its parameters are
    ordinary DDP parameters, averaged like the others, and its BatchNorm takes the global batch's statistics), and
    calls :meth:`step` after the backward of every real step: the main optimizer, its gradient clipping and
    learning-rate schedule never see it. Zero-initialized, so building it draws nothing from the random number
    generator the run's other layers draw from.
    """

    def __init__(self, embedding_dim: int, num_classes: int, lr: float) -> None:
        super().__init__()
        self.normalize = SyncBatchNorm(embedding_dim, affine=False)
        self.linear = nn.utils.skip_init(nn.Linear, embedding_dim, num_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.optimizer = torch.optim.SGD(self.parameters(), lr=lr, momentum=MOMENTUM)

    def logits(self, embeddings: Tensor) -> Tensor:
        """Class logits [B, num_classes] of embeddings [B, embedding_dim]; no gradient reaches the embeddings."""
        return self.linear(self.normalize(embeddings.detach().to(self.linear.weight.dtype)))

    def forward(self, features: Optional[Tensor], labels: Tensor) -> Tuple[Tensor, Metrics]:
        """(the loss whose gradient, averaged over processes, is that of the mean cross-entropy over the rows of the
        global batch labelled other than -1 (0 without any; in one process: the mean over the rows of ``features``
        [B, embedding_dim]); the metrics of the step: this process's mean cross-entropy and top-1 accuracy in percent
        on its labelled rows, detached)."""
        if features is None:
            raise ValueError("online_linear_probe: the method's step declares whole_view_features but returned no "
                             "StepOutput.features")
        logits = self.logits(features)
        labelled = (labels != UNLABELED).sum()
        summed = F.cross_entropy(fp32(logits), labels, ignore_index=UNLABELED, reduction="sum")
        # DDP averages the processes' gradients: dividing by the mean labelled count over processes (not this
        # process's) makes that average the gradient of the global batch's mean loss, however the labelled images
        # (STL-10's are mixed with unlabeled ones) fall on the processes
        mean_count = distributed.all_reduce_sum(labelled.float()) / distributed.world_size()
        loss = summed / mean_count.clamp(min=1)
        count = labelled.clamp(min=1)
        accuracy = 100.0 * (logits.argmax(dim=1) == labels).sum() / count  # a label -1 matches no class
        metrics = {"step_online_linear_loss": summed.detach() / count, "step_online_linear_acc": accuracy.detach()}
        return loss, metrics

    def step(self, scaler: Optional[GradScaler]) -> None:
        """One SGD step on the gradient accumulated since the last one, which it then drops. Under 16-bit mixed
        precision the loss was scaled: ``scaler`` (the main step's, before it updates its scale) unscales the gradient
        and skips a non-finite one."""
        if scaler is None:
            self.optimizer.step()
        else:
            scaler.step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def accuracy(self, embeddings: Tensor, labels: Tensor) -> Optional[float]:
        """Top-1 accuracy in percent over the labelled rows of embeddings [N, embedding_dim] (in eval mode the
        BatchNorm standardizes with its running statistics); None without any."""
        labelled = labels != UNLABELED
        if not labelled.any():
            return None
        predictions = self.logits(embeddings[labelled]).argmax(dim=1)
        return 100.0 * (predictions == labels[labelled]).float().mean().item()

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint[OPTIMIZER_KEY] = self.optimizer.state_dict()

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        # a checkpoint of a run without the probe has none: the probe starts afresh
        if OPTIMIZER_KEY in checkpoint:
            self.optimizer.load_state_dict(checkpoint[OPTIMIZER_KEY])

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> OnlineLinearProbe:
        # The momentum buffers follow the weights to their device and dtype: Lightning loads a checkpoint before it
        # moves the module, and only the main optimizer's state is moved by Lightning.
        super()._apply(fn, recurse)
        for state in self.optimizer.state.values():
            state.update({name: fn(value) for name, value in state.items() if isinstance(value, Tensor)})
        return self

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # a checkpoint of a run without the probe has no weights for it: it keeps its own
        for name, value in self.state_dict().items():
            state_dict.setdefault(prefix + name, value)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class NoProbe(nn.Module):
    """The online probe of a run without one (``online_linear_probe=False``): no loss, no metrics, no state, so the
    state dict and checkpoints are those of a run from before the probe existed."""

    def forward(self, features: Optional[Tensor], labels: Tensor) -> Tuple[Tensor, Metrics]:
        return torch.zeros((), device=labels.device), {}

    def step(self, scaler: Optional[GradScaler]) -> None:
        pass

    def accuracy(self, embeddings: Tensor, labels: Tensor) -> Optional[float]:
        return None

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        pass

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        pass

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # a checkpoint of a run with the probe loads without it
        for key in [k for k in state_dict if k.startswith(prefix)]:
            del state_dict[key]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


OnlineProbe = Union[OnlineLinearProbe, NoProbe]


def online_probe(p: SharedParams, step: TrainingStep[Any], num_classes: Optional[int]) -> OnlineProbe:
    """The online probe of ``p`` on the features of ``step``, for a dataset of ``num_classes`` classes (None:
    unlabeled); an impossible one raises ``ValueError`` naming the field."""
    if not p.online_linear_probe:
        return NoProbe()
    if not step.whole_view_features:
        fail("online_linear_probe", f"loss_type={p.loss_type!r} trains {type(step).__name__}, whose output has no "
                                    "encoder embeddings of whole views to probe (a masked-image method encodes only "
                                    "some patches of a view; a step that has them sets whole_view_features); probe "
                                    "its checkpoints with selfsup-linear")
    if num_classes is None:
        fail("online_linear_probe", f"dataset_name={p.dataset_name!r} has no classes (an image folder without class "
                                    "subfolders, or shards written from one), and the probe learns from labels; set "
                                    "online_linear_probe=False or give the images one subfolder per class")
    return OnlineLinearProbe(p.embedding_dim, num_classes, p.online_linear_lr)
