"""SDEdit / img2img (Meng et al. 2022): noise the reference to t_start, denoise with the prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bench.sd.config import from_mapping, real, setting
from bench.sd.diffusion import SamplingConfig, TextConditioning, denoise, encode_images, truncated_timesteps
from bench.sd.methods import Generated, Method, Sample, images_or_failures
from bench.sd.seeding import draw_normal

if TYPE_CHECKING:  # annotations only (importing diffusers costs seconds; config checks build the method)
    from bench.sd.backbone import Backbone


@dataclass(frozen=True)
class SDEditConfig:
    """`method` of conf/method/sdedit.yaml (built by from_mapping: finite, in range)."""

    strength: float = setting(0.6, real(0.0, 1.0, low_open=True, hint="1.0 = from pure noise"))


class SDEdit(Method):
    """img2img with the paper's DDPM sampler; `strength` sets the start time (0.6 -> t = 580)."""

    uses_reference = True

    def __init__(self, name: str = "sdedit", label: str | None = None, strength: float = 0.6):
        """`label` defaults to `sdedit_<strength>`, as conf/method/sdedit.yaml writes it (sdedit_0.6)."""
        self.name, self.label = name, label if label is not None else f"sdedit_{strength}"
        self.config = from_mapping(SDEditConfig, {"strength": strength}, "method")

    @property
    def strength(self) -> float:
        return self.config.strength

    def columns(self) -> dict:
        return {"strength": self.config.strength}

    def generate(self, backbone: Backbone, samples: list[Sample], sampling: SamplingConfig) -> list[Generated]:
        scheduler = backbone.new_scheduler()
        timesteps = truncated_timesteps(scheduler, sampling.num_inference_steps, self.config.strength)
        # 1. Text conditioning [B, 77, D] and the unconditional "" prompt.
        text = TextConditioning.encode(backbone, [s.prompt for s in samples], sampling.negative_prompt)
        # 2. Reference latent z0 (posterior sample), noised to t_start with the sample's init noise.
        z0 = encode_images(backbone, np.stack([s.reference for s in samples]), [s.generator("vae") for s in samples])
        eps = draw_normal([s.generator("init") for s in samples], z0.shape[1:], z0.device, z0.dtype)
        z = scheduler.add_noise(z0, eps, timesteps[:1])
        # 3. Guided DDPM from t_start to 0, then decode.
        z = denoise(backbone, scheduler, z, timesteps, text, sampling, [s.generator("steps") for s in samples])
        return images_or_failures(backbone, z)
