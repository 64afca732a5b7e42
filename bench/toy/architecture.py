"""Architectures of the toy models: the Stable Diffusion v1 classes at toy width (configs only)."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

IMAGE_SIZE = 64  # pixels; the VAE maps it to 16x16x4 latents

VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 32),
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=8,
    sample_size=IMAGE_SIZE,
)
UNET = dict(
    sample_size=IMAGE_SIZE // 4,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    # diffusers' legacy name for the number of heads: 2 heads of width 16 (16x16) and 32 (8x8). At 8 heads
    # (width 4) CPU flash attention made a training step 1.9x slower for the same parameters.
    attention_head_dim=2,
    norm_num_groups=8,
)
# The real CLIP vocabulary (49408 BPE ids) at width 32: the token embedding is most of its 1.6M parameters.
TEXT_ENCODER = dict(
    hidden_size=32,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    vocab_size=49408,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)
# SD1.5's betas with the paper's DDPM sampler settings (as conf/model/tiny.yaml).
SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=0,
    timestep_spacing="leading",
    clip_sample=False,
    variance_type="fixed_small",
    prediction_type="epsilon",
)
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
