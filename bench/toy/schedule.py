"""The training loop the three toy trainers share: AdamW, warmup + cosine learning rate, EMA weights."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class FitSettings:
    """How `fit` optimises: AdamW over `steps`, linear warmup then cosine decay from `lr`, EMA of the weights."""

    steps: int
    lr: float
    warmup: int  # steps of linear warmup to `lr`
    weight_decay: float
    ema_decay: float
    clip_norm: float | None = None  # the gradient norm's cap; None: no clipping


def fit(
    name: str,
    params: list[torch.nn.Parameter],
    loss_at: Callable[[int], torch.Tensor],
    settings: FitSettings,
    log: Callable[[str], None],
    after_step: Callable[[], None] | None = None,
) -> list[float]:
    """Minimise `loss_at(step)` (which draws its own batch) over `params`; leaves the EMA weights in `params`.

    Returns the loss of every step. `after_step` runs after each optimiser step, before the EMA update.
    """
    steps, lr = settings.steps, settings.lr
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=settings.weight_decay)
    ema = EMA(params, decay=settings.ema_decay)
    start, losses = time.time(), []
    for step in range(steps):
        set_lr(opt, lr_at(step, steps, lr, warmup=settings.warmup))
        loss = loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if settings.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, settings.clip_norm)
        opt.step()
        if after_step is not None:
            after_step()
        ema.update()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            recent = losses[-100:]
            log(f"{name} step {step}/{steps} loss {sum(recent) / len(recent):.5f} {time.time() - start:.0f}s")
    ema.copy_to_params()
    return losses
