"""Text-to-image with no reference: the prompt alone, from pure noise at t = 980."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.sd.diffusion import SamplingConfig, TextConditioning, denoise, truncated_timesteps
from bench.sd.methods import Generated, Method, Sample, images_or_failures
from bench.sd.seeding import draw_normal

if TYPE_CHECKING:  # annotations only (importing diffusers costs seconds; config checks build the method)
    from bench.sd.backbone import Backbone


class Txt2Img(Method):
    """Stable Diffusion text-to-image with the paper's DDPM sampler (strength 1.0)."""

    uses_reference = False

    def __init__(self, name: str = "txt2img", label: str = "txt2img"):
        self.name, self.label = name, label

    def generate(self, backbone: Backbone, samples: list[Sample], sampling: SamplingConfig) -> list[Generated]:
        scheduler = backbone.new_scheduler()
        timesteps = truncated_timesteps(scheduler, sampling.num_inference_steps, 1.0)
        text = TextConditioning.encode(backbone, [s.prompt for s in samples], sampling.negative_prompt)
        shape = (backbone.latent_channels, backbone.latent_size, backbone.latent_size)
        z = draw_normal([s.generator("init") for s in samples], shape, backbone.device, text.cond.dtype).float()
        z = z * scheduler.init_noise_sigma
        z = denoise(backbone, scheduler, z, timesteps, text, sampling, [s.generator("steps") for s in samples])
        return images_or_failures(backbone, z)
