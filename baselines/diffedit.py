"""DiffEdit (Couairon et al., ICLR 2023): a mask from noise-prediction differences, DDIM inversion, masked decoding.

Adapted to the protocol's task (keep the reference scene, add the prompt's subject): the query text
Q describes the input (default: the scene, "forest"), the reference text R is what to produce (default:
the protocol prompt, "Deer roaming"), and R also conditions the decoding.

1. Mask: the reference latent z0 is noised to t_mask (`mask_strength`) with n noise draws;
   M = mean over draws and channels of |eps(z_t, R) - eps(z_t, Q)|, clamped at `mask_clamp_ratio`
   times its mean, scaled to [0, 1] and thresholded at `mask_threshold` (1 = region to edit).
   With a shared unconditional branch, classifier-free guidance only scales this difference by w,
   so the normalised mask does not depend on w and the unconditional pass is skipped.
2. Encode: deterministic DDIM inversion of z0, unconditionally (the paper's choice), up to t_start (`strength`).
3. Decode: guided DDIM from the inverted latent at t_start with R. After every step the latent outside M
   is replaced by the inverted latent of the same noise level, and by z0 itself after the last step.

The sampler is DDIM (eta = 0), not the protocol's DDPM: the algorithm needs a deterministic inversion.
diffusers' `StableDiffusionDiffEditPipeline` (deprecated, frozen since 0.33.1) is not used: it needs a
transformers tokenizer and image processor, draws all noise of a batch from one generator, normalises
the mask over the whole batch, and pastes the background latent of the previous noise level (one step
noisier than the sample it is pasted into). This file follows the paper on those points.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from bench.sd.config import Rule, boolean, from_mapping, integer, real, setting, text
from bench.sd.diffusion import (
    SamplingConfig,
    TextConditioning,
    check_strength,
    encode_images,
    encode_text,
    guided_noise,
    truncated_timesteps,
    unet_noise,
)
from bench.sd.errors import ConfigError
from bench.sd.maps import MapRecord
from bench.sd.methods import Generated, Method, Sample, images_or_failures

if TYPE_CHECKING:  # annotations only (importing diffusers costs seconds; config checks build the method)
    from diffusers import DDIMInverseScheduler, DDIMScheduler, DDPMScheduler

    from bench.sd.backbone import Backbone

TEMPLATE_FIELDS = {"scene": "forest", "prompt": "Deer roaming", "subject": "Deer"}


def is_template(value: object) -> bool:
    """A str.format template that uses no field but TEMPLATE_FIELDS."""
    if not isinstance(value, str):
        return False
    try:
        value.format(**TEMPLATE_FIELDS)
    except (KeyError, IndexError, ValueError, AttributeError):
        return False
    return True


FIELD_LIST = ", ".join("{" + name + "}" for name in TEMPLATE_FIELDS)
TEMPLATE = Rule(
    f"a valid template: a string whose only fields are {FIELD_LIST}",
    is_template,
    hint="write a literal brace as {{{{ or }}}}",
)


@dataclass(frozen=True)
class DiffEditAttribution:
    """`method.attribution`: record=true saves the pre-threshold noise-difference map (kind noise_diff)."""

    record: bool = setting(False, boolean())


@dataclass(frozen=True)
class DiffEditConfig:
    """`method` of conf/method/diffedit.yaml (built by from_mapping: finite, in range, valid templates)."""

    strength: float = setting(0.8, real(0.0, 1.0, low_open=True))
    mask_strength: float = setting(0.5, real(0.0, 1.0, low_open=True))
    mask_noise_draws: int = setting(10, integer(1))
    mask_clamp_ratio: float = setting(3.0, real(0.0, low_open=True))
    mask_threshold: float = setting(0.5, real(0.0, 1.0, low_open=True, high_open=True))
    source_prompt: str = setting("{scene}", TEMPLATE)
    target_prompt: str = setting("{prompt}", TEMPLATE)
    inversion_prompt: str = setting("", text())
    attribution: DiffEditAttribution = setting(factory=DiffEditAttribution)


def ddim_schedulers(ddpm: DDPMScheduler) -> tuple[DDIMScheduler, DDIMInverseScheduler]:
    """DDIM and its inverse on the backbone's betas and timestep grid (alpha of the clean end = 1)."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler  # here: importing diffusers costs seconds

    def build(cls):
        accepted = inspect.signature(cls.__init__).parameters
        kwargs = {k: v for k, v in ddpm.config.items() if k in accepted}
        return cls(**{**kwargs, "set_alpha_to_one": True})

    return build(DDIMScheduler), build(DDIMInverseScheduler)


@torch.no_grad()
def noise_difference_map(
    backbone: Backbone,
    scheduler: DDIMScheduler,
    z0: torch.Tensor,
    t_mask: torch.Tensor,
    query: torch.Tensor,
    reference: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """The continuous map before the clamp and threshold: mean over draws and channels of |eps(R) - eps(Q)| [h, w]."""
    n = len(noise)
    z_t = scheduler.add_noise(z0.expand(n, -1, -1, -1), noise, t_mask)  # [n, C, h, w]
    texts = torch.cat([reference.expand(n, -1, -1), query.expand(n, -1, -1)])  # [2n, 77, D]
    eps = unet_noise(backbone, torch.cat([z_t, z_t]), t_mask, texts)  # [2n, C, h, w]
    return (eps[:n] - eps[n:]).abs().mean(dim=(0, 1))  # [h, w]


def threshold_difference(difference: torch.Tensor, clamp_ratio: float, threshold: float) -> torch.Tensor:
    """Clamp at ratio x mean, scale to [0, 1], threshold -> {0, 1} [h, w]."""
    ceiling = difference.mean() * clamp_ratio
    scaled = difference.clamp(0, ceiling) / ceiling  # [h, w] in [0, 1]
    return (scaled > threshold).float()


@torch.no_grad()
def ddim_inversion(
    backbone: Backbone,
    inverse: DDIMInverseScheduler,
    z0: torch.Tensor,
    num_inference_steps: int,
    num_levels: int,
    context: torch.Tensor,
    batch_invariant: bool = True,
) -> list[torch.Tensor]:
    """Deterministic encoding z0 -> the latents at the first `num_levels` timesteps (0, 20, 40, ... for 50 steps).

    z0 [B, C, h, w], context [B, 77, D]; returns num_levels latents [B, C, h, w], least noisy first.
    """
    inverse.set_timesteps(num_inference_steps)
    z, chain = z0, []
    for t in inverse.timesteps[:num_levels]:
        groups = [slice(b, b + 1) for b in range(len(z))] if batch_invariant else [slice(0, len(z))]
        eps = torch.cat([unet_noise(backbone, z[g], t, context[g]) for g in groups])
        z = inverse.step(eps, t, z).prev_sample.float()
        chain.append(z)
    return chain


@torch.no_grad()
def masked_decoding(
    backbone: Backbone,
    scheduler: DDIMScheduler,
    timesteps: torch.Tensor,
    chain: list[torch.Tensor],
    z0: torch.Tensor,
    masks: torch.Tensor,
    text: TextConditioning,
    sampling: SamplingConfig,
) -> torch.Tensor:
    """Guided DDIM over `timesteps` from chain[-1]; outside `masks` [B, 1, h, w] keep the encoded reference.

    After step i the sample is at the noise level of chain[K-2-i] (K = len(timesteps)), and at z0's after
    the last step; that latent replaces it where the mask is 0.
    """
    backgrounds = chain[-2::-1] + [z0]
    z = chain[-1]
    for i, t in enumerate(timesteps):
        eps = guided_noise(backbone, z, t, text.cond, text.uncond, sampling.guidance_scale, sampling.batch_invariant)
        z = scheduler.step(eps, t, z).prev_sample.float()  # eta = 0: no noise
        z = masks * z + (1 - masks) * backgrounds[i]
    return z


class DiffEdit(Method):
    """DiffEdit with the protocol's prompt as the edit text and the scene as the description of the input."""

    uses_reference = True
    makes_mask = True

    def __init__(
        self,
        name: str = "diffedit",
        label: str = "diffedit",
        strength: float = 0.8,
        mask_strength: float = 0.5,
        mask_noise_draws: int = 10,
        mask_clamp_ratio: float = 3.0,
        mask_threshold: float = 0.5,
        source_prompt: str = "{scene}",
        target_prompt: str = "{prompt}",
        inversion_prompt: str = "",
        attribution: Mapping | None = None,
    ):
        self.name, self.label = name, label
        values = {
            "strength": strength,
            "mask_strength": mask_strength,
            "mask_noise_draws": mask_noise_draws,
            "mask_clamp_ratio": mask_clamp_ratio,
            "mask_threshold": mask_threshold,
            "source_prompt": source_prompt,
            "target_prompt": target_prompt,
            "inversion_prompt": inversion_prompt,
            "attribution": attribution,
        }
        self.config = from_mapping(DiffEditConfig, values, "method")

    @property
    def strength(self) -> float:
        return self.config.strength

    def check(self, sampling: SamplingConfig) -> None:
        """Both strengths leave a step of the protocol (before any model is loaded)."""
        super().check(sampling)
        check_strength(self.config.mask_strength, sampling, key="method.mask_strength")

    def columns(self) -> dict:
        cfg = self.config
        return {
            "strength": cfg.strength,
            "mask_strength": cfg.mask_strength,
            "mask_noise_draws": cfg.mask_noise_draws,
            "mask_clamp_ratio": cfg.mask_clamp_ratio,
            "mask_threshold": cfg.mask_threshold,
            "source_prompt": cfg.source_prompt,
            "target_prompt": cfg.target_prompt,
            "inversion_prompt": cfg.inversion_prompt,
            "sampler": "ddim",
        }

    def texts(self, sample: Sample) -> tuple[str, str]:
        """(Q, R) of one sample: the description of the input and the edit text."""
        fields = {
            "scene": sample.scene.replace("_", " "),
            "prompt": sample.prompt,
            "subject": sample.subject,
        }
        return self.config.source_prompt.format(**fields), self.config.target_prompt.format(**fields)

    def mask(
        self,
        backbone: Backbone,
        scheduler: DDIMScheduler,
        t_mask: torch.Tensor,
        z0: torch.Tensor,
        query: torch.Tensor,
        reference: torch.Tensor,
        sample: Sample,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One sample's mask [h, w] and its continuous map [h, w]; noise draws from the sample's "method" stream."""
        cfg = self.config
        shape = (cfg.mask_noise_draws, *z0.shape[1:])
        noise = torch.randn(shape, generator=sample.generator("method")).to(z0.device)
        difference = noise_difference_map(backbone, scheduler, z0, t_mask, query, reference, noise)
        return threshold_difference(difference, cfg.mask_clamp_ratio, cfg.mask_threshold), difference

    def generate(self, backbone: Backbone, samples: list[Sample], sampling: SamplingConfig) -> list[Generated]:
        n_steps = sampling.num_inference_steps
        ddim, inverse = ddim_schedulers(backbone.scheduler)
        timesteps = truncated_timesteps(ddim, n_steps, self.config.strength)  # t_start, ..., 0
        t_mask = truncated_timesteps(ddim, n_steps, self.config.mask_strength)[0]
        inverse.set_timesteps(n_steps)
        if not torch.equal(inverse.timesteps[: len(timesteps)].flip(0), timesteps):
            raise ConfigError(
                f"DDIM inversion grid {inverse.timesteps[: len(timesteps)].tolist()} does not mirror the sampling "
                f"grid {timesteps.tolist()}; use model.scheduler.timestep_spacing=leading."
            )
        # 1. Texts [B, 77, D]: Q and R for the mask, R and "" for the decoding, the inversion text.
        sources, targets = zip(*(self.texts(s) for s in samples), strict=True)
        query, reference = encode_text(backbone, list(sources)), encode_text(backbone, list(targets))
        uncond = encode_text(backbone, [sampling.negative_prompt] * len(samples))
        inversion = encode_text(backbone, [self.config.inversion_prompt] * len(samples))
        # 2. Reference latents z0 (posterior sample from the sample's "vae" stream).
        z0 = encode_images(backbone, np.stack([s.reference for s in samples]), [s.generator("vae") for s in samples])
        # 3. Masks [B, 1, h, w], one sample at a time (the normalisation is per image).
        pairs = [
            self.mask(backbone, ddim, t_mask, z0[b : b + 1], query[b : b + 1], reference[b : b + 1], samples[b])
            for b in range(len(samples))
        ]
        masks = torch.stack([mask for mask, _ in pairs])[:, None]
        # 4. DDIM inversion to t_start; level k of the chain is inverse timestep k (0, 20, ...).
        chain = ddim_inversion(backbone, inverse, z0, n_steps, len(timesteps), inversion, sampling.batch_invariant)
        # 5. Masked DDIM decoding with R, from the inverted latent at t_start.
        decoding = TextConditioning(reference, uncond)
        z = masked_decoding(backbone, ddim, timesteps, chain, z0, masks, decoding, sampling)
        results = images_or_failures(backbone, z)
        for result, mask, (_, difference) in zip(results, masks[:, 0].cpu().numpy(), pairs, strict=True):
            result.masks["subject_mask"] = mask  # [h, w], 1 = edited (subject) region
            result.info["mask_fraction"] = float(mask.mean())
            if self.config.attribution.record:  # the same map in every channel, as the study reads [C, h, w]
                channels = difference.float().cpu().numpy()[None].repeat(z0.shape[1], axis=0) / z0.shape[1]
                result.maps = [MapRecord("noise_diff", None, None, 0, int(t_mask), mask.shape[-1], channels)]
        return results
