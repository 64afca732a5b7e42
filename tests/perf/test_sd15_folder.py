"""The random-weight SD1.5 folder of `make check-scale`: SD1.5's architecture and tokenizer files (cheap checks).

The folder itself (4.3 GB) is built and run by `make check-scale`; here the modules are built on the
meta device (shapes only) and the tokenizer files are written for real.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from bench.perf import sd15_folder
from bench.sd.sd15 import check_tokenizer
from bench.sd.tokenizer import ClipBpeTokenizer
from method.attention import resolve_layers
from method.tail import tail_modules


def test_configs_have_sd15s_parameter_counts_and_last_layer():
    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd15_folder.UNET)
        vae = AutoencoderKL(**sd15_folder.VAE)
        text = CLIPTextModel(CLIPTextConfig(**sd15_folder.TEXT_ENCODER))
    modules = {"unet": unet, "vae": vae, "text_encoder": text}
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in modules.items()}
    assert counts == sd15_folder.PARAMETERS
    (layer,) = resolve_layers(unet, "last")
    assert layer == "up_blocks.3.attentions.2.transformer_blocks.0.attn2"
    tail_modules(unet, layer)  # the exact tail path applies


def test_tokenizer_files_are_sd15s_clip_bpe(tmp_path):
    sd15_folder.write_tokenizer(tmp_path / "tokenizer")
    check_tokenizer(tmp_path)  # the loader's check of a folder's vocabulary
    hf = CLIPTokenizer.from_pretrained(tmp_path / "tokenizer")
    prompts = ["a photo of a dog in a forest", ""]
    theirs = hf(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert torch.equal(ClipBpeTokenizer()(prompts), theirs)
