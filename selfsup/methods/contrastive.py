"""Contrastive methods (loss_type "contrastive", "binary_contrastive"; formerly "ce", "bce"): MoCo v1/v2/v3, SimCLR
v1/v2 and EqCo.

The positive of a query is the key of the same image in another view; negatives come from a queue of past keys
and/or the batch. "contrastive" is InfoNCE (with ``use_eqco_margin``, EqCo's rescaled negatives),
"binary_contrastive" a binary cross-entropy on every logit. Contrastive losses take the similarities of each anchor
with its positive, ``pos`` [B], and with its negatives, ``neg`` [B, N] (N may be 0), so one representation serves
queues, in-batch negatives and gathered candidates.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Dict, Mapping, Sequence, Tuple

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup import distributed
from selfsup.methods.criteria import LossOutput, PairLoss, PairStep, PairwiseCriterion
from selfsup.methods.losses import accuracy_metrics, cosine_metrics, fp32, own_rows, split_positive
from selfsup.methods.method import Method
from selfsup.methods.options import SharedParams, fail, options_of, suspicious
from selfsup.methods.preset import ADAMW_VIT, BYOL_VIEWS, LARS_WITHOUT_BIAS_AND_NORM, Preset
from selfsup.methods.registry import register
from selfsup.options import option


def info_nce_loss(pos: Tensor, neg: Tensor, temperature: float, neg_log_factor: float = 0.0) -> Tensor:
    """InfoNCE (Oord et al. 2018, arXiv:1807.03748; MoCo arXiv:1911.05722): CE([pos, neg]/T, label 0), mean over B.

    ``neg_log_factor`` adds log(f) to every negative logit, i.e. scales the negative sum by f inside the softmax
    (EqCo). Computed by a log-softmax, so large logits / small temperatures cannot overflow.
    """
    # One [B, 1+N] buffer scaled in place and the fused cross-entropy kernel: with a 65536-key queue these are the
    # largest tensors of the step, and every extra elementwise pass over them costs more than the projection head.
    logits = fp32(torch.cat([pos[:, None], neg], dim=1)).div_(temperature)
    if neg_log_factor:
        logits[:, 1:] += neg_log_factor
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


def eqco_loss(pos: Tensor, neg: Tensor, temperature: float, alpha: float) -> Tensor:
    """EqCo (Zhu et al. 2020, arXiv:2010.01929): InfoNCE with the negative sum scaled by alpha / N, so the loss and
    its gradient behave as with ``alpha`` negatives whatever the real count N = neg.shape[1]. alpha = N is InfoNCE;
    with N = 0 (an empty queue) the loss is 0."""
    return info_nce_loss(pos, neg, temperature, math.log(alpha / neg.shape[1]) if neg.shape[1] else 0.0)


def binary_contrastive_loss(pos: Tensor, neg: Tensor, temperature: float) -> Tensor:
    """Binary cross-entropy on every logit l/T (positive -> 1, negatives -> 0), summed over columns, mean over B."""
    pos, neg = fp32(pos) / temperature, fp32(neg) / temperature
    return (F.softplus(-pos) + F.softplus(neg).sum(dim=1)).mean()


class ContrastiveCriterion(PairwiseCriterion):
    """Positive = the key of the same image in view t; negatives from the batch and/or a queue.

    In-batch negatives are the other images' keys of view t and, when ``same_view_negatives`` (the target is the
    online network, as in SimCLR), the other images' keys of the query's own view s: NT-Xent's 2B-2 negatives.
    ``gather`` collects candidates from every process with gradient (:func:`distributed.gather_with_grad`, identity in a
    single process) or is the identity (per-device negatives); positives sit at this process's offset in the
    candidates.
    """

    def __init__(
        self,
        pairs: Sequence[Tuple[int, int]],
        reduction: str,
        factor: float,
        loss_fn: PairLoss,
        batch_negatives: bool,
        same_view_negatives: bool,
        gather: Callable[[Tensor], Tensor] = distributed.gather_with_grad,
    ) -> None:
        super().__init__(pairs, reduction, factor)
        self.loss_fn = loss_fn
        self.batch_negatives = batch_negatives
        self.same_view_negatives = same_view_negatives
        self.gather = gather

    def pair_loss(self, s: int, t: int, step: PairStep) -> LossOutput:
        query, key = step.queries[s], step.keys[t]
        assert query is not None and key is not None
        negatives = []
        if self.batch_negatives:
            candidates = self.gather(key)
            positive_index = own_rows(query.shape[0], candidates.shape[0], query.device)
            pos, cross_view = split_positive(query @ candidates.T, positive_index)
            negatives.append(cross_view)
        else:
            pos = (query * key).sum(dim=1)
        same_view_keys = step.keys[s]
        if self.same_view_negatives and same_view_keys is not None:
            candidates = self.gather(same_view_keys)
            own = own_rows(query.shape[0], candidates.shape[0], query.device)
            negatives.append(split_positive(query @ candidates.T, own)[1])
        if step.memory is not None:
            negatives.append(query @ step.memory[0].T)  # [B, K]: the queue holds one slot of keys
        neg = torch.cat(negatives, dim=1) if negatives else query.new_zeros(query.shape[0], 0)
        metrics = cosine_metrics(query, key)
        if self.batch_negatives or step.memory is not None:  # logged from the first step, when the queue is empty
            metrics.update(accuracy_metrics(pos, neg))
        return LossOutput(self.loss_fn(pos, neg), metrics)


def candidates_gather(p: SharedParams) -> Callable[[Tensor], Tensor]:
    """In-batch candidates: the global batch (gradients return to the process that produced each embedding) or this
    process's batch only."""
    return distributed.gather_with_grad if p.gather_negatives_across_devices else distributed.identity


def same_view_candidates(p: SharedParams) -> bool:
    """Whether the other images' keys of the query's own view are candidates too (NT-Xent's 2B-2): the keys are the
    online projections (no EMA target) of every global view (a symmetric loss)."""
    return not p.use_lagging_model and p.use_both_augmentations_as_queries


def same_view_negatives(p: SharedParams) -> bool:
    """NT-Xent's negatives from the query's own view: in-batch negatives with :func:`same_view_candidates`."""
    return p.use_negative_examples_from_batch and same_view_candidates(p)


@attrs.frozen(kw_only=True, slots=False)
class EqCoOptions:
    """EqCo"""

    eqco_alpha: int = option(65536, "EqCo alpha: the negative count whose gradient scale is kept", low=0,
                             low_open=True)
    use_eqco_margin: bool = option(False, "EqCo: scale the negative sum by eqco_alpha / (number of negatives)")


_LOSSES: Mapping[str, Callable[..., Tensor]] = {
    "contrastive": info_nce_loss,
    "binary_contrastive": binary_contrastive_loss,
}


_SIMCLR: Dict[str, Any] = dict(
    use_negative_examples_from_batch=True,
    gather_negatives_across_devices=True,
    use_negative_examples_from_queue=False,
    use_lagging_model=False,
    use_both_augmentations_as_queries=True,
    K=0,
    m=0.0,
    view_pair_reduction="mean",
    mlp_normalization="bn",  # the official code's head: BatchNorm after every layer, the output's included
    projection_output_batch_norm=True,
)


def _moco_v3_fields(overrides: Mapping[str, Any]) -> Dict[str, Any]:
    temperature = overrides.get("T", 0.2)
    return dict(T=temperature, loss_constant_factor=2 * temperature)


MOCO_V2 = Preset(
    name="MoCoV2Params", key="moco_v2", paper="MoCo v2, arXiv:2003.04297",
    summary="2-layer projection MLP, 65536-key queue, T=0.2, EMA key encoder m=0.996 (the ModelParams defaults)",
    doc="MoCo v2 (Chen et al. 2020, arXiv:2003.04297): the ModelParams defaults.",
)
MOCO = Preset(
    name="MoCoParams", key="moco", paper="MoCo v1, arXiv:1911.05722", summary="linear projection, T=0.07, m=0.999",
    doc="MoCo v1 (He et al. 2019, arXiv:1911.05722): one linear projection, T=0.07, constant m=0.999.",
    fields=dict(projection_mlp_layers=1, T=0.07, m=0.999),
)
MOCO_V3 = Preset(
    name="MoCoV3Params", key="moco_v3", paper="MoCo v3, arXiv:2104.02057",
    summary="no queue; queries vs the other view's momentum keys of the whole batch, 2T-scaled and summed over both "
    "orderings; BN projector (BN output) and predictor; m 0.99 cosine to 1; LARS; BYOL's augmentations",
    doc="MoCo v3 (Chen, Xie & He 2021, arXiv:2104.02057): no queue; each view's query against the momentum keys of the "
    "other view in the batch (keys of all processes), summed over both orderings and scaled by 2T as in the official "
    "code; BN projector with a BN output and BN predictor (4096 hidden, 256 out); momentum 0.99 cosine-scheduled to "
    "1; LARS lr 0.6 per 256 images, 10 warmup epochs, wd 1e-6. T=0.2 (solo-learn's ResNet-18 value; the official "
    "ResNet-50 code uses 1.0). loss_constant_factor follows T unless given.",
    fields=dict(
        use_negative_examples_from_batch=True,
        use_negative_examples_from_queue=False,
        use_both_augmentations_as_queries=True,
        m=0.99,
        use_momentum_schedule=True,
        projection_mlp_layers=2,
        prediction_mlp_layers=2,
        mlp_normalization="bn",
        projection_output_batch_norm=True,
        mlp_hidden_dim=4096,
        dim=256,
        lr=0.6,
        weight_decay=1e-6,
        lars_warmup_epochs=10,
        **BYOL_VIEWS,
        **LARS_WITHOUT_BIAS_AND_NORM,
    ),
    derive=_moco_v3_fields,
)
# MoCo v3's ViT recipe (its paper's Table 9 and the official main_moco.py for vit_small): a 3-layer projector, a
# frozen random patch projection, fixed sine-cosine position embeddings, AdamW.
_MOCO_V3_VIT: Dict[str, Any] = dict(
    MOCO_V3.fields,
    projection_mlp_layers=3,
    freeze_patch_embed=True,
    fixed_sincos_pos_embed=True,
    global_pool="token",
    **ADAMW_VIT,
    lr=1.5e-4,
    weight_decay=0.1,
    lars_warmup_epochs=40,
    max_epochs=300,
)
MOCO_V3_VIT_SMALL = Preset(
    name="MoCoV3ViTSmallParams", key="moco_v3_vit_small", paper="MoCo v3, arXiv:2104.02057",
    summary="MoCo v3 on ViT-S/16: frozen random patch projection, sine-cosine positions, 3-layer BN projector, "
    "AdamW lr 1.5e-4 per 256 images, wd 0.1, T=0.2, 40 warmup epochs",
    doc="MoCo v3 (Chen, Xie & He 2021, arXiv:2104.02057) as its ViT-S/16 recipe (12 heads, as its vit_small): the "
    "patch projection keeps its random initialisation (frozen, the paper's stability fix), fixed 2-D sine-cosine "
    "position embeddings, class-token representation; 3-layer projector (4096 hidden, 256 out, BatchNorm, BN output) "
    "and 2-layer predictor; T=0.2, loss scaled by 2T; momentum 0.99 cosine to 1; AdamW lr 1.5e-4 per 256 images "
    "(scale with the total batch), weight decay 0.1 (none on biases, norms and tokens, where the official code decays "
    "every parameter), 40 warmup epochs, 300 epochs; BYOL's augmentations.",
    fields=dict(_MOCO_V3_VIT, encoder_arch="timm:vit_small_patch16_224", embedding_dim=384, num_heads=12),
    derive=_moco_v3_fields,
)
MOCO_V3_VIT_TINY = Preset(
    name="MoCoV3ViTTinyParams", key="moco_v3_vit_tiny", paper="MoCo v3, arXiv:2104.02057",
    summary="MoCo v3's ViT recipe at CIFAR scale: ViT-Tiny with 4-px patches on 32-px images",
    doc="MoCo v3's ViT recipe (see MoCoV3ViTSmallParams) at CIFAR scale: a ViT-Tiny cut into 4-px patches, so a "
    "32-px image is 64 tokens.",
    fields=dict(_MOCO_V3_VIT, encoder_arch="timm:vit_tiny_patch16_224", patch_size=4, embedding_dim=192),
    derive=_moco_v3_fields,
)
SIMCLR = Preset(
    name="SimCLRParams", key="simclr", paper="SimCLR, arXiv:2002.05709",
    summary="in-batch negatives (NT-Xent), no queue, no EMA, both views as queries, mean over the 2B anchors; "
    "BN projection head",
    doc="SimCLR (Chen et al. 2020, arXiv:2002.05709): NT-Xent over the 2B views of a batch, 2B-2 negatives per anchor "
    "(same-view ones included), averaged over the 2B anchors; a 2-layer projection head with BatchNorm after both "
    "layers, as in the official code.",
    fields=_SIMCLR,
)
SIMCLR_V2 = Preset(
    name="SimCLRv2Params", key="simclr_v2", paper="SimCLR v2, arXiv:2006.10029",
    summary="SimCLR with a 3-layer BN projection head (BN output)",
    doc="SimCLR v2 (Chen et al. 2020, arXiv:2006.10029): SimCLR with a 3-layer projection head, BatchNorm after every "
    "layer (hidden width = encoder width).",
    fields=dict(_SIMCLR, projection_mlp_layers=3),
)
EQCO = Preset(
    name="EqCoParams", key="eqco", paper="EqCo, arXiv:2010.01929",
    summary="MoCo v2 with a 256-key queue, negatives rescaled to alpha=65536",
    doc="EqCo (Zhu et al. 2020, arXiv:2010.01929): MoCo v2 with a 256-key queue whose negative term is rescaled to "
    "act like eqco_alpha negatives.",
    fields=dict(use_eqco_margin=True, K=256, eqco_alpha=65536),
)


@register
class Contrastive(Method):
    loss_types = tuple(_LOSSES)
    aliases = {"ce": "contrastive", "bce": "binary_contrastive"}
    options = EqCoOptions
    presets = (MOCO_V2, MOCO, MOCO_V3, MOCO_V3_VIT_SMALL, MOCO_V3_VIT_TINY, SIMCLR, SIMCLR_V2, EQCO)
    reads_negatives = True

    def uses_queue(self, p: SharedParams) -> bool:
        return p.use_negative_examples_from_queue

    def check(self, p: SharedParams) -> None:
        if not (p.use_negative_examples_from_batch or p.use_negative_examples_from_queue):
            fail("loss_type", f"{p.loss_type!r} needs negatives: set use_negative_examples_from_batch or "
                              "use_negative_examples_from_queue")
        if not p.use_unit_sphere_projection:
            suspicious(f"loss_type={p.loss_type!r} on unnormalized embeddings: logits are unbounded")

    def check_options(self, p: SharedParams) -> None:
        if options_of(p, EqCoOptions).use_eqco_margin and _LOSSES.get(p.loss_type) is not info_nce_loss:
            fail("use_eqco_margin", f"the EqCo margin is defined for loss_type='contrastive', not {p.loss_type!r}")

    def criterion(self, p: SharedParams, pairs: Sequence[Tuple[int, int]], reduction: str,
                  factor: float) -> PairwiseCriterion:
        eqco = options_of(p, EqCoOptions)
        if eqco.use_eqco_margin:
            loss_fn: PairLoss = functools.partial(eqco_loss, temperature=p.T, alpha=eqco.eqco_alpha)
        else:
            loss_fn = functools.partial(_LOSSES[p.loss_type], temperature=p.T)
        return ContrastiveCriterion(pairs, reduction, factor, loss_fn, p.use_negative_examples_from_batch,
                                    same_view_negatives(p), candidates_gather(p))
