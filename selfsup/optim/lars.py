"""LARS: layer-wise adaptive rate scaling.

Provenance: Y. You, I. Gitman, B. Ginsburg, "Large Batch Training of Convolutional Networks", arXiv:1708.03888
(Algorithm 1), written from the paper's formulas. Two deliberate differences from the paper (see methods.md 3.1):
momentum is PyTorch's convention (w -= lr * buf, buf = m * buf + d, exactly like ``torch.optim.SGD``), and the trust
ratio is 1 when either norm is 0, so zero-initialised parameters still move and a zero gradient never gives NaN.
There is no warmup here: the training module drives ``lr`` with a per-step LR scheduler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT


def _validate(hparams: dict[str, Any]) -> None:
    """Raise ValueError naming the first out-of-range hyperparameter among those present in ``hparams``."""
    if "lr" in hparams and not hparams["lr"] > 0:
        raise ValueError(f"Invalid lr: {hparams['lr']} (must be > 0)")
    if "momentum" in hparams and not 0 <= hparams["momentum"] < 1:
        raise ValueError(f"Invalid momentum: {hparams['momentum']} (must be in [0, 1))")
    if "weight_decay" in hparams and not hparams["weight_decay"] >= 0:
        raise ValueError(f"Invalid weight_decay: {hparams['weight_decay']} (must be >= 0)")
    if "eta" in hparams and not hparams["eta"] > 0:
        raise ValueError(f"Invalid eta: {hparams['eta']} (must be > 0)")


def _trust_ratios(params: list[Tensor], grads: list[Tensor], weight_decay: float, eta: float) -> list[Tensor]:
    """Per-tensor trust ratio eta*||w|| / (||g|| + wd*||w||), or 1 where either norm is 0.

    Returns one 0-d tensor per parameter, on that parameter's device; nothing is read back to the host.
    """
    trust_of: dict[int, Tensor] = {}
    # torch.stack needs one device, so vectorise per device (a single bucket in the usual single-device case).
    by_device: dict[torch.device, list[int]] = {}
    for i, p in enumerate(params):
        by_device.setdefault(p.device, []).append(i)
    for idx in by_device.values():
        w_norm = torch.stack(torch._foreach_norm([params[i] for i in idx]))  # [n]
        g_norm = torch.stack(torch._foreach_norm([grads[i] for i in idx]))  # [n]
        ratio = eta * w_norm / (g_norm + weight_decay * w_norm)
        # torch.where rather than a Python branch: keeps the choice on the device and discards the 0/0 NaN.
        trust = torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))
        trust_of.update(zip(idx, trust.unbind(), strict=True))
    return [trust_of[i] for i in range(len(params))]


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose per-tensor update is rescaled by the LARS trust ratio.

    For each parameter w with gradient g: d = g + wd*w; if the group's ``use_lars`` is True,
    d *= eta*||w|| / (||g|| + wd*||w||) (1 if either norm is 0); then buf = momentum*buf + d (buf = d on the first
    step) and w -= lr*buf. Groups may override ``lr``, ``momentum``, ``weight_decay``, ``eta`` and ``use_lars``;
    set ``use_lars=False, weight_decay=0`` on biases and norm parameters to exclude them (the group is then plain SGD).

    Args:
        params: parameters or param-group dicts.
        lr: learning rate (> 0), usually driven per step by an LR scheduler.
        momentum: momentum factor in [0, 1); 0 keeps no buffer, like SGD.
        weight_decay: L2 penalty coefficient (>= 0), added to the gradient before trust scaling.
        eta: trust coefficient (> 0).
    """

    def __init__(
        self, params: ParamsT, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 1e-3
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, use_lars=True)
        _validate(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group, validating the hyperparameters it overrides."""
        _validate(param_group)
        super().add_param_group(param_group)

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]

            # New tensors, never in-place on .grad: callers (and gradient accumulation) may still read the gradients.
            updates: tuple[Tensor, ...] | list[Tensor]
            if weight_decay != 0:
                updates = torch._foreach_add(grads, params, alpha=weight_decay)
            else:
                updates = [g.clone() for g in grads]
            if group["use_lars"]:
                torch._foreach_mul_(updates, _trust_ratios(params, grads, weight_decay, group["eta"]))

            if momentum != 0:
                bufs, old_bufs, old_updates = [], [], []
                for p, d in zip(params, updates, strict=True):
                    state = self.state[p]
                    if "momentum_buffer" in state:
                        old_bufs.append(state["momentum_buffer"])
                        old_updates.append(d)
                    else:
                        # First step: buf = d (dampening 0), so momentum starts exactly like torch.optim.SGD.
                        state["momentum_buffer"] = d
                    bufs.append(state["momentum_buffer"])
                if old_bufs:
                    torch._foreach_mul_(old_bufs, momentum)
                    torch._foreach_add_(old_bufs, old_updates)
                updates = bufs
            torch._foreach_add_(params, updates, alpha=-lr)

        return loss
