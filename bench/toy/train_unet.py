"""Train the toy UNet2DConditionModel and its CLIPTextModel together on VAE latents of toy scenes.

Epsilon prediction on SD1.5's noise schedule, min-SNR-5 loss weights (Hang et al. 2023), 10% of
captions replaced by "" (classifier-free guidance), EMA of the weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel

from bench.tokenizer import ClipBpeTokenizer
from bench.toy.architecture import new_scheduler, new_text_encoder, new_unet
from bench.toy.data import CAPTIONS, ToySet, to_unit_range
from bench.toy.schedule import EMA, lr_at, set_lr


@torch.no_grad()
def encode_posteriors(vae: AutoencoderKL, data: ToySet, batch: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std [N, 4, h, w] of every image (the UNet samples from them each step)."""
    means, stds = [], []
    for i in range(0, len(data), batch):
        dist = vae.encode(to_unit_range(data.images[i : i + batch])).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def train_unet(
    data: ToySet,
    vae: AutoencoderKL,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    caption_dropout: float = 0.1,
    snr_gamma: float = 5.0,
    init: tuple[UNet2DConditionModel, CLIPTextModel] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[UNet2DConditionModel, CLIPTextModel, dict]:
    """Train a new UNet and text encoder, or continue `init` (a warm restart of the schedule)."""
    torch.manual_seed(seed)
    unet, text_encoder = init if init is not None else (new_unet(), new_text_encoder())
    unet, text_encoder = unet.train().requires_grad_(True), text_encoder.train().requires_grad_(True)
    scheduler = new_scheduler()
    alphas_bar = scheduler.alphas_cumprod  # [1000]
    tokens = ClipBpeTokenizer()([*CAPTIONS, ""])  # [121, 77]; row 120 is the unconditional prompt
    mean, std = encode_posteriors(vae, data)
    scale = vae.config.scaling_factor
    gen = torch.Generator().manual_seed(seed)
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    ema = EMA(params, decay=0.999)
    start, losses = time.time(), []
    for step in range(steps):
        set_lr(opt, lr_at(step, steps, lr, warmup=min(200, steps // 10 + 1)))
        idx = torch.randint(len(data), (batch_size,), generator=gen)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * scale  # [B, 4, h, w]
        t = torch.randint(0, len(alphas_bar), (batch_size,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        zt = scheduler.add_noise(z0, noise, t)
        drop = torch.rand(batch_size, generator=gen) < caption_dropout
        ids = tokens[torch.where(drop, len(CAPTIONS), data.caption_ids[idx])]  # [B, 77]
        eps = unet(zt, t, encoder_hidden_states=text_encoder(ids)[0]).sample
        snr = alphas_bar[t] / (1 - alphas_bar[t])
        weight = snr.clamp(max=snr_gamma) / snr  # min-SNR-gamma for epsilon prediction
        loss = (weight * (eps - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            recent = losses[-100:]
            log(f"unet step {step}/{steps} loss {sum(recent) / len(recent):.5f} {time.time() - start:.0f}s")
    ema.copy_to_params()
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    info = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "caption_dropout": caption_dropout,
        "snr_gamma": snr_gamma,
        "final_loss": losses[-1],
    }
    return unet, text_encoder, info
