"""SelfSupervisedMethod: one LightningModule for MoCo, SimCLR, BYOL, VICReg, EqCo and relatives, driven by ModelParams.

Every flag is resolved once in ``__init__`` into components (encoder, projection and prediction MLPs that are
Identity with 0 layers, a target network that is an EMA copy or the online network, an optional key queue, a
criterion); ``training_step`` is the method's pseudocode:

    z = projection(encoder(views))                 # online projections of the views the online network sees
    q = normalize(prediction(z))                   # queries
    k = normalize(target(views, z))                # keys: EMA network, or the online projections themselves
    loss = criterion(q, k, queue)                  # summed/averaged over (query view, key view) pairs
    after the optimizer step: queue <- k, target <- EMA(online, m)
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import attr
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn
from torch.utils.data import Dataset

from selfsup import data, dist
from selfsup.config.fields import ModelParams
from selfsup.config.presets import make_params
from selfsup.eval import probes
from selfsup.methods import build_criterion
from selfsup.methods.base import identity
from selfsup.nn.backbones import get_encoder, use_channels_last, with_representation
from selfsup.nn.heads import MLP, PrototypeLayer
from selfsup.nn.queue import Queue
from selfsup.nn.target import MomentumSchedule, MomentumTarget, OnlineTarget, encode_views
from selfsup.train import longrun
from selfsup.train.optimization import optimizer_and_schedule
from selfsup.train.pipeline import PretrainingDataModule, ViewTransforms
from selfsup.train.progress import Throughput

Batch = Tuple[Sequence[Tensor], Tensor]


def unit_sphere(x: Tensor) -> Tensor:
    return F.normalize(x, dim=1)


def _place(ids: Sequence[int], tensors: Sequence[Tensor], num_views: int) -> List[Optional[Tensor]]:
    """A per-view list holding ``tensors`` at positions ``ids`` and None elsewhere."""
    out: List[Optional[Tensor]] = [None] * num_views
    for i, t in zip(ids, tensors):
        out[i] = t
    return out


class SelfSupervisedMethod(pl.LightningModule):
    """Self-supervised pretraining of ``self.model`` (the encoder) as configured by :class:`ModelParams`.

    Construct with ``SelfSupervisedMethod(params)``, ``SelfSupervisedMethod(params, lr=0.1)`` (overrides are applied
    with validation, never dropped), ``SelfSupervisedMethod({"lr": 0.1})`` or ``SelfSupervisedMethod(lr=0.1)``.
    Keyword-only extras that are not hyperparameters: ``backbone`` (an nn.Module used instead of encoder_arch),
    ``view_transforms`` (callables PIL -> Tensor, one for all views or one per view) and ``train_dataset`` /
    ``val_dataset`` (instead of dataset_name; train items are (views, label), validation items (image, label)).

    Public attributes: ``model`` (encoder), ``projection_model``, ``prediction_model``, ``target``, ``queue`` (or
    None), ``criterion``. ``model(x)`` / ``self(x)`` returns encoder embeddings [B, embedding_dim].
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
        self.model = backbone if backbone is not None else get_encoder(params.encoder_arch, self.cifar_stem)
        if params.sync_batch_norm == "all":  # before any hook is registered on the encoder's layers
            self.model = dist.convert_sync_batchnorm(self.model)
        self.model = with_representation(self.model, params.encoder_layer, self.pipeline.crop, params.embedding_dim)
        if params.channels_last:
            use_channels_last(self.model)
        # DINO's prototype layer ends the projection head, so the teacher's EMA covers it; SwAV's prototypes belong
        # to its criterion (no EMA copy, and the feature queue is scored with the current prototypes).
        head_prototypes = params.method.head_prototypes(params)
        self.projection_model: nn.Module = MLP(  # a SyncBatchNorm conversion may replace it
            params.embedding_dim,
            params.dim,
            params.mlp_hidden_dim,
            params.projection_mlp_layers,
            params.mlp_normalization,
            params.use_mlp_weight_standardization,
            params.mlp_activation,
            params.projection_output_batch_norm,
            num_prototypes=head_prototypes,
        )
        head_dim = head_prototypes or params.dim
        self.prediction_model: nn.Module = MLP(
            head_dim,
            head_dim,
            params.resolved_prediction_mlp_hidden_dim,
            params.prediction_mlp_layers,
            params.resolved_prediction_mlp_normalization,
            params.use_mlp_weight_standardization,
            params.mlp_activation,
        )
        if params.sync_batch_norm is not None:  # before the EMA copy is made, so the target synchronizes too
            self.projection_model = dist.convert_sync_batchnorm(self.projection_model)
            self.prediction_model = dist.convert_sync_batchnorm(self.prediction_model)
        self.criterion = build_criterion(params)
        # Prototypes get no update during the first epochs (DINO's frozen last layer, SwAV's frozen prototypes).
        self.prototype_layers = [m for m in self.modules() if isinstance(m, PrototypeLayer)]
        self.query_views = self.criterion.query_views
        if params.use_lagging_model:
            self.target: Union[MomentumTarget, OnlineTarget] = MomentumTarget(
                self.model, self.projection_model, self.criterion.key_views, params.shuffle_batch_norm
            )
            self.online_views = self.query_views
        else:
            self.target = OnlineTarget(self.criterion.key_views, params.use_target_stop_gradient)
            self.online_views = sorted(set(self.query_views) | set(self.criterion.key_views))
        self.queue = Queue(params.dim, params.K) if params.uses_queue else None
        self.enqueued_view = self.criterion.pairs[0][1]  # the key view of the first pair feeds the queue (as MoCo)
        self.gather_keys: Callable[[Tensor], Tensor] = (
            dist.gather if params.gather_keys_for_queue else identity
        )
        self.normalize: Callable[[Tensor], Tensor] = unit_sphere if params.use_unit_sphere_projection else identity
        self.momentum_schedule = MomentumSchedule(
            params.m, 1.0 if params.use_momentum_schedule else params.m
        )

        self._step_keys: List[Optional[Tensor]] = []  # this step's keys, consumed after the backward pass
        self.projection_dim = head_dim  # width of the online projections (the collapse monitor's d)
        self._total_steps = 1  # optimizer steps of the whole run, known once the Trainer is attached
        self._validation_outputs: List[Tuple[Tensor, Tensor]] = []

    # --- model -----------------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Encoder embeddings [B, embedding_dim] of images [B, 3, H, W]."""
        return self.model(x)

    def project(self, x: Tensor) -> Tensor:
        """Projection-head outputs [B, dim] of images [B, 3, H, W] (BatchNorm layers follow the module's mode)."""
        return self.projection_model(self.model(x))

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
        projections = self._online_projections(views)
        queries = self._queries(projections)
        keys = [None if k is None else self.normalize(k) for k in self.target(views, projections)]
        out = self.criterion(queries, keys, None if self.queue is None else self.queue.memory(), labels)
        self._step_keys = keys
        batch_size = views[0].shape[0]
        spread = longrun.embedding_std(projections[self.query_views[0]])  # type: ignore[arg-type]
        self.log("step_train_loss", out.loss.detach(), prog_bar=True, batch_size=batch_size)
        self.log_dict(out.metrics, batch_size=batch_size)
        self.log(longrun.EMBEDDING_STD_METRIC, spread, batch_size=batch_size)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True, batch_size=batch_size)
        self.log_dict({"m": self.current_momentum(), "T": self.params.T}, batch_size=batch_size)
        # the metrics go to the callbacks (non-finite loss guard, collapse monitor) as the step's outputs
        metrics = {"step_train_loss": out.loss.detach(), **out.metrics, longrun.EMBEDDING_STD_METRIC: spread}
        return {"loss": out.loss, "metrics": metrics}

    def _online_projections(self, views: Sequence[Tensor]) -> List[Optional[Tensor]]:
        embeddings = encode_views(self.model, [views[i] for i in self.online_views])
        projections = self.projection_model(torch.cat(embeddings)).chunk(len(self.online_views))
        return _place(self.online_views, projections, len(views))

    def _queries(self, projections: Sequence[Optional[Tensor]]) -> List[Optional[Tensor]]:
        z = torch.cat([projections[i] for i in self.query_views])  # type: ignore[misc]
        predictions = self.normalize(self.prediction_model(z)).chunk(len(self.query_views))
        return _place(self.query_views, predictions, len(projections))

    def on_after_backward(self) -> None:
        # The step's keys update the queue and the criterion's state as soon as the loss no longer reads them, and
        # thus before any callback's on_train_batch_end: a checkpoint saved there holds the finished step's state.
        keys, self._step_keys = self._step_keys, []
        if self.queue is not None:
            enqueued = keys[self.enqueued_view]
            assert enqueued is not None  # the key view of the criterion's first pair, which every step computes
            self.queue.enqueue(self.gather_keys(enqueued.detach()))
        self.criterion.after_step(keys)
        if self.current_epoch < self.params.freeze_prototypes_epochs:
            for layer in self.prototype_layers:
                layer.weight.grad = None  # the optimizer skips it: no momentum, no weight decay

    def on_train_epoch_start(self) -> None:
        self.criterion.set_epoch(self.current_epoch)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """The optimizer step, then the EMA step of the target. Lightning calls this hook for real steps only (not
        for gradient-accumulation micro-batches) and counts the step in global_step after it returns, hence + 1."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        momentum = self.momentum_schedule(self.trainer.global_step + 1, self._total_steps)
        self.target.update([self.model, self.projection_model], momentum)

    def current_momentum(self) -> float:
        return self.momentum_schedule(self.trainer.global_step, self._total_steps)

    def on_train_start(self) -> None:
        self.criterion.set_epoch(self.current_epoch)  # a mid-epoch resume starts without on_train_epoch_start

    def configure_callbacks(self) -> Sequence[pl.Callback]:
        p = self.params
        health = longrun.health_callbacks(self.projection_dim, p.collapse_std_fraction, p.collapse_patience_steps)
        return [*health, Throughput()]

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        longrun.check_finite_state(checkpoint["state_dict"], self.trainer)

    def on_fit_start(self) -> None:
        params = self.params
        if self.trainer.max_epochs not in (None, -1, params.max_epochs):
            warnings.warn(
                f"Trainer max_epochs={self.trainer.max_epochs} differs from ModelParams.max_epochs="
                f"{params.max_epochs}; the learning-rate and momentum schedules follow the Trainer",
                stacklevel=2,
            )
        global_batch = params.batch_size * self.trainer.world_size
        if params.uses_queue and params.gather_keys_for_queue and params.K % global_batch != 0:
            raise ValueError(
                f"ModelParams.K={params.K} must be a multiple of the global batch "
                f"{global_batch} (batch_size {params.batch_size} x {self.trainer.world_size} "
                "processes) with gather_keys_for_queue"
            )
        if params.uses_queue and not params.gather_keys_for_queue and self.trainer.world_size > 1:
            warnings.warn(
                f"gather_keys_for_queue=False with {self.trainer.world_size} processes: each process enqueues only "
                "its own keys and DDP broadcasts rank 0's buffers before every step, so every queue holds rank 0's "
                "keys only; set gather_keys_for_queue=True to enqueue the keys of the whole global batch",
                stacklevel=2,
            )
        params.method.check_global_batch(params, global_batch)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        self._total_steps = int(self.trainer.estimated_stepping_batches)
        epochs = self.trainer.max_epochs if self.trainer.max_epochs not in (None, -1) else self.params.max_epochs
        constant = [self.prediction_model] if self.params.use_constant_prediction_lr else []
        return optimizer_and_schedule(self, self.params, self._total_steps, epochs, constant)

    # --- validation: a logistic-regression probe and a weighted kNN on frozen encoder embeddings ----------------------
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
        embeddings, labels = dist.gather(embeddings), dist.gather(labels)
        seed = self.params.data_seed
        accuracies = probes.logistic_regression_probe(embeddings, labels, seed)
        if accuracies is not None:
            self.log_dict({"train_class_acc": accuracies[0], "valid_class_acc": accuracies[1]}, sync_dist=False)
        knn = probes.half_split_knn_accuracy(embeddings, labels, seed)
        if knn is not None:
            self.log("valid_knn_acc", knn, sync_dist=False)

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
