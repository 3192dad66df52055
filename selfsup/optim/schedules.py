"""Learning-rate schedules, evaluated per optimizer step."""

from __future__ import annotations

import math


class WarmupCosineSchedule:
    """Learning-rate factor per optimizer step: linear warmup over ``warmup_steps`` up to 1, then cosine decay to
    ``final_factor`` at ``total_steps`` (for torch.optim.lr_scheduler.LambdaLR, stepped every optimizer step)."""

    def __init__(self, warmup_steps: int, total_steps: int, final_factor: float) -> None:
        self.warmup_steps, self.total_steps, self.final_factor = warmup_steps, total_steps, final_factor

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 1.0)
        return self.final_factor + (1 - self.final_factor) * (1 + math.cos(math.pi * progress)) / 2
