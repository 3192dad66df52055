"""Learning-rate and weight-decay schedules, evaluated per optimizer step."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional

import torch


class WarmupCosineSchedule:
    """Learning-rate factor per optimizer step: linear warmup over ``warmup_steps`` up to 1, then cosine decay to
    ``final_factor`` at ``total_steps`` (for torch.optim.lr_scheduler.LambdaLR, stepped every optimizer step)."""

    def __init__(self, warmup_steps: int, total_steps: int, final_factor: float) -> None:
        self.warmup_steps = warmup_steps
        self.cosine = CosineValue(1.0, final_factor, total_steps - warmup_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return self.cosine(step - self.warmup_steps)


class CosineValue:
    """A value per optimizer step on a cosine from ``start`` to ``end`` over ``total_steps`` steps (DINO's weight-decay
    schedule)."""

    def __init__(self, start: float, end: float, total_steps: int) -> None:
        self.start, self.end, self.total_steps = start, end, total_steps

    def __call__(self, step: int) -> float:
        progress = min(step / max(self.total_steps, 1), 1.0)
        return self.end + (self.start - self.end) * (1 + math.cos(math.pi * progress)) / 2


class LrAndWeightDecaySchedule(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR that also sets, at every step, the weight decay of each group that has one to ``weight_decay(step)``
    (groups without weight decay keep 0). With ``weight_decay`` None it is LambdaLR."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr_lambdas: List[Callable[[int], float]],
                 weight_decay: Optional[Callable[[int], float]] = None) -> None:
        self.weight_decay = weight_decay
        super().__init__(optimizer, lr_lambdas)

    def step(self, epoch: Optional[int] = None) -> None:
        super().step(epoch)
        if self.weight_decay is not None:
            value = self.weight_decay(self.last_epoch)
            for group in self.optimizer.param_groups:
                if group["weight_decay"] > 0:
                    group["weight_decay"] = value

    # The lr lambdas and the weight-decay schedule are rebuilt from the params and the Trainer, never restored: a run
    # resumed with a larger max_epochs follows its new schedule (LambdaLR would otherwise restore the old total steps
    # and hold the final lr), and an exact resume rebuilds the same schedule.
    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state.pop("weight_decay", None)
        state["lr_lambdas"] = [None] * len(self.lr_lambdas)
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict({**state_dict, "lr_lambdas": [None] * len(self.lr_lambdas)})
