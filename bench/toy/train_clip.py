"""Train the toy open_clip model: each image against all 120 captions of the world (softmax over captions).

Every caption of the world is a class, so the contrastive loss has no false negatives; half of each
batch is blurred (2x down and up) so the scorer also reads the softer images the diffusion model draws.
"""

from __future__ import annotations

from collections.abc import Callable

import open_clip
import torch

from bench.metrics.toy_clip import new_clip
from bench.toy.architecture import CLIP
from bench.toy.clip import round_to_fp16
from bench.toy.data import CAPTIONS, ToySet, to_unit_range
from bench.toy.schedule import FitSettings, fit


def blur_half(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """x [B, 3, S, S]: a random half of the images go through 2x average-pool and bilinear upsampling."""
    soft = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, 2), scale_factor=2, mode="bilinear")
    pick = (torch.rand(len(x), generator=gen) < 0.5).view(-1, 1, 1, 1)
    return torch.where(pick, soft, x)


def train_clip(
    data: ToySet,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    log: Callable[[str], None] = print,
) -> tuple[open_clip.CLIP, dict]:
    """Train a new toy CLIP."""
    torch.manual_seed(seed)
    model = new_clip(CLIP).train()
    gen = torch.Generator().manual_seed(seed)
    tokens = open_clip.tokenize(CAPTIONS)  # [120, 77]

    def loss_at(step: int) -> torch.Tensor:
        idx = torch.randint(len(data), (batch_size,), generator=gen)
        x = blur_half(to_unit_range(data.images[idx]), gen)
        x = x + 0.03 * torch.randn(x.shape, generator=gen)
        img = torch.nn.functional.normalize(model.encode_image(x), dim=-1)  # [B, E]
        txt = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)  # [120, E]
        logits = model.logit_scale.exp() * img @ txt.T  # [B, 120]
        return torch.nn.functional.cross_entropy(logits, data.caption_ids[idx])

    @torch.no_grad()
    def clamp_scale() -> None:
        model.logit_scale.clamp_(0, 4.6052)  # as open_clip: scale <= 100

    params = list(model.parameters())
    warmup = min(100, steps // 10 + 1)
    settings = FitSettings(steps, lr, warmup, weight_decay=0.05, ema_decay=0.998)
    losses = fit("clip", params, loss_at, settings, log=log, after_step=clamp_scale)
    model.eval().requires_grad_(False)
    round_to_fp16(model)
    return model, {"steps": steps, "batch_size": batch_size, "lr": lr, "final_loss": losses[-1]}
