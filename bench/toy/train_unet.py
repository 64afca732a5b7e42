"""Train the toy UNet2DConditionModel and its CLIPTextModel together on VAE latents of toy scenes.

Epsilon prediction on SD1.5's noise schedule, min-SNR-5 loss weights (Hang et al. 2023), 10% of
captions replaced by "" (classifier-free guidance), EMA of the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel

from bench.sd.tokenizer import ClipBpeTokenizer
from bench.toy.architecture import new_scheduler, new_text_encoder, new_unet
from bench.toy.data import CAPTIONS, ToySet, to_unit_range
from bench.toy.schedule import FitSettings, fit


@torch.no_grad()
def encode_posteriors(vae: AutoencoderKL, data: ToySet, batch: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std [N, 4, h, w] of every image (the UNet samples from them each step)."""
    means, stds = [], []
    for i in range(0, len(data), batch):
        dist = vae.encode(to_unit_range(data.images[i : i + batch])).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


@dataclass(frozen=True)
class UNetTraining:
    """The UNet stage's settings (bench/toy/train.py FULL and QUICK: "unet")."""

    steps: int
    batch_size: int
    lr: float
    seed: int
    caption_dropout: float = 0.1  # the fraction of captions replaced by "" (classifier-free guidance)
    snr_gamma: float = 5.0  # the min-SNR loss weight's cap


def train_unet(
    data: ToySet, vae: AutoencoderKL, settings: UNetTraining, log: Callable[[str], None] = print
) -> tuple[UNet2DConditionModel, CLIPTextModel, dict]:
    """Train a new UNet and text encoder together."""
    torch.manual_seed(settings.seed)
    unet, text_encoder = new_unet().train(), new_text_encoder().train()
    loss_at = denoising_loss(data, vae, unet, text_encoder, settings)
    params = [*unet.parameters(), *text_encoder.parameters()]
    warmup = min(200, settings.steps // 10 + 1)
    fit_settings = FitSettings(settings.steps, settings.lr, warmup, weight_decay=0.01, ema_decay=0.999, clip_norm=1.0)
    losses = fit("unet", params, loss_at, fit_settings, log=log)
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    info = {
        "steps": settings.steps,
        "batch_size": settings.batch_size,
        "lr": settings.lr,
        "caption_dropout": settings.caption_dropout,
        "snr_gamma": settings.snr_gamma,
        "final_loss": losses[-1],
    }
    return unet, text_encoder, info


def denoising_loss(
    data: ToySet,
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    settings: UNetTraining,
) -> Callable[[int], torch.Tensor]:
    """loss_at(step): the min-SNR-weighted epsilon loss of one batch, drawn from a generator seeded once here."""
    scheduler = new_scheduler()
    alphas_bar = scheduler.alphas_cumprod  # [1000]
    tokens = ClipBpeTokenizer()([*CAPTIONS, ""])  # [121, 77]; row 120 is the unconditional prompt
    mean, std = encode_posteriors(vae, data)
    scale = vae.config.scaling_factor
    gen = torch.Generator().manual_seed(settings.seed)
    batch_size = settings.batch_size

    def loss_at(step: int) -> torch.Tensor:
        idx = torch.randint(len(data), (batch_size,), generator=gen)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * scale  # [B, 4, h, w]
        t = torch.randint(0, len(alphas_bar), (batch_size,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        zt = scheduler.add_noise(z0, noise, t)
        drop = torch.rand(batch_size, generator=gen) < settings.caption_dropout
        ids = tokens[torch.where(drop, len(CAPTIONS), data.caption_ids[idx])]  # [B, 77]
        eps = unet(zt, t, encoder_hidden_states=text_encoder(ids)[0]).sample
        snr = alphas_bar[t] / (1 - alphas_bar[t])
        weight = snr.clamp(max=settings.snr_gamma) / snr  # min-SNR-gamma for epsilon prediction
        return (weight * (eps - noise).pow(2).mean(dim=(1, 2, 3))).mean()

    return loss_at
