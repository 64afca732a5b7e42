"""A random-weight Stable Diffusion v1-5 folder: SD1.5's exact architecture, configs and tokenizer files.

`python -m bench.perf.sd15_folder [--out DIR]` builds it once (deterministic: fixed seeds, float32,
safetensors via `save_pretrained`) into a git-ignored cache folder and prints its path; a complete
folder built by the same recipe is reused. `model=sd15 model.path=<folder>` then loads it exactly as
it would load the real weights (bench/sd/sd15.py). Never committed: about 4.3 GB.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
from pathlib import Path

import torch

from bench.config import REPO_ROOT

DEFAULT_DIR = REPO_ROOT / ".cache" / "sd15-random"
RECIPE = 1  # bump when the recipe changes: a cached folder of another recipe is rebuilt
SEEDS = {"unet": 0, "vae": 1, "text_encoder": 2}

# runwayml/stable-diffusion-v1-5's component configs (the keys that define the architecture).
UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
    norm_eps=1e-5,
    act_fn="silu",
    center_input_sample=False,
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
    mid_block_scale_factor=1,
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    act_fn="silu",
    sample_size=512,
)
TEXT_ENCODER = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=768,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)
# SD1.5's scheduler/scheduler_config.json (PNDM, steps_offset 1), as published with the weights (written
# as is: PNDMScheduler itself takes no clip_sample).
SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.6.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
# Parameter counts of SD1.5's components: the built modules must have exactly these.
PARAMETERS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
STAMP = "random_weights.json"


def build_modules() -> dict[str, torch.nn.Module]:
    """The three networks with seeded default initialisation (float32, eval mode)."""
    # Here, not at the top: importing diffusers and transformers costs seconds (`bench.perf gpu` refuses first).
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    makers = {
        "unet": lambda: UNet2DConditionModel(**UNET),
        "vae": lambda: AutoencoderKL(**VAE),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER)),
    }
    modules = {}
    with torch.random.fork_rng(devices=[]):
        for name, make in makers.items():
            torch.manual_seed(SEEDS[name])
            modules[name] = make().eval()
            count = sum(p.numel() for p in modules[name].parameters())
            if count != PARAMETERS[name]:
                raise RuntimeError(f"{name} has {count:,} parameters, SD1.5's has {PARAMETERS[name]:,}")
    return modules


def write_tokenizer(folder: Path) -> None:
    """SD1.5's tokenizer/ files (vocab.json, merges.txt, configs), built from CLIP's raw BPE merges."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe  # here: importing open_clip costs a second

    with gzip.open(default_bpe()) as fh:
        lines = fh.read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps({**special, "pad_token": "<|endoftext|>"}))
    config = {**special, "model_max_length": 77, "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def write_folder(folder: Path) -> None:
    """Every file of the diffusers folder (no safety checker, no feature extractor: the harness reads neither)."""
    for name, module in build_modules().items():
        module.save_pretrained(folder / name, safe_serialization=True)
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2))
    write_tokenizer(folder / "tokenizer")
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))


def ensure_folder(out: Path = DEFAULT_DIR) -> Path:
    """The folder at `out`, built (into a sibling temporary folder, then renamed) unless already complete."""
    stamp = {"recipe": RECIPE, "seeds": SEEDS, "parameters": PARAMETERS}
    if (out / STAMP).is_file() and json.loads((out / STAMP).read_text()) == stamp:
        return out
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    write_folder(partial)
    (partial / STAMP).write_text(json.dumps(stamp))
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    print(ensure_folder(parser.parse_args(argv).out))


if __name__ == "__main__":
    main()
