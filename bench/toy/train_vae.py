"""Train the toy AutoencoderKL: reconstruction MSE on posterior samples + a small KL term (as SD's VAE, no GAN)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from diffusers import AutoencoderKL

from bench.toy.architecture import new_vae
from bench.toy.data import ToySet, to_unit_range
from bench.toy.schedule import EMA, lr_at, set_lr


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
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    ema = EMA(vae.parameters(), decay=0.995)
    start, losses = time.time(), []
    for step in range(steps):
        set_lr(opt, lr_at(step, steps, lr, warmup=min(100, steps // 10 + 1)))
        x = to_unit_range(data.images[torch.randint(len(data), (batch_size,), generator=gen)])  # [B, 3, S, S]
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample(generator=gen)).sample
        loss = torch.nn.functional.mse_loss(rec, x) + kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            recent = losses[-100:]
            log(f"vae step {step}/{steps} loss {sum(recent) / len(recent):.5f} {time.time() - start:.0f}s")
    ema.copy_to_params()
    vae.eval().requires_grad_(False)
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae, data))
    return vae, {"steps": steps, "batch_size": batch_size, "lr": lr, "kl_weight": kl_weight, "final_loss": losses[-1]}


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, data: ToySet, count: int = 512) -> float:
    """1 / std of posterior means over the first `count` training images (rounded to 5 digits)."""
    x = to_unit_range(data.images[:count])
    z = torch.cat([vae.encode(x[i : i + 64]).latent_dist.mean for i in range(0, len(x), 64)])
    return round(1.0 / z.std().item(), 5)


def finetune_decoder(
    vae: AutoencoderKL,
    data: ToySet,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    log: Callable[[str], None] = print,
) -> tuple[AutoencoderKL, dict]:
    """Train the decoder alone (encoder frozen), as SD's ft-MSE VAE: latents, hence the UNet, stay valid."""
    torch.manual_seed(seed)
    decoder = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    vae.requires_grad_(False).train()
    for p in decoder:
        p.requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(decoder, lr=lr, weight_decay=0.0)
    ema = EMA(decoder, decay=0.995)
    start, losses = time.time(), []
    for step in range(steps):
        set_lr(opt, lr_at(step, steps, lr, warmup=min(50, steps // 10 + 1)))
        x = to_unit_range(data.images[torch.randint(len(data), (batch_size,), generator=gen)])  # [B, 3, S, S]
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(generator=gen)
        loss = torch.nn.functional.mse_loss(vae.decode(z).sample, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            recent = losses[-100:]
            log(f"vae decoder step {step}/{steps} loss {sum(recent) / len(recent):.5f} {time.time() - start:.0f}s")
    ema.copy_to_params()
    vae.eval().requires_grad_(False)
    return vae, {"steps": steps, "batch_size": batch_size, "lr": lr, "final_loss": losses[-1]}
