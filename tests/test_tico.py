"""TiCo (selfsup/methods/tico.py): its loss against closed forms and against lightly's TiCoLoss in float64, and its
running covariance step by step through the criterion's after_step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import build_criterion

from selfsup.config import TiCoParams
from selfsup.methods import PairStep
from selfsup.methods.tico import batch_covariance, tico_loss


def unit(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=1)


def test_collapsed_aligned_views_give_rho_minus_one():
    """All rows one unit vector u, both views equal: -cos = -1, and with beta = 0 the covariance is u u^T, whose
    quadratic form at u is 1."""
    z = F.normalize(torch.ones(8, 5, dtype=torch.float64), dim=1)
    terms = tico_loss(z, z, torch.zeros(5, 5, dtype=torch.float64), beta=0.0, rho=20.0)
    assert terms["loss"].item() == pytest.approx(19.0, rel=1e-12)
    assert terms["loss_invariance"].item() == pytest.approx(-1.0, rel=1e-12)


@pytest.mark.parametrize("n", [2, 4, 6])
def test_orthonormal_rows_give_rho_over_n(n):
    """Rows e_1..e_N: the batch covariance is (1/N) sum e_i e_i^T, whose quadratic form at each e_i is 1/N."""
    z = torch.eye(6, dtype=torch.float64)[:n]
    loss = tico_loss(z, z, torch.zeros(6, 6, dtype=torch.float64), beta=0.0, rho=20.0)["loss"]
    assert loss.item() == pytest.approx(-1 + 20.0 / n, rel=1e-12)


def test_with_beta_one_only_the_previous_covariance_counts():
    """beta = 1: C_t = C; with C = I / D every unit row's quadratic form is 1 / D; orthogonal views: -cos = 0."""
    d = 4
    z_1, z_2 = torch.eye(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64).roll(1, dims=1)
    covariance = torch.eye(d, dtype=torch.float64) / d
    assert tico_loss(z_1, z_2, covariance, beta=1.0, rho=8.0)["loss"].item() == pytest.approx(8.0 / d, rel=1e-12)


def test_the_running_covariance_is_an_ema_of_the_query_batches():
    """Through the criterion's after_step, which receives the whole step: after batches a, b the covariance is
    beta (1 - beta) B_a + (1 - beta) B_b, from zero."""
    criterion = build_criterion(TiCoParams(dim=6)).double()
    batches = [(unit(8, 6, seed=s), unit(8, 6, seed=s + 10)) for s in (1, 2)]
    for z_1, z_2 in batches:
        step = PairStep([z_1, None], [None, z_2])
        criterion.after_step(step, criterion(*step))
    (a, _), (b, _) = batches
    expected = 0.9 * 0.1 * batch_covariance(a) + 0.1 * batch_covariance(b)
    assert torch.allclose(criterion.covariance, expected, rtol=1e-12, atol=1e-15)
    assert torch.allclose(batch_covariance(a).trace(), torch.tensor(1.0, dtype=torch.float64))  # unit rows


def test_the_criterion_equals_lightlys_tico_loss_over_steps():
    """lightly's TiCoLoss is 1 - cos + rho z^T C z with the same running covariance: ours is the same minus 1, step
    after step (float64)."""
    lightly_loss = pytest.importorskip("lightly.loss")
    reference = lightly_loss.TiCoLoss(beta=0.9, rho=20.0)
    criterion = build_criterion(TiCoParams(dim=16)).double()
    for seed in range(3):
        z_1, z_2 = 3 * unit(32, 16, seed=seed), unit(32, 16, seed=seed + 100)  # unnormalized queries normalize too
        step = PairStep([z_1, None], [None, z_2])
        out = criterion(*step)
        criterion.after_step(step, out)
        assert out.loss.item() == pytest.approx(reference(z_1, z_2).item() - 1, rel=1e-6, abs=1e-12)
        assert torch.allclose(criterion.covariance, reference.C, rtol=1e-12, atol=1e-15)


def test_the_gradient_includes_this_batchs_covariance_term():
    """The paper's Algorithm 1 detaches the covariance only after the step, so this batch's own term carries gradient:
    the gradient is that of the loss with the covariance held constant plus that of rho (1 - beta) mean_i
    z_i^T B(z) z_i through B alone (lightly's TiCoLoss drops the second part)."""
    z_1, z_2 = unit(6, 4, seed=3).requires_grad_(), unit(6, 4, seed=4)
    beta, rho = 0.5, 2.0
    (full,) = torch.autograd.grad(tico_loss(z_1, z_2, torch.zeros(4, 4, dtype=torch.float64), beta, rho)["loss"], z_1)
    n = F.normalize(z_1, dim=1)
    held = -(n * z_2).sum(1).mean() + rho * ((n @ ((1 - beta) * batch_covariance(z_1).detach())) * n).sum(1).mean()
    through_b = rho * (1 - beta) * ((n.detach() @ batch_covariance(z_1)) * n.detach()).sum(1).mean()
    (constant,) = torch.autograd.grad(held, z_1)
    (term,) = torch.autograd.grad(through_b, z_1)
    assert torch.allclose(full, constant + term, rtol=1e-12, atol=1e-14)
    assert term.norm() > 1e-3 * constant.norm()
