"""The Stable Diffusion v1 architecture at toy width: the one definition that model=tiny, the toy models
(bench/toy/) and the tests build from. SD1.5's own sizes come with its weights (bench/sd/sd15.py).

Same classes and block structure as SD1 (UNet2DConditionModel with cross-attention in down and up
blocks, AutoencoderKL, CLIPTextModel on the real 49408-id vocabulary, DDPM with SD1.5's betas),
three levels instead of four and a few dozen channels instead of hundreds.
"""

from __future__ import annotations

from collections.abc import Mapping

from bench.sd.errors import ConfigError

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
# SD1.5's betas with the paper's DDPM sampler settings (conf/model/*.yaml repeat them for their loaders).
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


def with_changes(base: Mapping, changes: Mapping | None, where: str) -> dict:
    """`base` with some of its keys changed; a key that `base` lacks is an error naming the known ones."""
    changes = dict(changes or {})
    unknown = sorted(set(changes) - set(base))
    if unknown:
        raise ConfigError(f"{where} has unknown keys {unknown}; known: {sorted(base)}.")
    return {**base, **{k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}}
