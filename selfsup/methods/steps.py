"""A method's training step as a module: :class:`TrainingStep` is what the LightningModule calls, and
:class:`JointEmbeddingStep` is the step of every joint-embedding method (two or more views, projection and prediction
heads, a target network, an optional memory, a criterion over view pairs).

The LightningModule owns the encoder and the loop; the step owns everything else a method is. A method with another
shape (one masked view, a pixel or latent predictor) defines its own TrainingStep and returns it from
``Method.step``, and the LightningModule runs it the same way.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Generic, List, NamedTuple, Optional, Protocol, Sequence, Tuple, TypeVar, Union

import attr
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import distributed
from selfsup.methods.criteria import LossOutput, PairStep, PairwiseCriterion
from selfsup.methods.options import SharedParams
from selfsup.nn.heads import MLP, PrototypeLayer, Prototypes
from selfsup.nn.memory import Memory
from selfsup.nn.target import MomentumSchedule, MomentumTarget, OnlineTarget, encode_views

StateDict = Dict[str, Any]


class Progress(NamedTuple):
    """Where the run is: optimizer steps taken (Lightning's global_step) out of the run's total."""

    global_step: int
    total_steps: int


@attr.s(auto_attribs=True, frozen=True)
class StepOutput:
    """What one training step computed, for the LightningModule to log and to hand back to the step's hooks."""

    loss: Tensor
    metrics: Dict[str, Tensor]  # detached 0-d tensors: logged, and checked to be finite by the loss guard
    schedule: Dict[str, float]  # the step's scheduled values (EMA momentum, temperature), logged
    embedding: Optional[Tensor]  # [B, d] embeddings whose spread over the batch the collapse monitor watches
    # [B, embedding_dim] encoder embeddings of a whole view, rows in the order of the labels, with their graph (the
    # online linear probe detaches them); None from a step without whole_view_features
    features: Optional[Tensor] = attr.ib(default=None, kw_only=True)


Output = TypeVar("Output", bound=StepOutput)


class TrainingStep(nn.Module, Generic[Output]):
    """One training step of a method over a batch of views, and what it updates around the optimizer step.

    The LightningModule calls :meth:`forward` in training_step, :meth:`after_backward` once the loss no longer reads
    the step's state (before any callback sees the step, so a checkpoint holds the finished step), and
    :meth:`after_optimizer_step` after each real optimizer step (not after gradient-accumulation micro-batches).
    """

    embedding_width: Optional[int] = None  # width d of StepOutput.embedding; None: no collapse monitor
    # whether StepOutput.features holds the encoder's embeddings of a whole view, which the online linear probe
    # needs; a step must say so (a masked-image step, MAE's or I-JEPA's, encodes only some patches of its view)
    whole_view_features: bool = False

    def forward(self, encoder: nn.Module, views: Sequence[Tensor], labels: Tensor, progress: Progress) -> Output:
        raise NotImplementedError

    def after_backward(self, output: Output, epoch: int) -> None:
        """State updates that use the finished step. Prototype layers still frozen in ``epoch`` lose their gradient,
        so the optimizer skips them."""
        for layer in self.modules():
            if isinstance(layer, PrototypeLayer):
                layer.skip_update_if_frozen(epoch)

    def after_optimizer_step(self, encoder: nn.Module, progress: Progress) -> None:
        """Updates that follow the weights (an EMA target), with ``progress.global_step`` counting this optimizer
        step."""

    def set_epoch(self, epoch: int) -> None:
        """Called before each training epoch, and when a run resumes mid-epoch."""

    def check_global_batch(self, batch_size: int, world_size: int) -> None:
        """Checks that need the number of processes, when fit starts."""

    def constant_lr_modules(self) -> Sequence[nn.Module]:
        """Modules whose parameters keep the peak learning rate."""
        return ()

    def project(self, embeddings: Tensor) -> Tensor:
        """The projection head's output for encoder embeddings [B, embedding_dim]."""
        raise NotImplementedError(f"{type(self).__name__} has no projection head")

    def pictures(self, encoder: nn.Module, images: Tensor) -> Dict[str, Tensor]:
        """Named image batches [B, 3, H, W] (in the images' normalization) that show what the method does to
        ``images``, drawn as rows of one picture (MAE: image, masked, reconstruction); none by default."""
        return {}


class JointEmbeddingMethod(Protocol):
    """What :class:`JointEmbeddingStep` asks of a method (``methods.method.Method`` answers all of it)."""

    def head_prototypes(self, p: SharedParams) -> Optional[Prototypes]: ...

    def build_criterion(self, p: SharedParams) -> PairwiseCriterion: ...

    def memory(self, p: SharedParams, pairs: Sequence[Tuple[int, int]]) -> Optional[Memory]: ...

    def upgrade_legacy_state(self, state: StateDict, prefix: str) -> None: ...


@attr.s(auto_attribs=True, frozen=True)
class JointStepOutput(StepOutput):
    pair_step: PairStep  # the queries, keys, memory and labels the criterion received
    criterion_output: LossOutput


def unit_sphere(x: Tensor) -> Tensor:
    return F.normalize(x, dim=1)


def _place(ids: Sequence[int], tensors: Sequence[Tensor], num_views: int) -> List[Optional[Tensor]]:
    """A per-view list holding ``tensors`` at positions ``ids`` and None elsewhere."""
    out: List[Optional[Tensor]] = [None] * num_views
    for i, t in zip(ids, tensors):
        out[i] = t
    return out


class JointEmbeddingStep(TrainingStep[JointStepOutput]):
    """The step of a joint-embedding method, built once from the params into components (projection and prediction
    MLPs that are Identity with 0 layers, a target that is an EMA copy or the online network, an optional memory, the
    method's criterion); :meth:`forward` is the method's pseudocode:

        z = projection(encoder(views))                 # online projections of the views the online network sees
        q = normalize(prediction(z))                   # queries
        k = normalize(target(views, z))                # keys: EMA network, or the online projections themselves
        loss = criterion(q, k, memory)                 # summed/averaged over (query view, key view) pairs
        after the backward pass: memory <- k, criterion statistics; after the optimizer step: target <- EMA(online, m)

    The encoder is the LightningModule's (its checkpoint prefix ``model.`` is the linear probe's); the step receives
    it in every call and copies it only for an EMA target.
    """

    whole_view_features = True

    def __init__(self, p: SharedParams, encoder: nn.Module, method: JointEmbeddingMethod) -> None:
        super().__init__()
        # DINO's prototype layer ends the projection head, so the teacher's EMA covers it; SwAV's prototypes belong
        # to its criterion (no EMA copy, and its memory is scored with the current prototypes).
        prototypes = method.head_prototypes(p)
        head_dim = p.dim if prototypes is None else prototypes.count
        self.projection: nn.Module = MLP(  # a SyncBatchNorm conversion may replace it
            p.embedding_dim, p.dim, p.mlp_hidden_dim, p.projection_mlp_layers, p.mlp_normalization,
            p.use_mlp_weight_standardization, p.mlp_activation, p.projection_output_batch_norm,
            num_prototypes=0 if prototypes is None else prototypes.count,
            frozen_prototype_epochs=0 if prototypes is None else prototypes.frozen_epochs,
        )
        self.prediction: nn.Module = MLP(
            head_dim, head_dim, p.resolved_prediction_mlp_hidden_dim, p.prediction_mlp_layers,
            p.resolved_prediction_mlp_normalization, p.use_mlp_weight_standardization, p.mlp_activation,
        )
        if p.sync_batch_norm is not None:  # before the EMA copy is made, so the target synchronizes too
            self.projection = distributed.convert_sync_batchnorm(self.projection)
            self.prediction = distributed.convert_sync_batchnorm(self.prediction)
        self.criterion = method.build_criterion(p)
        self.query_views = self.criterion.query_views
        if p.use_lagging_model:
            self.target: Union[MomentumTarget, OnlineTarget] = MomentumTarget(
                encoder, self.projection, self.criterion.key_views, p.shuffle_batch_norm)
            self.online_views = self.query_views
        else:
            self.target = OnlineTarget(self.criterion.key_views, p.use_target_stop_gradient)
            self.online_views = sorted(set(self.query_views) | set(self.criterion.key_views))
        self.memory = method.memory(p, self.criterion.pairs)
        self.normalize: Callable[[Tensor], Tensor] = (unit_sphere if p.use_unit_sphere_projection
                                                      else distributed.identity)
        self.momentum_schedule = MomentumSchedule(p.m, 1.0 if p.use_momentum_schedule else p.m)
        self.temperature = p.T
        self.constant_prediction_lr = p.use_constant_prediction_lr
        self.embedding_width = head_dim
        self.upgrade_legacy_state = method.upgrade_legacy_state

    def forward(self, encoder: nn.Module, views: Sequence[Tensor], labels: Tensor,
                progress: Progress) -> JointStepOutput:
        features, projections = self._online_projections(encoder, views)
        queries = self._queries(projections)
        keys = [None if k is None else self.normalize(k) for k in self.target(views, projections)]
        step = PairStep(queries, keys, None if self.memory is None else self.memory.read(), labels)
        out = self.criterion(*step)
        schedule = {"m": self.momentum_schedule(progress.global_step, progress.total_steps), "T": self.temperature}
        return JointStepOutput(out.loss, out.metrics, schedule, projections[self.query_views[0]], step, out,
                               features=features)

    def _online_projections(self, encoder: nn.Module,
                            views: Sequence[Tensor]) -> Tuple[Tensor, List[Optional[Tensor]]]:
        """(the encoder's embeddings of the first view the online network sees, the online projections of each
        view)."""
        embeddings = encode_views(encoder, [views[i] for i in self.online_views])
        projections = self.projection(torch.cat(embeddings)).chunk(len(self.online_views))
        return embeddings[0], _place(self.online_views, projections, len(views))

    def _queries(self, projections: Sequence[Optional[Tensor]]) -> List[Optional[Tensor]]:
        z = torch.cat([projections[i] for i in self.query_views])  # type: ignore[misc]
        predictions = self.normalize(self.prediction(z)).chunk(len(self.query_views))
        return _place(self.query_views, predictions, len(projections))

    def after_backward(self, output: JointStepOutput, epoch: int) -> None:
        # the criterion first: the step's memory is a view of the rows the write below replaces
        self.criterion.after_step(output.pair_step, output.criterion_output)
        if self.memory is not None:
            self.memory.write(output.pair_step.keys)
        super().after_backward(output, epoch)

    def after_optimizer_step(self, encoder: nn.Module, progress: Progress) -> None:
        momentum = self.momentum_schedule(progress.global_step, progress.total_steps)
        self.target.update([encoder, self.projection], momentum)

    def set_epoch(self, epoch: int) -> None:
        self.criterion.set_epoch(epoch)
        if self.memory is not None:
            self.memory.set_epoch(epoch)

    def check_global_batch(self, batch_size: int, world_size: int) -> None:
        if self.memory is not None:
            self.memory.check_global_batch(batch_size, world_size)

    def constant_lr_modules(self) -> Sequence[nn.Module]:
        return [self.prediction] if self.constant_prediction_lr else []

    def project(self, embeddings: Tensor) -> Tensor:
        return self.projection(embeddings)

    def _load_from_state_dict(self, state_dict: StateDict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # Checkpoints written before the step was a module name the heads projection_model / prediction_model and the
        # memory "queue", a [D, K] matrix of key columns; the method renames what else it kept.
        for old, new in (("projection_model.", "projection."), ("prediction_model.", "prediction."),
                         ("queue.", "memory.")):
            for key in [k for k in state_dict if k.startswith(prefix + old)]:
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)
        if prefix + "memory.keys" in state_dict:
            state_dict[prefix + "memory.rows"] = state_dict.pop(prefix + "memory.keys").T[None].contiguous()
        self.upgrade_legacy_state(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
