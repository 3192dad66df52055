"""Loss functions: pure functions of tensors with explicit hyperparameters (no module state, no flags).

Contrastive losses take the similarities of each anchor with its positive, ``pos`` [B], and with its negatives,
``neg`` [B, N] (N may be 0), so one representation serves queues, in-batch negatives and gathered candidates.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def _fp32(x: Tensor) -> Tensor:
    """At least float32: half-precision logits overflow in exp and lose the small differences that matter."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def split_positive(similarity: Tensor, positive_index: Tensor) -> Tuple[Tensor, Tensor]:
    """Split [B, N] similarities into the positive column of each row, [B], and the other columns, [B, N-1]."""
    rows = torch.arange(similarity.shape[0], device=similarity.device)
    pos = similarity[rows, positive_index]
    keep = torch.ones_like(similarity, dtype=torch.bool)
    keep[rows, positive_index] = False
    return pos, similarity[keep].view(similarity.shape[0], similarity.shape[1] - 1)


def _same(x: Tensor) -> Tensor:
    return x


def info_nce_loss(pos: Tensor, neg: Tensor, temperature: float, neg_log_factor: float = 0.0) -> Tensor:
    """InfoNCE (Oord et al. 2018, arXiv:1807.03748; MoCo arXiv:1911.05722): CE([pos, neg]/T, label 0), mean over B.

    ``neg_log_factor`` adds log(f) to every negative logit, i.e. scales the negative sum by f inside the softmax
    (EqCo). Computed by a log-softmax, so large logits / small temperatures cannot overflow.
    """
    # One [B, 1+N] buffer scaled in place and the fused cross-entropy kernel: with a 65536-key queue these are the
    # largest tensors of the step, and every extra elementwise pass over them costs more than the projection head.
    logits = _fp32(torch.cat([pos[:, None], neg], dim=1)).div_(temperature)
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
    pos, neg = _fp32(pos) / temperature, _fp32(neg) / temperature
    return (F.softplus(-pos) + F.softplus(neg).sum(dim=1)).mean()


def inner_product_loss(pos: Tensor, neg: Tensor) -> Tensor:
    """Sum over columns of (1 - s) for the positive and (1 + s) for negatives, mean over B.

    Without negatives and on unit vectors this is 1 - cos(p, z); twice it is BYOL's ||p - z||^2 = 2 - 2cos
    (Grill et al. 2020, arXiv:2006.07733).
    """
    return ((1 - _fp32(pos)) + (1 + _fp32(neg)).sum(dim=1)).mean()


def vicreg_loss(
    z_a: Tensor,
    z_b: Tensor,
    invariance_weight: float,
    variance_weight: float,
    covariance_weight: float,
    eps: float,
    gather: Callable[[Tensor], Tensor] = _same,
) -> Dict[str, Tensor]:
    """VICReg (Bardes et al. 2021, arXiv:2105.04906) on raw embeddings z_a, z_b [N, D].

    invariance = MSE(z_a, z_b); variance = sum over both branches of mean_j relu(1 - sqrt(Var(z_j) + eps))
    (unbiased variance); covariance = sum over both branches of sum_{i != j} C_ij^2 / D. Returns the weighted terms
    ``loss_invariance``, ``loss_variance``, ``loss_covariance`` and their sum ``loss``.

    ``gather`` maps a branch [N, D] to the batch the variance and covariance are computed on: the identity, or the
    concatenation over processes [world*N, D] (with gradient), as the official code does; the invariance term stays
    on this process's pairs.
    """
    z_a, z_b = _fp32(z_a), _fp32(z_b)
    invariance = F.mse_loss(z_a, z_b)
    all_a, all_b = gather(z_a), gather(z_b)
    variance = variance_hinge(all_a, eps) + variance_hinge(all_b, eps)
    covariance = off_diagonal_covariance(all_a) + off_diagonal_covariance(all_b)
    terms = {
        "loss_invariance": invariance_weight * invariance,
        "loss_variance": variance_weight * variance,
        "loss_covariance": covariance_weight * covariance,
    }
    return {"loss": sum(terms.values()), **terms}  # type: ignore[dict-item]


def variance_hinge(z: Tensor, eps: float) -> Tensor:
    """mean_j relu(1 - sqrt(Var(z[:, j]) + eps)) for z [N, D], unbiased variance."""
    return F.relu(1 - torch.sqrt(z.var(dim=0) + eps)).mean()


def off_diagonal_covariance(z: Tensor) -> Tensor:
    """sum_{i != j} C_ij^2 / D with C the unbiased covariance matrix of z [N, D]."""
    n, d = z.shape
    centered = z - z.mean(dim=0)
    cov = centered.T @ centered / (n - 1)  # [D, D]
    return (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / d


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
    q, k = F.normalize(_fp32(query), dim=1), F.normalize(_fp32(key), dim=1)
    b = q.shape[0]
    diagonal = (q * k).sum(dim=1)
    off_diagonal = (q.sum(dim=0) @ k.sum(dim=0) - diagonal.sum()) / max(b * (b - 1), 1)
    return diagonal.mean(), off_diagonal


def barlow_twins_loss(z_a: Tensor, z_b: Tensor, off_diagonal_weight: float, eps: float = 1e-5) -> Tensor:
    """Barlow Twins (Zbontar et al. 2021, arXiv:2103.03230) on z_a, z_b [N, D].

    Each feature is standardized over the batch (biased variance, as BatchNorm without affine), C = z_a^T z_b / N is
    the [D, D] cross-correlation, and L = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2. Collapsed inputs give
    C = 0, i.e. L = D.
    """
    z_a, z_b = _fp32(z_a), _fp32(z_b)
    n = z_a.shape[0]
    standardize = lambda z: (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + eps)  # noqa: E731
    c = standardize(z_a).T @ standardize(z_b) / n
    on_diagonal = (1 - c.diagonal()).pow(2).sum()
    return on_diagonal + off_diagonal_weight * (c.pow(2).sum() - c.diagonal().pow(2).sum())


def negative_cosine_loss(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam's D(p, z) = -cos(p, z) averaged over the batch (Chen & He 2020, arXiv:2011.10566); p, z [B, D].

    The stop-gradient on z is the caller's (the target network); -1 for aligned, 0 for orthogonal vectors.
    """
    return -F.cosine_similarity(_fp32(p), _fp32(z), dim=1).mean()


def cross_entropy_with_soft_targets(target_probs: Tensor, logits: Tensor, temperature: float) -> Tensor:
    """-sum_k P_k log softmax(logits / T)_k, mean over the batch; target_probs, logits [B, K] (DINO, SwAV)."""
    return -(target_probs * F.log_softmax(_fp32(logits) / temperature, dim=1)).sum(dim=1).mean()


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
    teacher_probs = F.softmax((_fp32(teacher_logits) - center) / teacher_temperature, dim=1).detach()
    return cross_entropy_with_soft_targets(teacher_probs, student_logits, student_temperature)


@torch.no_grad()
def sinkhorn_knopp(
    scores: Tensor,
    epsilon: float,
    iterations: int,
    sum_over_processes: Callable[[Tensor], Tensor] = _same,
    max_over_processes: Callable[[Tensor], Tensor] = _same,
) -> Tensor:
    """SwAV codes (Caron et al. 2020, arXiv:2006.09882): an equipartitioned soft assignment of B samples to K
    prototypes from scores [B, K], computed in fp32. Rows of the result sum to 1; columns to B/K.

    Under DDP the two reductions make the partition constraint hold over the global batch; the exponent is shifted
    by the global maximum score (it cancels in the normalizations, and exp(s / 0.05) overflows otherwise).
    """
    scores = _fp32(scores)
    q = torch.exp((scores - max_over_processes(scores.max())) / epsilon).T  # [K, B]
    total_batch = sum_over_processes(torch.tensor(float(q.shape[1]), device=q.device))
    num_prototypes = q.shape[0]
    q /= sum_over_processes(q.sum())
    for _ in range(iterations):
        q /= sum_over_processes(q.sum(dim=1, keepdim=True)) * num_prototypes  # each prototype gets 1/K of the mass
        q /= q.sum(dim=0, keepdim=True) * total_batch  # each sample gets 1/B of the mass
    return (q * total_batch).T  # [B, K], rows sum to 1


def supervised_contrastive_loss(similarity: Tensor, positive_mask: Tensor, temperature: float) -> Tensor:
    """SupCon L_out (Khosla et al. 2020, arXiv:2004.11362): for each anchor the mean over its positives of
    -log(exp(s_p/T) / sum_a exp(s_a/T)); mean over anchors. similarity [B, N] against all candidates except the
    anchor itself; positive_mask [B, N] bool (same label). Anchors without positives are skipped."""
    log_probs = F.log_softmax(_fp32(similarity) / temperature, dim=1)
    positives = positive_mask.float()
    count = positives.sum(dim=1)
    has_positive = count > 0
    per_anchor = -(log_probs * positives).sum(dim=1)[has_positive] / count[has_positive]
    return per_anchor.mean()
