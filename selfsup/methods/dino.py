"""DINO (loss_type "dino"): self-distillation of a centered, sharpened EMA teacher into the student, over a head
that ends in a prototype layer."""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup import distributed
from selfsup.methods.criteria import LossOutput, PairStep, PairwiseCriterion
from selfsup.methods.losses import cosine_metrics, cross_entropy_with_soft_targets, fp32
from selfsup.methods.method import Method
from selfsup.methods.options import SharedParams, fail, options_of
from selfsup.methods.preset import ADAMW_VIT, LARS_WITHOUT_BIAS_AND_NORM, NO_NEGATIVES, Preset
from selfsup.methods.registry import register
from selfsup.nn.heads import Prototypes
from selfsup.options import option

# Short runs: the teacher-temperature warmup takes the fraction of the run it takes in the paper (30 of 100 epochs),
# prototype freezing that of the official recipe (1 of 100 epochs).
SHORT_RUN_TEACHER_WARMUP_FRACTION = 0.3
SHORT_RUN_FREEZE_FRACTION = 0.01


def dino_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    center: Tensor,
    student_temperature: float,
    teacher_temperature: float,
) -> Tensor:
    """DINO (Caron et al. 2021, arXiv:2104.14294): H(softmax((t - c)/T_t), softmax(s/T_s)), mean over the batch.

    student_logits, teacher_logits [B, K]; center [K]. The teacher side carries no gradient. All-zero logits give
    log K.
    """
    teacher_probs = F.softmax((fp32(teacher_logits) - center) / teacher_temperature, dim=1).detach()
    return cross_entropy_with_soft_targets(teacher_probs, student_logits, student_temperature)


class DINOCriterion(PairwiseCriterion):
    """DINO self-distillation: cross-entropy of the centered, sharpened teacher output of global view t against
    the student output of view s; the center is an EMA of the teacher outputs over all processes."""

    def __init__(
        self,
        pairs: Sequence[Tuple[int, int]],
        reduction: str,
        factor: float,
        num_prototypes: int,
        student_temperature: float,
        teacher_temperature: float,
        warmup_start: float,
        warmup_epochs: int,
        center_momentum: float,
    ) -> None:
        super().__init__(pairs, reduction, factor)
        self.student_temperature = student_temperature
        self.final_teacher_temperature = teacher_temperature
        self.warmup_start, self.warmup_epochs = warmup_start, warmup_epochs
        self.teacher_temperature = warmup_start if warmup_epochs > 0 else teacher_temperature
        self.center_momentum = center_momentum
        self.center: Tensor
        self.register_buffer("center", torch.zeros(num_prototypes))

    def set_epoch(self, epoch: int) -> None:
        progress = min(epoch / self.warmup_epochs, 1.0) if self.warmup_epochs > 0 else 1.0
        self.teacher_temperature = self.warmup_start + progress * (self.final_teacher_temperature - self.warmup_start)

    def pair_loss(self, s: int, t: int, step: PairStep) -> LossOutput:
        query, key = step.queries[s], step.keys[t]
        assert query is not None and key is not None
        loss = dino_loss(query, key, self.center, self.student_temperature, self.teacher_temperature)
        return LossOutput(
            loss, {**cosine_metrics(query, key), "teacher_temperature": torch.tensor(self.teacher_temperature)}
        )

    @torch.no_grad()
    def after_step(self, step: PairStep, output: LossOutput) -> None:
        teacher = torch.cat([k for k in step.keys if k is not None])
        batch_mean = distributed.gather(teacher).float().mean(dim=0)
        self.center.mul_(self.center_momentum).add_(batch_mean, alpha=1 - self.center_momentum)


@attrs.frozen(kw_only=True, slots=False)
class DINOOptions:
    """DINO"""

    teacher_temperature: float = option(0.07, "DINO teacher softmax temperature after warmup (the student uses T)",
                                        low=0, low_open=True)
    teacher_temperature_warmup_start: float = option(0.04, "DINO teacher temperature at epoch 0, raised linearly",
                                                     low=0, low_open=True)
    teacher_temperature_warmup_epochs: int = option(30, "DINO epochs of linear teacher-temperature warmup", low=0)
    center_momentum: float = option(0.9, "DINO EMA momentum of the teacher-output center", low=0, high=1)


DINO_PRESET = Preset(
    name="DINOParams", key="dino", paper="DINO, arXiv:2104.14294",
    summary="EMA teacher with centering and sharpening (temperature warmup), GELU head with a normalized, "
    "first-epoch-frozen prototype layer, 2 global + 8 local crops",
    doc="DINO (Caron et al. 2021, arXiv:2104.14294): student/teacher self-distillation; teacher = EMA (0.996 cosine to "
    "1) of encoder + head, centered (momentum 0.9) and sharpened (temperature 0.04 -> 0.07 over 30 epochs; student "
    "0.1); 3-layer GELU head, L2-normalized bottleneck and a weight-normalized last layer (4096 outputs for "
    "ResNet-18 instead of 65536) frozen for the first epoch; 2 global + 8 local crops; LARS as in DINO's ResNet "
    "recipe.",
    fields=dict(
        loss_type="dino",
        use_both_augmentations_as_queries=True,
        view_pair_reduction="mean",
        use_unit_sphere_projection=False,
        projection_mlp_layers=3,
        mlp_hidden_dim=2048,
        dim=256,
        mlp_activation="gelu",
        num_prototypes=4096,
        T=0.1,
        teacher_temperature=0.07,
        teacher_temperature_warmup_start=0.04,
        teacher_temperature_warmup_epochs=30,
        center_momentum=0.9,
        freeze_prototypes_epochs=1,
        m=0.996,
        use_momentum_schedule=True,
        num_local_crops=8,
        global_crop_scale=(0.4, 1.0),
        local_crop_scale=(0.05, 0.4),
        transform_type="byol",
        lr=0.3,
        weight_decay=1e-6,
        lars_warmup_epochs=10,
        **NO_NEGATIVES,
        **LARS_WITHOUT_BIAS_AND_NORM,
    ),
)


# DINO's ViT recipe (main_dino.py's ViT-S/16 arguments, with the paper's teacher-temperature warmup 0.04 -> 0.07 over
# 30 epochs where main_dino.py defaults to a constant 0.04): a head without BatchNorm, 65536 prototypes, AdamW with a
# cosine weight-decay schedule, gradient clipping, stochastic depth (online network only: the teacher has none).
_DINO_VIT: Dict[str, Any] = dict(
    DINO_PRESET.fields,
    mlp_normalization=None,
    num_prototypes=65536,
    teacher_temperature=0.07,
    teacher_temperature_warmup_start=0.04,
    teacher_temperature_warmup_epochs=30,
    global_pool="token",
    drop_path_rate=0.1,
    **ADAMW_VIT,
    lr=5e-4,
    final_lr_schedule_value=1e-6,
    weight_decay=0.04,
    final_weight_decay=0.4,
    gradient_clip_norm=3.0,
    lars_warmup_epochs=10,
    max_epochs=100,
)
DINO_VIT_SMALL = Preset(
    name="DINOViTSmallParams", key="dino_vit_small", paper="DINO, arXiv:2104.14294",
    summary="DINO on ViT-S/16: BN-free head, 65536 prototypes, AdamW lr 5e-4 per 256 images, wd 0.04 -> 0.4, clip "
    "3.0, teacher temperature 0.04 -> 0.07, 2 x 224 + 8 x 96 px crops",
    doc="DINO (Caron et al. 2021, arXiv:2104.14294) as its ViT-S/16 recipe: the DINO head without BatchNorm (3 GELU "
    "layers, 2048 hidden, 256 bottleneck, a weight-normalized last layer of 65536 prototypes frozen the first epoch); "
    "teacher temperature 0.04 -> 0.07 over 30 epochs, student 0.1, center momentum 0.9, EMA 0.996 cosine to 1; AdamW "
    "lr 5e-4 per 256 images (scale with the total batch) after 10 warmup epochs, cosine to 1e-6, weight decay 0.04 "
    "-> 0.4 on a cosine (none on biases, norms and tokens), gradients clipped to norm 3.0 (the official code clips "
    "each parameter's gradient, here the global norm), stochastic depth 0.1; 2 global crops of 224 px (0.4-1) and 8 "
    "local crops of 96 px (0.05-0.4); 100 epochs.",
    fields=dict(_DINO_VIT, encoder_arch="timm:vit_small_patch16_224", embedding_dim=384),
)
DINO_VIT_TINY = Preset(
    name="DINOViTTinyParams", key="dino_vit_tiny", paper="DINO, arXiv:2104.14294",
    summary="DINO's ViT recipe at CIFAR scale: ViT-Tiny with 4-px patches on 32 px, a BatchNorm head of 2048 "
    "prototypes, 2 x 32 + 4 x 16 px crops",
    doc="DINO's ViT recipe (see DINOViTSmallParams) at CIFAR scale: a ViT-Tiny cut into 4-px patches (64 tokens for a "
    "32-px image, 16 for a 16-px local crop), 4 local crops of 16 px, no stochastic depth; the head of the CIFAR-scale "
    "benchmarks (BatchNorm in the MLP, 2048 prototypes, the last layer trained from the first step), which learned "
    "more than the paper's BN-free 4096-prototype head at this scale (docs/benchmarks.md, Vision Transformers).",
    fields=dict(_DINO_VIT, encoder_arch="timm:vit_tiny_patch16_224", patch_size=4, embedding_dim=192,
                num_prototypes=2048, mlp_normalization="bn", freeze_prototypes_epochs=0, num_local_crops=4,
                local_crop_size=16, drop_path_rate=0.0),
)


@register
class DINO(Method):
    loss_types = ("dino",)
    options = DINOOptions
    presets = (DINO_PRESET, DINO_VIT_SMALL, DINO_VIT_TINY)
    momentum_target = True

    def head_prototypes(self, p: SharedParams) -> Prototypes:
        return Prototypes(p.num_prototypes, p.freeze_prototypes_epochs)

    def check(self, p: SharedParams) -> None:
        if p.use_unit_sphere_projection:
            fail("use_unit_sphere_projection", "loss_type='dino' takes softmaxes of the prototype logits, which must "
                                               "not be normalized; set it to False")

    def criterion(self, p: SharedParams, pairs: Sequence[Tuple[int, int]], reduction: str,
                  factor: float) -> PairwiseCriterion:
        d = options_of(p, DINOOptions)
        return DINOCriterion(
            pairs, reduction, factor,
            num_prototypes=p.num_prototypes,
            student_temperature=p.T,
            teacher_temperature=d.teacher_temperature,
            warmup_start=d.teacher_temperature_warmup_start,
            warmup_epochs=d.teacher_temperature_warmup_epochs,
            center_momentum=d.center_momentum,
        )

    def short_run_overrides(self, p: SharedParams) -> Dict[str, Any]:
        epochs = p.max_epochs
        return dict(
            teacher_temperature_warmup_epochs=min(
                options_of(p, DINOOptions).teacher_temperature_warmup_epochs,
                round(SHORT_RUN_TEACHER_WARMUP_FRACTION * epochs),
            ),
            freeze_prototypes_epochs=min(p.freeze_prototypes_epochs, int(SHORT_RUN_FREEZE_FRACTION * epochs)),
        )

    def small_run_overrides(self, p: SharedParams, batch_size: int) -> Dict[str, Any]:
        return dict(num_prototypes=16, num_local_crops=min(p.num_local_crops, 2))
