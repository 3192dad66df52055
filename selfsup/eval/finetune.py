"""Fine-tuning: the whole encoder of a pretraining checkpoint and a linear layer on it, trained on the labelled
training split with the usual supervised augmentation (data.finetune_transform), scored top-1 / top-5 on the test
split.

The optimizer follows the architecture (``finetune_optimizer="auto"``): SGD with Nesterov momentum for CNNs; for
Vision Transformers AdamW with layer-wise learning-rate decay (BEiT, Bao et al. 2021, arXiv:2106.08254; the MAE
fine-tuning recipe, He et al. 2021, arXiv:2111.06377, appendix A.1): block i of L gets the learning rate times
``finetune_layer_decay ** (L + 1 - (i + 1))``, the patch embedding, position embeddings and class token the lowest
(``decay ** (L + 1)``), the final norm and the classifier the full rate. Both scale the base rate with the global batch
(lr = base lr x batch / 256), warm up linearly, then follow a cosine to 0, per step; biases, normalization layers and
the tokens timm lists in ``no_weight_decay`` get no weight decay. Mixup, CutMix and RandAugment of the MAE recipe are
not used.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import attrs
import torch
from pytorch_lightning.utilities.types import OptimizerLRSchedulerConfig
from torch import nn
from torch.utils.data import Dataset, Subset

from selfsup import data
from selfsup.eval.classifier import CheckpointEncoderParams, EncoderClassifier
from selfsup.nn.vit import is_timm_vit
from selfsup.optim.groups import is_bias_or_norm, named_parameters_with_owner, no_weight_decay_names
from selfsup.optim.schedules import WarmupCosineSchedule
from selfsup.options import option

FINETUNE_OPTIMIZERS = ("auto", "sgd", "adamw")
# (base lr per 256 images, weight decay) when not given: torchvision's ResNet recipe scaled down for fine-tuning, and
# MAE's ViT-B fine-tuning (blr 5e-4, weight decay 0.05)
OPTIMIZER_DEFAULTS = {"sgd": (0.05, 1e-4), "adamw": (5e-4, 0.05)}
ADAMW_BETAS = (0.9, 0.999)
LR_BATCH_REFERENCE = 256
_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBEDDING_NAMES = ("patch_embed", "cls_token", "reg_token", "pos_embed", "mask_token")


@attrs.frozen(kw_only=True, slots=False)
class FineTuneOptions:
    """Fine-tuning"""

    finetune_batch_size: int = option(128, "images per device per step", low=1)
    finetune_epochs: int = option(100, "training length (selfsup-eval's Trainer max_epochs; a Trainer of your own "
                                       "sets its own, which the schedule follows)", low=1)
    finetune_optimizer: str = option("auto", "'sgd' (Nesterov momentum), 'adamw' (with layer-wise lr decay on ViTs) "
                                             "or 'auto': AdamW for Vision Transformers, SGD otherwise",
                                     choices=FINETUNE_OPTIMIZERS)
    finetune_base_lr: Optional[float] = option(None, "learning rate per 256 images (lr = base x global batch / "
                                                     "256); None = 0.05 for SGD, 5e-4 for AdamW", low=0,
                                               low_open=True)
    finetune_weight_decay: Optional[float] = option(None, "None = 1e-4 for SGD, 0.05 for AdamW", low=0)
    finetune_momentum: float = option(0.9, "SGD momentum", low=0, high=1)
    finetune_warmup_fraction: float = option(0.05, "fraction of the steps with a linear warmup (5 of MAE's 100 "
                                                   "epochs)", low=0, high=1)
    finetune_layer_decay: float = option(0.75, "ViTs with AdamW: each block nearer the input trains at this factor "
                                               "of the next one's lr (1 = off)", low=0, high=1, low_open=True)
    finetune_label_smoothing: float = option(0.1, "label smoothing of the training loss", low=0,
                                             high=0.99)


@attrs.frozen(kw_only=True, slots=False)
class FineTuneParams(FineTuneOptions, CheckpointEncoderParams):  # attrs: last base first
    """All knobs of :class:`FineTuneMethod`: the encoder and data fields of the pretraining run (from the checkpoint)
    and the fine-tuning options."""


def resolved_optimizer(p: FineTuneOptions, encoder_arch: str) -> str:
    """'sgd' or 'adamw': ``finetune_optimizer``, with 'auto' resolved by the architecture."""
    if p.finetune_optimizer != "auto":
        return p.finetune_optimizer
    return "adamw" if is_timm_vit(encoder_arch) else "sgd"


def layer_id(name: str, depth: int) -> int:
    """BEiT's layer index of a ViT parameter: 0 for the embeddings (patches, positions, tokens), i + 1 for block i,
    depth + 1 for the rest (final norm, classifier)."""
    block = _BLOCK.search(name)
    if block is not None:
        return int(block.group(1)) + 1
    if any(part in name for part in _EMBEDDING_NAMES):
        return 0
    return depth + 1


def finetune_parameter_groups(module: nn.Module, weight_decay: float, layer_decay: float, depth: int
                              ) -> List[Dict[str, Any]]:
    """Optimizer groups of ``module``'s trainable parameters: weight decay except on biases, normalization layers and
    ``no_weight_decay`` tokens; with ``depth`` > 0 (a ViT of that many blocks) each group's ``lr_scale`` is
    ``layer_decay ** (depth + 1 - layer_id)``, else 1."""
    tokens = no_weight_decay_names(module)
    groups: Dict[Any, Dict[str, Any]] = {}
    for name, parameter, owner in named_parameters_with_owner(module):
        excluded = is_bias_or_norm(name, owner) or name in tokens
        scale = layer_decay ** (depth + 1 - layer_id(name, depth)) if depth else 1.0
        key = (excluded, scale)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": 0.0 if excluded else weight_decay, "lr_scale": scale}
        groups[key]["params"].append(parameter)
    return list(groups.values())


class FineTuneMethod(EncoderClassifier):
    """The encoder (``.model``) and a linear layer (``.classifier``), both trained, configured by
    :class:`FineTuneParams`; usually built with :meth:`from_moco_checkpoint` (the pretrained encoder). Batch-norm
    layers train as usual (batch statistics, running averages updated)."""

    params_type = FineTuneParams
    params: FineTuneParams

    def __init__(self, params: Union[FineTuneParams, Mapping[str, Any], None] = None, **overrides: Any) -> None:
        super().__init__(params, **overrides)
        p = self.params
        self.batch_size = p.finetune_batch_size
        self.label_smoothing = p.finetune_label_smoothing
        self.optimizer_name = resolved_optimizer(p, p.encoder_arch)
        base_lr, weight_decay = OPTIMIZER_DEFAULTS[self.optimizer_name]
        self.base_lr = p.finetune_base_lr or base_lr
        self.weight_decay = weight_decay if p.finetune_weight_decay is None else p.finetune_weight_decay
        blocks = getattr(self.model, "blocks", None)
        self.depth = len(blocks) if self.optimizer_name == "adamw" and isinstance(blocks, nn.Sequential) else 0
        self._finetune_images: Optional[Tuple[Dataset, Dataset]] = None

    def _datasets(self) -> Tuple[Dataset, Dataset]:
        if self._finetune_images is None:
            self._finetune_images = data.finetune_datasets(self.params)
        return self._finetune_images

    def restrict_training(self, indices: Sequence[int]) -> None:
        """Train on these items of the training split only (a low-shot subset); the test split stays whole."""
        train, test = self._datasets()
        self._finetune_images = (Subset(train, [int(i) for i in indices]), test)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        p = self.params
        global_batch = self.batch_size * self.trainer.world_size * self.trainer.accumulate_grad_batches
        lr = self.base_lr * global_batch / LR_BATCH_REFERENCE
        groups = finetune_parameter_groups(self, self.weight_decay, p.finetune_layer_decay, self.depth)
        for group in groups:
            group["lr"] = lr * group["lr_scale"]
        optimizer: torch.optim.Optimizer
        if self.optimizer_name == "adamw":
            optimizer = torch.optim.AdamW(groups, lr=lr, betas=ADAMW_BETAS)
        else:
            optimizer = torch.optim.SGD(groups, lr=lr, momentum=p.finetune_momentum, nesterov=True)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = round(p.finetune_warmup_fraction * total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosineSchedule(warmup, total, 0.0))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
