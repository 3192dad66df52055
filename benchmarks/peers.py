"""The presets' methods as implemented by a peer library, lightly (a benchmark-only dependency:
``pip install -e .[peer]``), for bench_quality's side-by-side column.

Only the method comes from lightly: its projection/prediction heads, losses, memory banks and momentum update, wired
the way lightly's own CIFAR-10 benchmark wires them (head widths for a 512-d ResNet-18, temperatures, symmetric
losses); TiCo, which that benchmark lacks, takes the preset's head widths and beta / rho; MAE is wired as lightly's
MAE example. Everything else is ours and identical to the run it is compared with: the data module (split, views,
augmentation), the backbone, the optimizer and its schedule (``optimizer_and_schedule`` of the same params, so the
same short-run recipe), gradient clipping, the EMA momentum schedule, the batch and the epochs.
"""

from __future__ import annotations

import copy
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn

from selfsup import data
from selfsup.config import ModelParams
from selfsup.nn.backbones import make_encoder, use_channels_last, with_representation
from selfsup.nn.target import MomentumSchedule
from selfsup.nn.vit import patch_size_of, vision_transformer
from selfsup.optim.optimizers import gradient_clipping, optimizer_and_schedule
from selfsup.train.pipeline import pretraining_data

try:
    from lightly import loss as lightly_loss
    from lightly.models import modules as lightly_modules
    from lightly.models import utils as lightly_utils
    from lightly.models.utils import deactivate_requires_grad, update_momentum
except ImportError:  # the peer column is optional; bench_quality checks available() before using it
    lightly_loss = lightly_modules = lightly_utils = None

def available() -> bool:
    """Whether lightly is installed."""
    return lightly_modules is not None


class Peer(nn.Module):
    """One method's heads and loss. ``loss(views)`` is the step's loss; ``momentum_targets`` pairs each online module
    with its EMA copy (empty without a momentum target)."""

    def __init__(self, encoder: nn.Module, params: ModelParams) -> None:
        super().__init__()
        self.encoder = encoder
        self.params = params

    def loss(self, views: Sequence[Tensor], epoch: int) -> Tensor:
        raise NotImplementedError

    def momentum_targets(self) -> List[Tuple[nn.Module, nn.Module]]:
        return []


class MomentumPeer(Peer):
    """A peer whose target network is an EMA copy of its encoder and projection ``head``; a subclass builds ``head``
    and then calls :meth:`make_target`."""

    head: nn.Module

    def make_target(self, fresh_head: Optional[nn.Module] = None) -> None:
        self.target_encoder, self.target_head = _ema_copy(self.encoder), _ema_copy(self.head, fresh_head)

    @torch.no_grad()
    def target(self, views: Sequence[Tensor]) -> List[Tensor]:
        """The target network's outputs of ``views``, without gradients."""
        return [self.target_head(self.target_encoder(v)) for v in views]

    def momentum_targets(self) -> List[Tuple[nn.Module, nn.Module]]:
        return [(self.encoder, self.target_encoder), (self.head, self.target_head)]


def _ema_copy(module: nn.Module, fresh: Optional[nn.Module] = None) -> nn.Module:
    """A frozen copy of ``module``: a deep copy, or ``fresh`` (the same architecture) loaded with its weights, for
    modules a deep copy cannot take (weight-normalized layers)."""
    target = copy.deepcopy(module) if fresh is None else fresh
    target.load_state_dict(module.state_dict())
    deactivate_requires_grad(target)
    return target


def _symmetric(pair_loss: Callable[[int, int], Tensor]) -> Tensor:
    return 0.5 * (pair_loss(0, 1) + pair_loss(1, 0))


class SimCLRPeer(Peer):
    def __init__(self, encoder: nn.Module, params: ModelParams) -> None:
        super().__init__(encoder, params)
        self.head = lightly_modules.SimCLRProjectionHead(params.embedding_dim, params.embedding_dim, 128)
        self.criterion = lightly_loss.NTXentLoss(temperature=0.5)

    def loss(self, views: Sequence[Tensor], epoch: int) -> Tensor:
        z0, z1 = (self.head(self.encoder(v)) for v in views[:2])
        return self.criterion(z0, z1)


class MoCoPeer(MomentumPeer):
    def __init__(self, encoder: nn.Module, params: ModelParams) -> None:
        super().__init__(encoder, params)
        self.head = lightly_modules.MoCoProjectionHead(params.embedding_dim, params.embedding_dim, 128)
        self.make_target()
        self.criterion = lightly_loss.NTXentLoss(temperature=0.1, memory_bank_size=(params.K, 128))

    def loss(self, views: Sequence[Tensor], epoch: int) -> Tensor:
        queries = [self.head(self.encoder(v)) for v in views[:2]]
        keys = self.target(views[:2])
        return _symmetric(lambda i, j: self.criterion(queries[i], keys[j]))


class BYOLPeer(MomentumPeer):
    def __init__(self, encoder: nn.Module, params: ModelParams) -> None:
        super().__init__(encoder, params)
        self.head = lightly_modules.BYOLProjectionHead(params.embedding_dim, 1024, 256)
        self.predictor = lightly_modules.BYOLPredictionHead(256, 1024, 256)
        self.make_target()
        self.criterion = lightly_loss.NegativeCosineSimilarity()

    def loss(self, views: Sequence[Tensor], epoch: int) -> Tensor:
        predictions = [self.predictor(self.head(self.encoder(v))) for v in views[:2]]
        targets = self.target(views[:2])
        return _symmetric(lambda i, j: self.criterion(predictions[i], targets[j]))


class SimSiamPeer(Peer):
    def __init__(self, encoder: nn.Module, params: ModelParams) -> None:
        super().__init__(encoder, params)
        self.head = lightly_modules.SimSiamProjectionHead(params.embedding_dim, params.embedding_dim, 128)
        self.predictor = lightly_modules.SimSiamPredictionHead(128, 64, 128)
        self.criterion = lightly_loss.NegativeCosineSimilarity()

    def loss(self, views: Sequence[Tensor], epoch: int) -> Tensor:
        z = [self.head(self.encoder(v)) for v in views[:2]]
        p = [self.predictor(zi) for zi in z]
        return _symmetric(lambda i, j: self.criterion(p[i], z[j].detach()))


class BarlowTwinsPeer(Peer):
    def __init__(self, encoder: nn.Module, params: ModelParams) -> None:
        super().__init__(encoder, params)
        self.head = lightly_modules.BarlowTwinsProjectionHead(params.embedding_dim, 2048, 2048)
        self.criterion = lightly_loss.BarlowTwinsLoss()

    def loss(self, views: Sequence[Tensor], epoch: int) -> Tensor:
        z0, z1 = (self.head(self.encoder(v)) for v in views[:2])
        return self.criterion(z0, z1)


class VICRegPeer(Peer):
    def __init__(self, encoder: nn.Module, params: ModelParams) -> None:
        super().__init__(encoder, params)
        self.head = lightly_modules.heads.VICRegProjectionHead(params.embedding_dim, 2048, 2048, num_layers=2)
        self.criterion = lightly_loss.VICRegLoss()

    def loss(self, views: Sequence[Tensor], epoch: int) -> Tensor:
        z0, z1 = (self.head(self.encoder(v)) for v in views[:2])
        return self.criterion(z0, z1)


class NNCLRPeer(Peer):
    def __init__(self, encoder: nn.Module, params: ModelParams) -> None:
        super().__init__(encoder, params)
        self.head = lightly_modules.NNCLRProjectionHead(params.embedding_dim, params.embedding_dim, 128)
        self.predictor = lightly_modules.NNCLRPredictionHead(128, params.embedding_dim, 128)
        self.support = lightly_modules.NNMemoryBankModule(size=(params.K, 128))
        self.criterion = lightly_loss.NTXentLoss()

    def loss(self, views: Sequence[Tensor], epoch: int) -> Tensor:
        z = [self.head(self.encoder(v)) for v in views[:2]]
        p = [self.predictor(zi) for zi in z]
        neighbours = [self.support(z[0].detach(), update=False), self.support(z[1].detach(), update=True)]
        return _symmetric(lambda i, j: self.criterion(neighbours[i], p[j]))


class DINOPeer(MomentumPeer):
    def __init__(self, encoder: nn.Module, params: ModelParams) -> None:
        super().__init__(encoder, params)
        def head() -> nn.Module:
            return lightly_modules.DINOProjectionHead(params.embedding_dim, 2048, 256, 2048, batch_norm=True)

        self.head = head()
        self.make_target(fresh_head=head())
        self.criterion = lightly_loss.DINOLoss(
            output_dim=2048,
            warmup_teacher_temp=params.teacher_temperature_warmup_start,
            teacher_temp=params.teacher_temperature,
            warmup_teacher_temp_epochs=params.teacher_temperature_warmup_epochs,
        )

    def loss(self, views: Sequence[Tensor], epoch: int) -> Tensor:
        teacher = self.target(views[: self.params.num_global_crops])
        student = [self.head(self.encoder(v)) for v in views]
        return self.criterion(teacher, student, epoch=epoch)


class SwAVPeer(Peer):
    def __init__(self, encoder: nn.Module, params: ModelParams) -> None:
        super().__init__(encoder, params)
        self.head = lightly_modules.SwaVProjectionHead(params.embedding_dim, params.embedding_dim, 128)
        self.prototypes = lightly_modules.SwaVPrototypes(128, n_prototypes=512)
        self.criterion = lightly_loss.SwaVLoss()

    def loss(self, views: Sequence[Tensor], epoch: int) -> Tensor:
        self.prototypes.normalize()
        scores = [self.prototypes(nn.functional.normalize(self.head(self.encoder(v)), dim=1)) for v in views]
        high = self.params.num_global_crops
        return self.criterion(scores[:high], scores[high:])


class TiCoPeer(MomentumPeer):
    """TiCo as lightly's benchmark wires it, at the preset's head widths and beta / rho: the online projection of
    the first view against the momentum projection of the second, one ordering."""

    def __init__(self, encoder: nn.Module, params: ModelParams) -> None:
        super().__init__(encoder, params)
        self.head = lightly_modules.heads.TiCoProjectionHead(params.embedding_dim, params.mlp_hidden_dim, params.dim)
        self.make_target()
        self.criterion = lightly_loss.TiCoLoss(beta=params.tico_beta, rho=params.tico_rho)

    def loss(self, views: Sequence[Tensor], epoch: int) -> Tensor:
        return self.criterion(self.head(self.encoder(views[0])), self.target(views[1:2])[0])


class MAEPeer(Peer):
    """MAE as lightly's MAE example wires it: lightly's masked ViT around our encoder, its MAE decoder at the preset's
    width, depth and heads, its token masking at the preset's ratio, and the mean squared error on the hidden
    patches' pixels (lightly's example does not normalize them per patch)."""

    def __init__(self, encoder: nn.Module, params: ModelParams) -> None:
        super().__init__(encoder, params)
        vit = vision_transformer(encoder, "lightly's MAE")
        vit.to(memory_format=torch.contiguous_format)  # lightly views the patch projection's weights
        self.backbone = lightly_modules.MaskedVisionTransformerTIMM(vit=vit)
        self.patch = patch_size_of(vit)
        self.tokens = self.backbone.sequence_length
        self.decoder = lightly_modules.MAEDecoderTIMM(
            num_patches=vit.patch_embed.num_patches, patch_size=self.patch, embed_dim=vit.embed_dim,
            decoder_embed_dim=params.mae_decoder_width, decoder_depth=params.mae_decoder_depth,
            decoder_num_heads=params.mae_decoder_heads,
        )

    def loss(self, views: Sequence[Tensor], epoch: int) -> Tensor:
        images = views[0].contiguous()  # lightly's patchify views the pixels
        batch = images.shape[0]
        keep, hidden = lightly_utils.random_token_mask((batch, self.tokens), self.params.mask_ratio,
                                                       device=images.device)
        encoded = self.decoder.embed(self.backbone.encode(images=images, idx_keep=keep))
        tokens = lightly_utils.repeat_token(self.decoder.mask_token, (batch, self.tokens))
        tokens = lightly_utils.set_at_index(tokens, keep, encoded.type_as(tokens))
        predictions = self.decoder.predict(lightly_utils.get_at_index(self.decoder.decode(tokens), hidden))
        target = lightly_utils.get_at_index(lightly_utils.patchify(images, self.patch), hidden - 1)
        return nn.functional.mse_loss(predictions, target)


PEERS: Dict[str, Type[Peer]] = {
    "simclr": SimCLRPeer,
    "moco_v2": MoCoPeer,
    "byol": BYOLPeer,
    "simsiam": SimSiamPeer,
    "barlow_twins": BarlowTwinsPeer,
    "vicreg": VICRegPeer,
    "nnclr": NNCLRPeer,
    "dino": DINOPeer,
    "swav": SwAVPeer,
    "tico": TiCoPeer,
    "mae_tiny": MAEPeer,
    "dino_vit_tiny": DINOPeer,
}


class PeerMethod(pl.LightningModule):
    """Pretraining of ``model`` (the same encoder as ours) with preset ``preset``'s peer implementation; train with
    ``trainer.fit(peer, datamodule=PretrainingDataModule(params))``."""

    def __init__(self, preset: str, params: ModelParams) -> None:
        super().__init__()
        if not available():
            raise ImportError("the peer column needs lightly: pip install -e .[peer]")
        self.params = params
        info = pretraining_data(params).info
        crop = data.crop_size(params, info)
        self.model = with_representation(
            make_encoder(params, data.cifar_stem(params.use_cifar_stem, info), crop),
            params.encoder_layer, crop, params.embedding_dim,
        )
        if params.channels_last:
            use_channels_last(self.model)
        self.peer = PEERS[preset](self.model, params)
        self.momentum_schedule = MomentumSchedule(params.m, 1.0 if params.use_momentum_schedule else params.m)
        self._total_steps = 1

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: Tuple[Sequence[Tensor], Tensor], batch_idx: int) -> Tensor:
        views, _ = batch
        loss = self.peer.loss(views, self.current_epoch)
        self.log("step_train_loss", loss.detach(), prog_bar=True, batch_size=views[0].shape[0])
        return loss

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        m = self.momentum_schedule(self.trainer.global_step, self._total_steps)
        for online, target in self.peer.momentum_targets():
            update_momentum(online, target, m)

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: Optional[float] = None,
                                    gradient_clip_algorithm: Optional[str] = None) -> None:
        self.clip_gradients(optimizer, *gradient_clipping(self.params, gradient_clip_val, gradient_clip_algorithm))

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        self._total_steps = int(self.trainer.estimated_stepping_batches)
        assert self.trainer.max_epochs is not None
        return optimizer_and_schedule(self, self.params, self._total_steps, self.trainer.max_epochs)

