"""The weighted kNN monitor against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.eval import probes

# Unit-norm directions chosen so the cosines with the query [1, 0] are 1, 0, 1/sqrt(2) and -1.
BANK = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0], [-0.5, 0.0]])  # norms differ: only directions matter
BANK_LABELS = torch.tensor([0, 1, 1, 0])
QUERY = torch.tensor([[5.0, 0.0]])


@pytest.mark.parametrize(
    "k, expected",
    [
        (1, [math.exp(1 / 0.5), 0.0]),
        (3, [math.exp(1 / 0.5), math.exp(math.sqrt(0.5) / 0.5) + math.exp(0.0)]),
        (200, [math.exp(1 / 0.5) + math.exp(-1 / 0.5), math.exp(math.sqrt(0.5) / 0.5) + math.exp(0.0)]),  # k capped
    ],
)
def test_weighted_knn_scores_by_hand(k, expected):
    scores = probes.weighted_knn_scores(BANK, BANK_LABELS, QUERY, num_classes=2, k=k, temperature=0.5)
    assert torch.allclose(scores, torch.tensor([expected]), rtol=1e-5)


def test_weights_outvote_a_majority():
    # Two of the three nearest neighbours are class 1, but the single class-0 neighbour is much closer:
    # exp(1/0.1) = 22026 against exp(0.6/0.1) + exp(0.5/0.1) = 403 + 148.
    bank = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.5, math.sqrt(0.75)], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    scores = probes.weighted_knn_scores(bank, labels, QUERY, num_classes=2, k=3, temperature=0.1)
    assert scores.argmax(dim=1).tolist() == [0]
    assert probes.knn_accuracy(bank, labels, QUERY, torch.tensor([0]), k=3, temperature=0.1) == 100.0


def test_query_chunks_do_not_change_the_scores(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(50, 8, generator=generator), torch.randn(7, 8, generator=generator)
    labels = torch.randint(0, 3, (50,), generator=generator)
    whole = probes.weighted_knn_scores(bank, labels, queries, num_classes=3, k=10)
    monkeypatch.setattr(probes, "KNN_QUERY_CHUNK", 2)
    assert torch.allclose(probes.weighted_knn_scores(bank, labels, queries, num_classes=3, k=10), whole)


def test_half_split_knn_separates_clusters_and_skips_unlabeled():
    generator = torch.Generator().manual_seed(0)
    centres = torch.eye(4)[:3] * 10
    labels = torch.arange(3).repeat(20)
    embeddings = centres[labels] + torch.randn(60, 4, generator=generator)
    embeddings[-6:] = centres[0]  # unlabeled samples (label -1) are left out of both bank and queries
    labels[-6:] = -1
    assert probes.half_split_knn_accuracy(embeddings, labels, seed=0) == 100.0
    assert probes.half_split_knn_accuracy(embeddings[:1], labels[:1], seed=0) is None
