"""Representation probes on frozen embeddings: a logistic regression and a weighted kNN, run at the end of each
validation epoch of pretraining and by the linear probe, and the top-k accuracy of class logits."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import Tensor

KNN_K = 200  # neighbours per query (InstDisc, lightly's benchmarks); capped at the bank size
KNN_TEMPERATURE = 0.1  # neighbour weight exp(cosine / KNN_TEMPERATURE)
LOGISTIC_MAX_ITER = 1000
LOGISTIC_REGRESSION = (f"scikit-learn LogisticRegression (L-BFGS, C=1, max_iter {LOGISTIC_MAX_ITER}) on standardized "
                       "features")
KNN_QUERY_CHUNK = 1024  # queries scored at once: bounds the [queries, bank] similarity matrix in memory


def half_split(num_samples: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """A fixed random split of sample indices into two halves (validation sets are often sorted by class)."""
    order = np.random.default_rng(seed).permutation(num_samples)
    return order[: num_samples // 2], order[num_samples // 2 :]


def logistic_regression_probe(embeddings: Tensor, labels: Tensor, seed: int) -> Optional[Tuple[float, float]]:
    """Fit a logistic regression on one half of (embeddings [N, D], labels [N]) and score both halves.

    Returns (accuracy on the fitting half, accuracy on the held-out half) in percent, or None when the fitting half
    has fewer than two classes (e.g. Lightning's two-batch sanity check, or an unlabeled validation set).
    """
    keep = labels >= 0
    x = embeddings[keep].float().cpu().numpy()
    y = labels[keep].cpu().numpy()
    fit, held_out = half_split(len(y), seed)
    if len(np.unique(y[fit])) < 2 or len(held_out) == 0:
        return None
    fit_accuracy, held_out_accuracy = logistic_regression_accuracies(
        (x[fit], y[fit]), (x[fit], y[fit]), (x[held_out], y[held_out])
    )
    return fit_accuracy, held_out_accuracy


def logistic_regression_accuracies(
    fit: Tuple[np.ndarray, np.ndarray], *evaluate: Tuple[np.ndarray, np.ndarray]
) -> List[float]:
    """A logistic regression (a linear probe) fit on standardized features ``fit`` = (x [N, D], y [N]); its accuracy
    in percent on each (x, y) of ``evaluate``."""
    scaler = StandardScaler().fit(fit[0])
    classifier = LogisticRegression(max_iter=LOGISTIC_MAX_ITER).fit(scaler.transform(fit[0]), fit[1])
    return [100.0 * classifier.score(scaler.transform(x), y) for x, y in evaluate]


@torch.no_grad()
def weighted_knn_scores(
    bank: Tensor,
    bank_labels: Tensor,
    queries: Tensor,
    num_classes: int,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
) -> Tensor:
    """Class scores [Q, num_classes] of queries [Q, D] by a weighted vote of their nearest bank entries [N, D].

    Weighted kNN of Wu et al. 2018 (InstDisc, arXiv:1805.01978, section 3.5): similarity is the cosine s_i between the
    query and bank entry i; the k most similar entries (k capped at N) each add exp(s_i / temperature) to the score of
    their class ``bank_labels[i]`` (labels in [0, num_classes)). The prediction is the argmax of the scores. Computed in
    float32 on the inputs' device, KNN_QUERY_CHUNK queries at a time.
    """
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, bank.shape[0])
    scores = []
    for chunk in F.normalize(queries.float(), dim=1).split(KNN_QUERY_CHUNK):
        similarity, neighbours = (chunk @ bank.T).topk(k, dim=1)  # [q, k] each
        weights = (similarity / temperature).exp()
        votes = torch.zeros(chunk.shape[0], num_classes, device=chunk.device)
        scores.append(votes.scatter_add_(1, bank_labels[neighbours], weights))
    return torch.cat(scores)


def knn_accuracy(
    bank: Tensor,
    bank_labels: Tensor,
    queries: Tensor,
    query_labels: Tensor,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
) -> float:
    """Percent of queries whose weighted-kNN prediction (:func:`weighted_knn_scores`) equals their label."""
    bank_labels, query_labels = bank_labels.to(bank.device), query_labels.to(bank.device)
    num_classes = int(torch.cat([bank_labels, query_labels]).max()) + 1
    predictions = weighted_knn_scores(bank, bank_labels, queries.to(bank.device), num_classes, k, temperature)
    return 100.0 * (predictions.argmax(dim=1) == query_labels).float().mean().item()


def half_split_knn_accuracy(embeddings: Tensor, labels: Tensor, seed: int) -> Optional[float]:
    """Weighted-kNN accuracy in percent with one half of (embeddings [N, D], labels [N]) as the bank and the other as
    queries (the halves of :func:`half_split`, as the logistic-regression probe); None without labelled samples in
    both halves. Samples labelled -1 (unlabeled) are left out."""
    keep = labels >= 0
    embeddings, labels = embeddings[keep], labels[keep]
    bank, queries = (torch.as_tensor(i, device=labels.device) for i in half_split(len(labels), seed))
    if len(bank) == 0 or len(queries) == 0:
        return None
    return knn_accuracy(embeddings[bank], labels[bank], embeddings[queries], labels[queries])


def concat_outputs(outputs: list[Tuple[Tensor, Tensor]]) -> Tuple[Tensor, Tensor]:
    """Stack per-batch (embeddings, labels) pairs collected during validation."""
    return torch.cat([e for e, _ in outputs]), torch.cat([y for _, y in outputs])


@torch.no_grad()
def topk_accuracy(logits: Tensor, target: Tensor, topk: Sequence[int] = (1, 5)) -> List[Tensor]:
    """Percent of rows whose target is among the k largest logits, for each k (k is capped at the class count)."""
    maxk = min(max(topk), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    correct = pred.eq(target[:, None])
    return [correct[:, : min(k, maxk)].any(dim=1).float().mean() * 100 for k in topk]
