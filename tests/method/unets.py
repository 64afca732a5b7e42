"""Small UNet2DConditionModel configurations with seeded weights, for the method tests."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from omegaconf import OmegaConf

from bench.config import CONF_DIR
from bench.sd.architecture import UNET, with_changes

# The offline model's UNet (model=tiny: the toy-width architecture with conf/model/tiny.yaml's changes):
# 3 levels, last cross-attention in up_blocks.2.
TINY = with_changes(UNET, OmegaConf.load(CONF_DIR / "model" / "tiny.yaml").unet, "model.unet")
# SD1.5's block structure with small channels: 4 levels, 2 layers per block, 16 cross-attention layers,
# 3 attentions in each of up_blocks 1..3; linear projections (SD2-style) to cover both proj_out kinds.
SD15_SHAPED = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(8, 16, 16, 16),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=16,
    attention_head_dim=2,
    norm_num_groups=4,
    use_linear_projection=True,
)
# The last up block has no attention: an upsampler and resnets follow the last cross-attention.
NO_TAIL = {**TINY, "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")}
SD15_LAST = "up_blocks.3.attentions.2.transformer_blocks.0.attn2"
TINY_LAST = "up_blocks.2.attentions.1.transformer_blocks.0.attn2"


def build_unet(config: dict, seed: int = 0) -> UNet2DConditionModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**config)
    return unet.eval().requires_grad_(False)
