"""Train the toy AutoencoderKL: reconstruction MSE on posterior samples + a small KL term (as SD's VAE, no GAN)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import AutoencoderKL

from bench.toy.architecture import new_vae
from bench.toy.data import ToySet, to_unit_range
from bench.toy.schedule import FitSettings, fit


def train_vae(
    data: ToySet,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    kl_weight: float = 1e-6,
    log: Callable[[str], None] = print,
) -> tuple[AutoencoderKL, dict]:
    """A VAE trained on `data`; its scaling_factor is set to 1 / std of the training latents (SD convention)."""
    torch.manual_seed(seed)
    vae = new_vae().train()
    gen = torch.Generator().manual_seed(seed)

    def loss_at(step: int) -> torch.Tensor:
        x = to_unit_range(data.images[torch.randint(len(data), (batch_size,), generator=gen)])  # [B, 3, S, S]
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample(generator=gen)).sample
        return torch.nn.functional.mse_loss(rec, x) + kl_weight * posterior.kl().mean()

    params = list(vae.parameters())
    warmup = min(100, steps // 10 + 1)
    settings = FitSettings(steps, lr, warmup, weight_decay=0.0, ema_decay=0.995)
    losses = fit("vae", params, loss_at, settings, log=log)
    vae.eval().requires_grad_(False)
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae, data))
    return vae, {"steps": steps, "batch_size": batch_size, "lr": lr, "kl_weight": kl_weight, "final_loss": losses[-1]}


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, data: ToySet, count: int = 512) -> float:
    """1 / std of posterior means over the first `count` training images (rounded to 5 digits)."""
    x = to_unit_range(data.images[:count])
    z = torch.cat([vae.encode(x[i : i + 64]).latent_dist.mean for i in range(0, len(x), 64)])
    return round(1.0 / z.std().item(), 5)
