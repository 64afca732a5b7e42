"""Training utilities shared by the three toy trainers: learning-rate schedule, EMA, determinism."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def lr_at(step: int, steps: int, lr: float, warmup: int, floor: float = 0.05) -> float:
    """Linear warmup to `lr`, then cosine decay to `floor * lr` at the last step."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


class EMA:
    """Exponential moving average of parameters, decay min(decay, (1 + n) / (10 + n)) at update n."""

    def __init__(self, params: Iterable[torch.nn.Parameter], decay: float = 0.999):
        self.params = list(params)
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for s, p in zip(self.shadow, self.params, strict=True):
            s.mul_(d).add_(p.detach(), alpha=1 - d)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for s, p in zip(self.shadow, self.params, strict=True):
            p.copy_(s)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
