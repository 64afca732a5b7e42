"""Architectures of the toy models: the SD1 architecture at toy width (bench/sd/architecture.py) and
the toy CLIP, with constructors for training."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from bench.sd.architecture import IMAGE_SIZE, SCHEDULER, TEXT_ENCODER, UNET, VAE

__all__ = ["CLIP", "IMAGE_SIZE", "SCHEDULER", "TEXT_ENCODER", "UNET", "VAE"]

# open_clip CLIP: a 3-layer ViT (8 px patches) and a 2-layer text tower on the same 49408-id vocabulary.
CLIP = dict(
    embed_dim=64,
    vision_cfg=dict(layers=3, width=64, head_width=16, patch_size=8, image_size=IMAGE_SIZE, mlp_ratio=2.0),
    text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=4, layers=2, mlp_ratio=4.0),
)


def new_vae() -> AutoencoderKL:
    return AutoencoderKL(**VAE)


def new_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(**UNET)


def new_text_encoder() -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER))


def new_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULER)


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
