"""Fixed-input output slices of the toy models: recorded at training time, checked after loading."""

from __future__ import annotations

import open_clip
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel

from bench.metrics.toy_clip import images_to_input
from bench.sd.tokenizer import ClipBpeTokenizer
from bench.toy.world import toy_scene

PROMPT = "a red ball in a forest"


def _scene() -> torch.Tensor:
    return torch.from_numpy(toy_scene(seed=2, k=8).image).permute(2, 0, 1)[None]  # uint8 [1, 3, 64, 64]


@torch.no_grad()
def vae_slice(vae: AutoencoderKL) -> list[float]:
    """Posterior mean of a held-out scene and the decoding of that mean: 8 + 8 values."""
    z = vae.encode(_scene().float() / 127.5 - 1).latent_dist.mean  # [1, 4, 16, 16]
    x = vae.decode(z).sample  # [1, 3, 64, 64]
    return [*z[0, :, 8, 6:8].flatten().tolist(), *x[0, :, 40, 20:22].flatten().tolist()[:6], float(x.mean())]


@torch.no_grad()
def unet_slice(unet: UNet2DConditionModel, text_encoder: CLIPTextModel) -> list[float]:
    """Noise prediction at t=500 for a fixed latent and prompt: 8 values."""
    context = text_encoder(ClipBpeTokenizer()([PROMPT]))[0]  # [1, 77, D]
    z = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(0))
    eps = unet(z, torch.tensor([500]), encoder_hidden_states=context).sample
    return eps[0, :, 5, 9:11].flatten().tolist()


@torch.no_grad()
def clip_slice(model: open_clip.CLIP) -> list[float]:
    """Image embedding of a held-out scene and text embedding of a prompt: 4 + 4 values."""
    img = model.encode_image(images_to_input(_scene()))
    txt = model.encode_text(open_clip.tokenize([PROMPT]))
    return [*img[0, :4].tolist(), *txt[0, :4].tolist()]
