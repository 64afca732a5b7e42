"""Sampling primitives shared by every method: text and image encoding, guided noise, DDPM steps.

Latents stay in float32 between steps; the networks run in `backbone.dtype`. All randomness comes
in through per-sample generators (bench/sd/seeding.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import torch

from bench.sd.config import boolean, check_value, integer, real, setting, text
from bench.sd.errors import ConfigError
from bench.sd.seeding import draw_normal

if TYPE_CHECKING:  # annotations only (importing diffusers costs seconds)
    from diffusers import DDPMScheduler

    from bench.sd.backbone import Backbone

# on_step_end(step_index, t, z_t, z_next) -> z_next, called after each DDPM step.
StepCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SamplingConfig:
    """The denoising protocol shared by all methods (docs/paper.md §2.1); every field is checked on construction."""

    num_inference_steps: int = setting(50, integer(1))
    guidance_scale: float = setting(8.0, real(0.0, hint="1.0 = no guidance, 0.0 = unconditional"))
    negative_prompt: str = setting("", text())
    batch_invariant: bool = setting(True, boolean())

    def __post_init__(self):
        for f in fields(self):
            check_value(f"sampling.{f.name}", getattr(self, f.name), f.metadata["rule"], f.default)


def schedule_length(num_inference_steps: int, strength: float) -> int:
    """Steps of the img2img schedule `truncated_timesteps` returns, without a scheduler (for early checks)."""
    return int(num_inference_steps * strength)


def check_strength(strength: float, sampling: SamplingConfig, key: str = "method.strength") -> None:
    """Refuse a strength that leaves no denoising step of the protocol (before any model is loaded)."""
    if schedule_length(sampling.num_inference_steps, strength) < 1:
        raise ConfigError(
            f"{key}={strength} leaves no denoising step out of sampling.num_inference_steps="
            f"{sampling.num_inference_steps} (int(steps * strength) = 0). Fix: raise {key} or the steps."
        )


def truncated_timesteps(scheduler: DDPMScheduler, num_inference_steps: int, strength: float) -> torch.Tensor:
    """The img2img schedule: t_start = n - int(n * strength); 0.9 of 50 steps gives 880, 860, ..., 0.

    `strength` in (0, 1] is the method config's rule (checked there, bench/sd/config.py); only what
    needs the step count is checked here.
    """
    scheduler.set_timesteps(num_inference_steps)
    start = num_inference_steps - int(num_inference_steps * strength)
    timesteps = scheduler.timesteps[start:]
    if len(timesteps) == 0:
        raise ConfigError(f"strength={strength} leaves no denoising step out of {num_inference_steps}.")
    return timesteps


def per_sample(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply a network to each sample of x alone and stack: the result never depends on the batch size.

    (CPU and GPU kernels pick different reduction orders for different batch sizes, so a batched
    call can differ from single calls in the last bits.)
    """
    return torch.cat([fn(x[b : b + 1]) for b in range(len(x))])


@torch.no_grad()
def encode_text(backbone: Backbone, prompts: Sequence[str]) -> torch.Tensor:
    """CLIP text embeddings [B, 77, D] (last hidden state, as SD1 uses)."""
    ids = backbone.tokenizer(prompts).to(backbone.device)
    return per_sample(lambda i: backbone.text_encoder(i)[0], ids).to(backbone.dtype)


@torch.no_grad()
def encode_images(backbone: Backbone, images: np.ndarray, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> scaled posterior samples z0 [B, C, h, w] (float32), noise per sample."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [B, 3, H, W] in [-1, 1]
    vae = backbone.vae
    moments = per_sample(lambda xb: vae.encode(xb).latent_dist.parameters, x.to(backbone.device, backbone.dtype))
    mean, logvar = moments.float().chunk(2, dim=1)  # [B, C, h, w] each
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))  # as diffusers' DiagonalGaussianDistribution
    noise = draw_normal(generators, mean.shape[1:], backbone.device, torch.float32)
    z0 = mean + std * noise
    return z0 * vae.config.scaling_factor


@torch.no_grad()
def decode_latents(backbone: Backbone, z: torch.Tensor) -> np.ndarray:
    """z [B, C, h, w] -> uint8 [B, H, W, 3], clamped to [-1, 1] first (as the reference code)."""
    return decode_checked(backbone, z)[0]


@torch.no_grad()
def decode_checked(backbone: Backbone, z: torch.Tensor) -> tuple[np.ndarray, list[str | None]]:
    """decode_latents, and per sample None or why its decoded pixels are unusable (NaN/inf, e.g. a float16 VAE)."""
    z = (z / backbone.vae.config.scaling_factor).to(backbone.dtype)
    x = per_sample(lambda zb: backbone.vae.decode(zb).sample, z)
    bad = (~torch.isfinite(x.float())).flatten(1).sum(dim=1).tolist()
    failures = [f"decode: non-finite decoded pixels ({n} NaN/inf values)" if n else None for n in bad]
    x = ((x.float().nan_to_num().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy(), failures


def unet_noise(backbone: Backbone, z: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Raw UNet noise prediction eps [B, C, h, w] in float32."""
    out = backbone.unet(z.to(backbone.dtype), t, encoder_hidden_states=context).sample
    return out.float()


@torch.no_grad()
def guided_noise(
    backbone: Backbone,
    z: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    guidance_scale: float,
    batch_invariant: bool = True,
) -> torch.Tensor:
    """Classifier-free guidance eps_u + w (eps_c - eps_u), the UNet on [cond; uncond] as the reference code.

    z [B, C, h, w]; cond, uncond [B, 77, D]. With batch_invariant, each sample's pair is its own
    UNet call, so the result does not depend on B.
    """
    groups = [slice(b, b + 1) for b in range(len(z))] if batch_invariant else [slice(0, len(z))]
    out = []
    for g in groups:
        n = g.stop - g.start
        eps = unet_noise(backbone, torch.cat([z[g], z[g]]), t, torch.cat([cond[g], uncond[g]]))
        eps_cond, eps_uncond = eps[:n], eps[n:]
        out.append(eps_uncond + guidance_scale * (eps_cond - eps_uncond))
    return torch.cat(out)


def ddpm_step(
    scheduler: DDPMScheduler,
    eps: torch.Tensor,
    t: torch.Tensor,
    z: torch.Tensor,
    generators: list[torch.Generator],
) -> torch.Tensor:
    """One ancestral DDPM step z_t -> z_{t_prev}; the step noise comes from each sample's generator."""
    return scheduler.step(eps, t, z, generator=list(generators)).prev_sample.float()


@dataclass(frozen=True, eq=False)
class TextConditioning:
    """The two text conditions of classifier-free guidance, per sample: cond and uncond [B, 77, D]."""

    cond: torch.Tensor
    uncond: torch.Tensor

    @classmethod
    def encode(cls, backbone: Backbone, prompts: Sequence[str], negative_prompt: str) -> TextConditioning:
        """Each sample's prompt, and the negative prompt ("" in the protocol) for every sample."""
        return cls(encode_text(backbone, prompts), encode_text(backbone, [negative_prompt] * len(prompts)))


def denoise(
    backbone: Backbone,
    scheduler: DDPMScheduler,
    z: torch.Tensor,
    timesteps: torch.Tensor,
    text: TextConditioning,
    sampling: SamplingConfig,
    step_generators: list[torch.Generator],
    on_step_end: StepCallback | None = None,
) -> torch.Tensor:
    """Run the guided DDPM chain over `timesteps` from z (at timesteps[0]); return the final latent.

    `on_step_end(i, t_i, z_{t_i}, z_{t_{i+1}})` may replace the new latent: the step index and the
    timestep are passed explicitly, never counted.
    """
    for i, t in enumerate(timesteps):
        eps = guided_noise(backbone, z, t, text.cond, text.uncond, sampling.guidance_scale, sampling.batch_invariant)
        z_next = ddpm_step(scheduler, eps, t, z, step_generators)
        if on_step_end is not None:
            z_next = on_step_end(i, t, z, z_next)
        z = z_next
    return z
