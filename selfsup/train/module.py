"""SelfSupervisedMethod: one LightningModule for every registered method, driven by ModelParams.

The module owns the encoder (``model``), the data and the loop; the method owns everything else it is, as one
module built once from the params (``step``: a ``methods.steps.TrainingStep``; for joint-embedding methods the heads,
the target network, what it remembers and its criterion). ``training_step`` runs it:

    loss = step(encoder, views)                     # the method's pseudocode, e.g. methods.steps.JointEmbeddingStep
    after the backward pass: step.after_backward    # the state the method keeps across steps
    after the optimizer step: step.after_optimizer_step   # the EMA target

With ``online_linear_probe`` a linear classifier (eval.online) learns alongside from the step's detached features,
by its own optimizer: its loss joins the method's in the one backward pass but reaches no weight of the method.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import attr
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn
from torch.utils.data import Dataset

from selfsup import data, distributed
from selfsup.config.build import make_params, warn_fields_added_since
from selfsup.config.params import ModelParams
from selfsup.eval import probes
from selfsup.eval.online import OnlineProbe, online_probe
from selfsup.methods.steps import Progress, StepOutput, TrainingStep
from selfsup.nn.backbones import make_encoder, use_channels_last, with_representation
from selfsup.nn.vit import check_view_sizes
from selfsup.optim.optimizers import gradient_clipping, optimizer_and_schedule
from selfsup.train.health import (
    EMBEDDING_STD_METRIC,
    CollapseMonitor,
    NonFiniteLossGuard,
    check_finite_state,
    embedding_std,
)
from selfsup.train.pipeline import PretrainingDataModule, ViewTransforms
from selfsup.train.progress import Throughput
from selfsup.train.resume import ResumeState

Batch = Tuple[Sequence[Tensor], Tensor]
# the checkpoint prefixes of the encoder, of the method's step and of the online linear probe
ENCODER, STEP, PROBE = "model.", "step.", "online_probe."


class SelfSupervisedMethod(pl.LightningModule):
    """Self-supervised pretraining of ``self.model`` (the encoder) as configured by :class:`ModelParams`.

    Construct with ``SelfSupervisedMethod(params)``, ``SelfSupervisedMethod(params, lr=0.1)`` (overrides are applied
    with validation, never dropped), ``SelfSupervisedMethod({"lr": 0.1})`` or ``SelfSupervisedMethod(lr=0.1)``.
    Keyword-only extras that are not hyperparameters: ``backbone`` (an nn.Module used instead of encoder_arch),
    ``view_transforms`` (callables PIL -> Tensor, one for all views or one per view) and ``train_dataset`` /
    ``val_dataset`` (instead of dataset_name; train items are (views, label), validation items (image, label)).

    Public attributes: ``model`` (encoder), ``step`` (the method's training step, built by its registered
    ``Method.step``) and ``online_probe`` (eval.online: the online linear probe, or a NoProbe). ``model(x)`` /
    ``self(x)`` returns encoder embeddings [B, embedding_dim].
    """

    def __init__(
        self,
        params: Union[ModelParams, Mapping[str, Any], None] = None,
        *,
        backbone: Optional[nn.Module] = None,
        view_transforms: ViewTransforms = None,
        train_dataset: Optional[Dataset] = None,
        val_dataset: Optional[Dataset] = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        params = make_params(params, **overrides)
        self.params = params
        self.save_hyperparameters(attr.asdict(params))
        self.datamodule = PretrainingDataModule(params, view_transforms, train_dataset, val_dataset)
        self.pipeline = self.datamodule.pipeline

        self.cifar_stem = data.cifar_stem(params.use_cifar_stem, self.pipeline.info)
        self.model = backbone if backbone is not None else make_encoder(params, self.cifar_stem, self.pipeline.crop)
        if params.sync_batch_norm == "all":  # before any hook is registered on the encoder's layers
            self.model = distributed.convert_sync_batchnorm(self.model)
        check_view_sizes(self.model, {("transform_crop_size" if i < params.num_global_crops else "local_crop_size"):
                                      view.size for i, view in enumerate(self.pipeline.views)})
        self.model = with_representation(self.model, params.encoder_layer, self.pipeline.crop, params.embedding_dim)
        if params.channels_last:
            use_channels_last(self.model)
        self.step: TrainingStep[Any] = params.method.step(params, self.model)
        self.online_probe: OnlineProbe = online_probe(params, self.step, self.pipeline.info.num_classes)

        self._step_output: Optional[StepOutput] = None  # this step's output, for the hooks after the backward pass
        self._total_steps = 1  # optimizer steps of the whole run, known once the Trainer is attached
        self._validation_outputs: List[Tuple[Tensor, Tensor]] = []

    # --- model -----------------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Encoder embeddings [B, embedding_dim] of images [B, 3, H, W]."""
        return self.model(x)

    def project(self, x: Tensor) -> Tensor:
        """Projection-head outputs of images [B, 3, H, W] (BatchNorm layers follow the module's mode)."""
        return self.step.project(self.model(x))

    @property
    def batch_views(self) -> Optional[data.BatchedViews]:
        """What makes the views of a training batch on the device (None when the loader delivers finished views)."""
        return self.datamodule.batch_views

    @property
    def decode_on_device(self) -> bool:
        """Whether training batches arrive as encoded files, decoded on the device (known once fit sets up)."""
        return self.datamodule.decode_on_device

    # --- training ----------------------------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> Dict[str, Any]:
        views, labels = batch
        out = self.step(self.model, views, labels, Progress(self.trainer.global_step, self._total_steps))
        probe_loss, probe_metrics = self.online_probe(out.features, labels)  # on detached features
        self._step_output = out
        batch_size = views[0].shape[0]
        metrics = {"step_train_loss": out.loss.detach(), **out.metrics}
        if out.embedding is not None:
            metrics[EMBEDDING_STD_METRIC] = embedding_std(out.embedding)
        self.log("step_train_loss", out.loss.detach(), prog_bar=True, batch_size=batch_size)
        self.log_dict({name: value for name, value in metrics.items() if name != "step_train_loss"},
                      batch_size=batch_size)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True, batch_size=batch_size)
        self.log_dict(out.schedule, batch_size=batch_size)
        # logged, but not among the step's outputs: the health checks watch the method, and a probe that diverged
        # stops nothing
        self.log_dict(probe_metrics, batch_size=batch_size)
        # the metrics go to the callbacks (non-finite loss guard, collapse monitor) as the step's outputs
        return {"loss": out.loss + probe_loss, "metrics": metrics}

    def on_after_backward(self) -> None:
        # The step's state updates run as soon as the loss no longer reads it, and thus before any callback's
        # on_train_batch_end: a checkpoint saved there holds the finished step's state.
        out, self._step_output = self._step_output, None
        if out is not None:
            self.step.after_backward(out, self.current_epoch)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # The probe's step, after the backward pass of each real step (so that gradient accumulation adds up its
        # gradient too) and before the main step, whose GradScaler (16-bit mixed precision) then still holds the
        # scale of this backward pass.
        self.online_probe.step(getattr(self.trainer.precision_plugin, "scaler", None))

    def on_train_epoch_start(self) -> None:
        self.step.set_epoch(self.current_epoch)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """The optimizer step, then the method's updates that follow the weights (the EMA target). Lightning calls
        this hook for real steps only (not for gradient-accumulation micro-batches) and counts the step in
        global_step after it returns, hence + 1."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.step.after_optimizer_step(self.model, Progress(self.trainer.global_step + 1, self._total_steps))

    def on_train_start(self) -> None:
        self.step.set_epoch(self.current_epoch)  # a mid-epoch resume starts without on_train_epoch_start

    def configure_callbacks(self) -> Sequence[pl.Callback]:
        p = self.params
        width = self.step.embedding_width
        monitor = [] if width is None else [CollapseMonitor(width, p.collapse_std_fraction, p.collapse_patience_steps)]
        return [ResumeState(), NonFiniteLossGuard(), *monitor, Throughput()]

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        method_state = {key: value for key, value in checkpoint["state_dict"].items() if not key.startswith(PROBE)}
        check_finite_state(method_state, self.trainer)
        self.online_probe.on_save_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        warn_fields_added_since(self.params, checkpoint.get("hyper_parameters", {}), "the checkpoint")
        self.online_probe.on_load_checkpoint(checkpoint)

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Checkpoints written before the method's step was a module of its own hold its parts at the top level.
        own = (ENCODER, STEP, PROBE)
        for key in [k for k in state_dict if k.startswith(prefix) and not k[len(prefix):].startswith(own)]:
            state_dict[prefix + STEP + key[len(prefix):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def on_fit_start(self) -> None:
        params = self.params
        if self.trainer.max_epochs not in (None, -1, params.max_epochs):
            warnings.warn(
                f"Trainer max_epochs={self.trainer.max_epochs} differs from ModelParams.max_epochs="
                f"{params.max_epochs}; the learning-rate and momentum schedules follow the Trainer",
                stacklevel=2,
            )
        self.step.check_global_batch(params.batch_size, self.trainer.world_size)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        self._total_steps = int(self.trainer.estimated_stepping_batches)
        epochs = self.trainer.max_epochs if self.trainer.max_epochs not in (None, -1) else self.params.max_epochs
        return optimizer_and_schedule(self, self.params, self._total_steps, epochs, self.step.constant_lr_modules(),
                                      separate_modules=[self.online_probe])

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: Optional[float] = None,
                                    gradient_clip_algorithm: Optional[str] = None) -> None:
        """The Trainer's clipping if it sets one, else ``gradient_clip_norm`` of the params (global L2 norm)."""
        self.clip_gradients(optimizer, *gradient_clipping(self.params, gradient_clip_val, gradient_clip_algorithm))

    # --- validation: a logistic-regression probe, a weighted kNN and the online probe on frozen encoder embeddings ----
    def validation_step(self, batch: Tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self._validation_outputs.append((self.model(x).detach(), y))

    def on_validation_epoch_end(self) -> None:
        if not self._validation_outputs:
            return
        embeddings, labels = probes.concat_outputs(self._validation_outputs)
        self._validation_outputs.clear()
        # Every rank probes the embeddings of all ranks (the DistributedSampler pads the validation set to equal
        # per-rank sizes, so the gather lines up), hence logs the same values and needs no sync_dist.
        embeddings, labels = distributed.gather(embeddings), distributed.gather(labels)
        seed = self.params.data_seed
        accuracies = probes.logistic_regression_probe(embeddings, labels, seed)
        if accuracies is not None:
            self.log_dict({"train_class_acc": accuracies[0], "valid_class_acc": accuracies[1]}, sync_dist=False)
        knn = probes.half_split_knn_accuracy(embeddings, labels, seed)
        if knn is not None:
            self.log("valid_knn_acc", knn, sync_dist=False)
        online = self.online_probe.accuracy(embeddings, labels)
        if online is not None:
            self.log("online_linear_acc", online, sync_dist=False)

    # --- data: the PretrainingDataModule's hooks ------------------------------------------------------------------
    def prepare_data(self) -> None:
        self.datamodule.prepare_data()

    def setup(self, stage: str) -> None:
        self.datamodule.trainer = self.trainer  # setup reads the device
        self.datamodule.setup(stage)

    def train_dataloader(self) -> Any:
        return self.datamodule.train_dataloader()

    def val_dataloader(self) -> Any:
        return self.datamodule.val_dataloader()

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return self.datamodule.transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        self.datamodule.trainer = self.trainer  # the hooks read its step, rank and stage
        return self.datamodule.on_after_batch_transfer(batch, dataloader_idx)
