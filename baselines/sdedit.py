"""SDEdit / img2img (Meng et al. 2022): noise the reference to t_start, denoise with the prompt."""

from __future__ import annotations

import numpy as np

from bench.backbone import Backbone
from bench.config import ConfigError
from bench.diffusion import SamplingConfig, denoise, encode_images, encode_text, truncated_timesteps
from bench.methods import Generated, Method, Sample, images_or_failures
from bench.seeding import draw_normal


class SDEdit(Method):
    """img2img with the paper's DDPM sampler; `strength` sets the start time (0.6 -> t = 580)."""

    uses_reference = True

    def __init__(self, name: str = "sdedit", label: str = "sdedit", strength: float = 0.6):
        if not 0.0 < strength <= 1.0:
            raise ConfigError(f"method.strength={strength}; expected a value in (0, 1] (1.0 = from pure noise).")
        self.name, self.label, self.strength = name, label, strength

    def columns(self) -> dict:
        return {"strength": self.strength}

    def generate(self, backbone: Backbone, samples: list[Sample], sampling: SamplingConfig) -> list[Generated]:
        scheduler = backbone.new_scheduler()
        timesteps = truncated_timesteps(scheduler, sampling.num_inference_steps, self.strength)
        units = [s.unit for s in samples]
        # 1. Text conditioning [B, 77, D] and the unconditional "" prompt.
        cond = encode_text(backbone, [u.prompt.text for u in units])
        uncond = encode_text(backbone, [sampling.negative_prompt] * len(units))
        # 2. Reference latent z0 (posterior sample), noised to t_start with the sample's init noise.
        z0 = encode_images(backbone, np.stack([s.reference for s in samples]), [u.generator("vae") for u in units])
        eps = draw_normal([u.generator("init") for u in units], z0.shape[1:], z0.device, z0.dtype)
        z = scheduler.add_noise(z0, eps, timesteps[:1])
        # 3. Guided DDPM from t_start to 0, then decode.
        z = denoise(backbone, scheduler, z, timesteps, cond, uncond, sampling, [u.generator("steps") for u in units])
        return images_or_failures(backbone, z)
