"""Tensor helpers that several methods' losses share: float32 promotion, splitting positives from negatives,
contrastive accuracy and cosine metrics, soft-target cross-entropy, and this process's rows among gathered ones."""

from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup import distributed


def fp32(x: Tensor) -> Tensor:
    """At least float32: half-precision logits overflow in exp and lose the small differences that matter."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def split_positive(similarity: Tensor, positive_index: Tensor) -> Tuple[Tensor, Tensor]:
    """Split [B, N] similarities into the positive column of each row, [B], and the other columns, [B, N-1]."""
    rows = torch.arange(similarity.shape[0], device=similarity.device)
    pos = similarity[rows, positive_index]
    keep = torch.ones_like(similarity, dtype=torch.bool)
    keep[rows, positive_index] = False
    return pos, similarity[keep].view(similarity.shape[0], similarity.shape[1] - 1)


@torch.no_grad()
def contrastive_accuracy(pos: Tensor, neg: Tensor) -> Tuple[Tensor, Tensor]:
    """Top-1 and top-5 accuracy (percent) of picking the positive among [pos, neg]; ties count against it.

    The positive is in the top k when it beats the k-th largest negative, so with N < k negatives it always is.
    """
    top = neg.topk(min(5, neg.shape[1]), dim=1).values  # one pass over [B, N], no [B, N] temporary
    below_all = torch.full_like(pos, -math.inf)
    first, fifth = (top[:, k] if top.shape[1] > k else below_all for k in (0, 4))
    return (first < pos).float().mean() * 100, (fifth < pos).float().mean() * 100


@torch.no_grad()
def positive_negative_cosine(query: Tensor, key: Tensor) -> Tuple[Tensor, Tensor]:
    """Mean cosine of each query [B, D] with its own key [B, D], and with the keys of the other B-1 samples.

    Both near 1 is the signature of collapse (all embeddings equal). O(B*D): the off-diagonal sum is
    (sum of queries) . (sum of keys) minus the diagonal.
    """
    q, k = F.normalize(fp32(query), dim=1), F.normalize(fp32(key), dim=1)
    b = q.shape[0]
    diagonal = (q * k).sum(dim=1)
    off_diagonal = (q.sum(dim=0) @ k.sum(dim=0) - diagonal.sum()) / max(b * (b - 1), 1)
    return diagonal.mean(), off_diagonal


def cross_entropy_with_soft_targets(target_probs: Tensor, logits: Tensor, temperature: float) -> Tensor:
    """-sum_k P_k log softmax(logits / T)_k, mean over the batch; target_probs, logits [B, K] (DINO, SwAV)."""
    return -(target_probs * F.log_softmax(fp32(logits) / temperature, dim=1)).sum(dim=1).mean()


def cosine_metrics(query: Tensor, key: Tensor) -> Dict[str, Tensor]:
    return dict(zip(("step_pos_cos", "step_neg_cos"), positive_negative_cosine(query, key)))


def accuracy_metrics(pos: Tensor, neg: Tensor) -> Dict[str, Tensor]:
    return dict(zip(("step_train_acc1", "step_train_acc5"), contrastive_accuracy(pos, neg)))


def own_rows(batch_size: int, num_candidates: int, device: torch.device) -> Tensor:
    """Indices of this process's ``batch_size`` samples among ``num_candidates`` candidates: at offset rank x
    batch_size when the candidates were gathered from every process (rank order), at 0 when they are local."""
    offset = distributed.rank() * batch_size if num_candidates > batch_size else 0
    return torch.arange(batch_size, device=device) + offset
