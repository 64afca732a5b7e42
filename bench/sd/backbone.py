"""The Stable Diffusion v1 backbone: text encoder, UNet, VAE and DDPM scheduler.

`build_tiny` builds it at toy width with seeded weights (offline profile); `load_sd15`
(bench/sd/sd15.py) loads the real weights. Everything downstream sees the same `Backbone`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from bench.sd import architecture
from bench.sd.device import resolve_device
from bench.sd.tokenizer import ClipBpeTokenizer


@dataclass
class Backbone:
    """A Stable Diffusion v1 model, ready for sampling."""

    name: str
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: ClipBpeTokenizer
    scheduler: DDPMScheduler  # a template: `new_scheduler()` gives each sample its own copy
    image_size: int
    device: torch.device
    dtype: torch.dtype = torch.float32  # sampling precision; gradients always run in float32
    provenance: dict = field(default_factory=dict)
    # Loads the UNet with float32 weights when `dtype` is not float32 (bench/sd/sd15.py supplies it).
    unet_float32_loader: Callable[[], UNet2DConditionModel] | None = field(default=None, repr=False)
    # twin: gradient passes use a float32 copy of the UNet; upcast: the sampling UNet itself, its weights
    # cast to float32 for the pass and back (exact round trip): no second copy, half-precision weights.
    gradient_unet: str = "twin"
    _unet_float32: UNet2DConditionModel | None = field(default=None, init=False, repr=False)

    @property
    def vae_scale(self) -> int:
        """Pixels per latent cell (8 on SD1.5)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae_scale

    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

    def new_scheduler(self) -> DDPMScheduler:
        return copy.deepcopy(self.scheduler)

    def float32_unet(self) -> UNet2DConditionModel:
        """The UNet in float32 for gradient passes (Grad-SAM).

        The sampling UNet itself when it is float32; else a separate float32 copy, loaded once from the
        stored weights (not an up-cast of the float16 copy) and kept. Set attention processors on the
        copy you use, and restore them; the two copies share no modules. With `gradient_unet="upcast"`
        the sampling UNet itself: the scoring code casts it to float32 for the pass (method.gradsam.float32).
        """
        if self.unet.dtype == torch.float32 or self.gradient_unet == "upcast":
            return self.unet
        if self._unet_float32 is None:
            if self.unet_float32_loader is not None:
                self._unet_float32 = self.unet_float32_loader()
            else:
                self._unet_float32 = copy.deepcopy(self.unet).float()
        return self._unet_float32


def make_scheduler(scheduler: Mapping) -> DDPMScheduler:
    """DDPM with SD1.5's scaled-linear betas and steps_offset 0 (docs/paper.md B13): 980, 960, ..., 0."""
    return DDPMScheduler(**dict(scheduler))


def build_tiny(
    name: str,
    seed: int,
    image_size: int,
    scheduler: Mapping,
    unet: Mapping | None = None,
    vae: Mapping | None = None,
    text_encoder: Mapping | None = None,
    device: str = "auto",
) -> Backbone:
    """The toy-width SD1 architecture (bench/sd/architecture.py) with some keys changed, weights drawn from `seed`."""
    unet_config = architecture.with_changes(architecture.UNET, unet, "model.unet")
    vae_config = architecture.with_changes(architecture.VAE, vae, "model.vae")
    text_config = architecture.with_changes(architecture.TEXT_ENCODER, text_encoder, "model.text_encoder")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_model = CLIPTextModel(CLIPTextConfig(**text_config))
        unet_model = UNet2DConditionModel(**unet_config)
        vae_model = AutoencoderKL(**vae_config)
    dev = resolve_device(device)
    for module in (text_model, unet_model, vae_model):
        module.to(dev).eval().requires_grad_(False)
    return Backbone(
        name=name,
        unet=unet_model,
        vae=vae_model,
        text_encoder=text_model,
        tokenizer=ClipBpeTokenizer(),
        scheduler=make_scheduler(scheduler),
        image_size=image_size,
        device=dev,
        provenance={"model": name, "weights": f"random(seed={seed})"},
    )
