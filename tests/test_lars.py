"""LARS against hand computations (methods.md 3.1) and against torch.optim.SGD for excluded groups."""

from __future__ import annotations

import copy

import pytest
import torch

from selfsup.optim.lars import LARS


def _param(values: list[float]) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor(values, dtype=torch.float64))


def _step_with_grad(opt: torch.optim.Optimizer, p: torch.nn.Parameter, grad: list[float]) -> None:
    p.grad = torch.tensor(grad, dtype=p.dtype)
    opt.step()


@pytest.mark.parametrize(
    "weight_decay, expected_trust",
    [
        (0.0, 1e-3 * 5 / 1),  # eta*||w|| / ||g|| = 1e-3 * 5 / 1
        (0.1, 1e-3 * 5 / (1 + 0.1 * 5)),  # = .00333..., and d = g + .1 w = [.9, 1.2]
    ],
)
def test_single_step_matches_methods_md_check(weight_decay: float, expected_trust: float) -> None:
    p = _param([3.0, 4.0])
    opt = LARS([p], lr=1.0, momentum=0.0, weight_decay=weight_decay, eta=1e-3)
    _step_with_grad(opt, p, [0.6, 0.8])
    d = torch.tensor([0.6, 0.8], dtype=torch.float64) + weight_decay * torch.tensor([3.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(p.detach(), torch.tensor([3.0, 4.0], dtype=torch.float64) - expected_trust * d)
    # Both settings give the same w' of the methods.md check.
    torch.testing.assert_close(p.detach(), torch.tensor([2.997, 3.996], dtype=torch.float64), atol=1e-6, rtol=0)
    assert opt.state[p] == {}  # momentum 0 keeps no buffer, like SGD


def test_trust_ratio_with_weight_decay_is_one_third_of_a_percent() -> None:
    p = _param([3.0, 4.0])
    opt = LARS([p], lr=1.0, momentum=0.0, weight_decay=0.1)
    _step_with_grad(opt, p, [0.6, 0.8])
    update = torch.tensor([3.0, 4.0], dtype=torch.float64) - p.detach()
    torch.testing.assert_close(update, torch.tensor([0.003, 0.004], dtype=torch.float64))
    torch.testing.assert_close(
        update / torch.tensor([0.9, 1.2], dtype=torch.float64), torch.full((2,), 1 / 300.0, dtype=torch.float64)
    )


def test_momentum_buffer_after_two_steps() -> None:
    p = _param([3.0, 4.0])
    opt = LARS([p], lr=0.5, momentum=0.9, eta=1e-3)
    _step_with_grad(opt, p, [0.6, 0.8])  # trust 1e-3*5/1 = .005, buf1 = d1 = [.003, .004]
    buf1 = torch.tensor([0.003, 0.004], dtype=torch.float64)
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf1)
    w1 = torch.tensor([3.0, 4.0], dtype=torch.float64) - 0.5 * buf1
    torch.testing.assert_close(p.detach(), w1)

    _step_with_grad(opt, p, [0.0, 2.0])  # ||w1|| = 5 - .5*.005 = 4.9975, ||g2|| = 2
    d2 = 1e-3 * 4.9975 / 2 * torch.tensor([0.0, 2.0], dtype=torch.float64)
    buf2 = 0.9 * buf1 + d2
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf2)
    torch.testing.assert_close(p.detach(), w1 - 0.5 * buf2)


@pytest.mark.parametrize("momentum, weight_decay", [(0.9, 1e-4), (0.0, 0.0), (0.5, 0.0)])
def test_non_lars_group_is_sgd(momentum: float, weight_decay: float) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    reference = copy.deepcopy(model)
    opt = LARS(
        [{"params": model.parameters(), "use_lars": False}], lr=0.1, momentum=momentum, weight_decay=weight_decay
    )
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay)
    for _ in range(5):
        x = torch.randn(8, 5)  # a new batch each step, so the gradients change
        for m, o in ((model, opt), (reference, sgd)):
            o.zero_grad()
            m(x).pow(2).mean().backward()
            o.step()
        for p, q in zip(model.parameters(), reference.parameters(), strict=True):
            assert torch.equal(p, q)  # bit-for-bit: same ops in the same order


def test_groups_override_weight_decay_and_use_lars() -> None:
    w, b = _param([3.0, 4.0]), _param([1.0, -1.0])
    opt = LARS(
        [{"params": [w]}, {"params": [b], "use_lars": False, "weight_decay": 0.0}],
        lr=1.0,
        momentum=0.0,
        weight_decay=0.1,
    )
    w.grad = torch.tensor([0.6, 0.8], dtype=torch.float64)
    b.grad = torch.tensor([0.5, 0.25], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([2.997, 3.996], dtype=torch.float64))
    torch.testing.assert_close(b.detach(), torch.tensor([0.5, -1.25], dtype=torch.float64))  # plain b - lr*g


def test_zero_norm_parameter_moves_with_trust_one() -> None:
    p = _param([0.0, 0.0])
    opt = LARS([p], lr=0.1, momentum=0.0, weight_decay=0.1)
    _step_with_grad(opt, p, [1.0, -2.0])
    # ||w|| = 0 would give trust 0 (frozen forever); trust 1 gives the plain SGD step.
    torch.testing.assert_close(p.detach(), torch.tensor([-0.1, 0.2], dtype=torch.float64))


def test_zero_gradient_without_weight_decay_gives_no_nan() -> None:
    p = _param([3.0, 4.0])
    opt = LARS([p], lr=1.0, momentum=0.9, weight_decay=0.0)
    _step_with_grad(opt, p, [0.0, 0.0])  # 0 / (0 + 0) without the guard
    assert torch.equal(p.detach(), torch.tensor([3.0, 4.0], dtype=torch.float64))
    assert torch.equal(opt.state[p]["momentum_buffer"], torch.zeros(2, dtype=torch.float64))


def test_params_without_grad_are_skipped() -> None:
    p, frozen = _param([3.0, 4.0]), _param([1.0, 2.0])
    opt = LARS([p, frozen], lr=1.0)
    _step_with_grad(opt, p, [0.6, 0.8])
    assert torch.equal(frozen.detach(), torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert frozen not in opt.state


def test_gradient_is_not_modified() -> None:
    p = _param([3.0, 4.0])
    opt = LARS([p], lr=1.0, weight_decay=0.1)
    _step_with_grad(opt, p, [0.6, 0.8])
    assert torch.equal(p.grad, torch.tensor([0.6, 0.8], dtype=torch.float64))


def test_state_dict_round_trip_continues_identically() -> None:
    torch.manual_seed(0)
    grads = [torch.randn(3, 2) for _ in range(6)]
    w = torch.nn.Parameter(torch.randn(3, 2))
    opt = LARS([w], lr=0.1, momentum=0.9, weight_decay=1e-2)
    for g in grads[:3]:
        w.grad = g.clone()
        opt.step()

    w2 = torch.nn.Parameter(w.detach().clone())
    opt2 = LARS([w2], lr=0.5, momentum=0.1)  # different hyperparameters, overwritten by the state dict
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert opt2.param_groups[0]["lr"] == 0.1 and opt2.param_groups[0]["weight_decay"] == 1e-2
    torch.testing.assert_close(opt2.state[w2]["momentum_buffer"], opt.state[w]["momentum_buffer"], atol=0, rtol=0)
    for g in grads[3:]:
        for p, o in ((w, opt), (w2, opt2)):
            p.grad = g.clone()
            o.step()
        assert torch.equal(w, w2)


def test_step_with_closure_returns_loss_and_uses_its_gradient() -> None:
    p = _param([3.0, 4.0])
    opt = LARS([p], lr=1.0, momentum=0.0)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (p * torch.tensor([0.6, 0.8], dtype=torch.float64)).sum()  # gradient [.6, .8]
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss is not None and loss.item() == pytest.approx(0.6 * 3 + 0.8 * 4)
    torch.testing.assert_close(p.detach(), torch.tensor([2.997, 3.996], dtype=torch.float64))


def test_multiple_tensors_get_their_own_trust_ratio() -> None:
    a, b = _param([3.0, 4.0]), _param([0.0, 1.0, 0.0])
    opt = LARS([a, b], lr=1.0, momentum=0.0, eta=0.1)
    a.grad = torch.tensor([0.6, 0.8], dtype=torch.float64)  # trust .1 * 5 / 1 = .5
    b.grad = torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)  # trust .1 * 1 / 2 = .05
    opt.step()
    torch.testing.assert_close(a.detach(), torch.tensor([2.7, 3.6], dtype=torch.float64))
    torch.testing.assert_close(b.detach(), torch.tensor([-0.1, 1.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(lr=0.0), "lr"),
        (dict(lr=-1.0), "lr"),
        (dict(lr=1.0, momentum=1.0), "momentum"),
        (dict(lr=1.0, momentum=-0.1), "momentum"),
        (dict(lr=1.0, weight_decay=-1e-4), "weight_decay"),
        (dict(lr=1.0, eta=0.0), "eta"),
    ],
)
def test_invalid_arguments_raise_naming_the_argument(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"^Invalid {name}:"):
        LARS([_param([1.0])], **kwargs)


def test_invalid_group_override_raises() -> None:
    with pytest.raises(ValueError, match="^Invalid weight_decay:"):
        LARS([{"params": [_param([1.0])], "weight_decay": -1.0}], lr=1.0)


def test_step_never_reads_tensors_back_to_the_host() -> None:
    # Meta tensors have no data: any .item()/bool()/float() in step() would raise, so this pins "no host sync".
    w = torch.nn.Parameter(torch.empty(3, 4, device="meta"))
    b = torch.nn.Parameter(torch.empty(4, device="meta"))
    opt = LARS([{"params": [w]}, {"params": [b], "use_lars": False}], lr=0.1, weight_decay=1e-2)
    for _ in range(2):
        w.grad, b.grad = torch.empty_like(w), torch.empty_like(b)
        opt.step()
    assert opt.state[w]["momentum_buffer"].shape == (3, 4)
