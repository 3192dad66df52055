"""Representation probes on frozen embeddings, run at the end of each validation epoch."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import Tensor


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
    scaler = StandardScaler().fit(x[fit])
    classifier = LogisticRegression(max_iter=1000).fit(scaler.transform(x[fit]), y[fit])
    return (
        100.0 * classifier.score(scaler.transform(x[fit]), y[fit]),
        100.0 * classifier.score(scaler.transform(x[held_out]), y[held_out]),
    )


def concat_outputs(outputs: list[Tuple[Tensor, Tensor]]) -> Tuple[Tensor, Tensor]:
    """Stack per-batch (embeddings, labels) pairs collected during validation."""
    return torch.cat([e for e, _ in outputs]), torch.cat([y for _, y in outputs])
