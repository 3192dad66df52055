"""BatchRenorm1d against nn.BatchNorm1d at step 0, the r_max/d_max ramps, and hand computations of the clipping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from selfsup.nn.batchrenorm import BatchRenorm1d, d_max, r_max


def _batch(n: int = 16, c: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=torch.float64) * 2 + 1


@pytest.mark.parametrize("shape", [(16, 3), (8, 3, 5)])
def test_equals_batchnorm_at_step_zero(shape: tuple) -> None:
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64) * 3 + 2
    brn = BatchRenorm1d(3, eps=1e-5, momentum=0.01).double()
    bn = nn.BatchNorm1d(3, eps=1e-5, momentum=0.01).double()
    with torch.no_grad():  # non-trivial affine parameters, identical in both
        for m in (brn, bn):
            m.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
            m.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    torch.testing.assert_close(brn(x), bn(x))
    torch.testing.assert_close(brn.running_mean, bn.running_mean)
    torch.testing.assert_close(brn.running_var, bn.running_var)  # unbiased batch variance, as in BN
    assert brn.num_batches_tracked.item() == 1


@pytest.mark.parametrize(
    "step, expected_r_max, expected_d_max",
    [
        (0, 1.0, 0.0),
        (5000, 1.0, 0.0),  # both still at their t=0 values
        (15000, 55 / 35, 2.5),  # r_max = 2*15000/35000 + 25/35
        (22500, 2.0, 4.375),
        (25000, 2.0 + 1 / 7, 5.0),  # d_max reaches its cap
        (40000, 3.0, 5.0),  # r_max reaches its cap; d_max would be 8.75 uncapped
        (1_000_000, 3.0, 5.0),
    ],
)
def test_ramps(step: int, expected_r_max: float, expected_d_max: float) -> None:
    assert r_max(torch.tensor(step)).item() == pytest.approx(expected_r_max, abs=1e-6)
    assert d_max(torch.tensor(step)).item() == pytest.approx(expected_d_max, abs=1e-6)


def test_ramp_breakpoints_are_exact() -> None:
    steps = torch.tensor([0, 5000, 22500, 25000, 40000])
    assert torch.equal(r_max(steps), torch.tensor([1.0, 1.0, 2.0, 2.0 + 1 / 7, 3.0]))
    assert torch.equal(d_max(steps), torch.tensor([0.0, 0.0, 4.375, 5.0, 5.0]))


def test_step_counter_advances_on_train_forwards_only() -> None:
    brn = BatchRenorm1d(3).double()
    x = _batch()
    brn(x)
    brn(x)
    brn.eval()
    brn(x)
    assert brn.num_batches_tracked.item() == 2


def test_r_and_d_are_clipped_after_the_ramp() -> None:
    x = _batch(c=3)
    mu_b = x.mean(0)
    sigma_b = torch.sqrt(x.var(0, unbiased=False) + 1e-5)
    brn = BatchRenorm1d(3, eps=1e-5).double()
    weight, bias = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([0.3, -0.2, 0.1])
    with torch.no_grad():
        brn.weight.copy_(weight)
        brn.bias.copy_(bias)
        brn.num_batches_tracked.fill_(1_000_000)  # r_max = 3, d_max = 5
        # Channel 0: tiny running std, mean far below -> r = 3, d = +5.
        # Channel 1: huge running std, mean far above -> r = 1/3, d = -5.
        # Channel 2: inside the bounds: sigma = sigma_B / 1.5 -> r = 1.5; mean 0.5 sigma below -> d = 0.5.
        sigma2 = sigma_b[2] / 1.5
        brn.running_mean.copy_(torch.stack([mu_b[0] - 1e3, mu_b[1] + 1e6, mu_b[2] - 0.5 * sigma2]))
        brn.running_var.copy_(torch.tensor([1e-4, 1e4, (sigma2**2 - 1e-5).item()]))
    running_mean, running_var = brn.running_mean.clone(), brn.running_var.clone()

    y = brn(x)
    r = torch.tensor([3.0, 1 / 3, 1.5], dtype=torch.float64)
    d = torch.tensor([5.0, -5.0, 0.5], dtype=torch.float64)
    expected = weight * ((x - mu_b) / sigma_b * r + d) + bias
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(brn.running_mean, running_mean + 0.01 * (mu_b - running_mean))
    torch.testing.assert_close(brn.running_var, running_var + 0.01 * (x.var(0, unbiased=True) - running_var))


def test_eval_mode_uses_running_statistics() -> None:
    x = _batch()
    brn = BatchRenorm1d(3, eps=1e-3).double().eval()
    with torch.no_grad():
        brn.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5]))
        brn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
        brn.weight.copy_(torch.tensor([2.0, 1.0, -1.0]))
        brn.bias.copy_(torch.tensor([0.0, 1.0, 3.0]))
    expected = brn.weight * (x - brn.running_mean) / torch.sqrt(brn.running_var + 1e-3) + brn.bias
    torch.testing.assert_close(brn(x), expected)
    assert brn.num_batches_tracked.item() == 0
    torch.testing.assert_close(brn.running_mean, torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))


def test_without_affine_has_no_parameters() -> None:
    brn = BatchRenorm1d(3, affine=False).double()
    assert list(brn.parameters()) == []
    x = _batch()
    torch.testing.assert_close(brn(x), (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5))


def test_gradients_treat_r_and_d_as_constants() -> None:
    x = _batch(c=2).requires_grad_()
    upstream = _batch(c=2, seed=1)
    brn = BatchRenorm1d(2).double()
    with torch.no_grad():
        brn.weight.copy_(torch.tensor([1.5, -2.0]))
        brn.bias.copy_(torch.tensor([0.5, 0.25]))
        brn.num_batches_tracked.fill_(1_000_000)
        # Unclipped r and d (r = 1.25 and d = 0.4 roughly), so the stop-gradient is what matters, not the clamp.
        brn.running_mean.copy_(x.mean(0) - 0.4 * x.std(0, unbiased=False) / 1.25)
        brn.running_var.copy_(x.var(0, unbiased=False) / 1.25**2)
    running_mean, running_var = brn.running_mean.clone(), brn.running_var.clone()
    (brn(x) * upstream).sum().backward()

    def formula(x: torch.Tensor, detach: bool) -> torch.Tensor:
        mu_b = x.mean(0)
        sigma_b = torch.sqrt(x.var(0, unbiased=False) + 1e-5)
        sigma = torch.sqrt(running_var + 1e-5)
        r, d = sigma_b / sigma, (mu_b - running_mean) / sigma
        if detach:
            r, d = r.detach(), d.detach()
        return brn.weight.detach() * ((x - mu_b) / sigma_b * r + d) + brn.bias.detach()

    x_ref = x.detach().clone().requires_grad_()
    (formula(x_ref, detach=True) * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)

    # With stop-gradient the input gradient is plain BN's gradient scaled by r per channel.
    x_bn = x.detach().clone().requires_grad_()
    (
        nn.functional.batch_norm(x_bn, None, None, brn.weight.detach(), None, training=True, eps=1e-5) * upstream
    ).sum().backward()
    r = torch.sqrt(x.detach().var(0, unbiased=False) + 1e-5) / torch.sqrt(running_var + 1e-5)
    torch.testing.assert_close(x.grad, x_bn.grad * r)

    # Differentiating through r and d would give a different gradient, so the check above is not vacuous.
    x_full = x.detach().clone().requires_grad_()
    (formula(x_full, detach=False) * upstream).sum().backward()
    assert not torch.allclose(x.grad, x_full.grad)

    x_hat = formula(x.detach(), detach=True).sub(brn.bias.detach()).div(brn.weight.detach())
    torch.testing.assert_close(brn.weight.grad, (upstream * x_hat).sum(0))
    torch.testing.assert_close(brn.bias.grad, upstream.sum(0))


def test_rejects_single_value_per_channel_in_training() -> None:
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchRenorm1d(3)(torch.randn(1, 3))


def test_state_dict_holds_the_buffers() -> None:
    assert set(BatchRenorm1d(3).state_dict()) == {
        "weight",
        "bias",
        "running_mean",
        "running_var",
        "num_batches_tracked",
    }
