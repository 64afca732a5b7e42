"""The toy world's CLIP as a scorer: an open_clip model stored as a config and float16 safetensors.

`models/toy/clip/open_clip_config.json` + `open_clip_model.safetensors` (float16 on disk, float32 in
memory). Images are fed at 64x64 (bilinear, antialiased), scaled to [-1, 1]; text goes through
open_clip's tokenizer (the CLIP BPE vocabulary, zero padded). Trained by bench/toy/train_clip.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from PIL import Image
from safetensors.torch import load_file

from bench.config import REPO_ROOT
from bench.sd.errors import ConfigError

CONFIG_FILE, WEIGHTS_FILE = "open_clip_config.json", "open_clip_model.safetensors"
DEFAULT_FOLDER = REPO_ROOT / "models" / "toy" / "clip"
IMAGE_SIZE = 64  # pixels of the toy CLIP's input
PREPROCESSING = f"RGB uint8 -> bilinear (antialiased) resize to {IMAGE_SIZE} px, scaled to [-1, 1]"


def new_clip(config: dict) -> open_clip.CLIP:
    return open_clip.CLIP(
        embed_dim=config["embed_dim"],
        vision_cfg=CLIPVisionCfg(**config["vision_cfg"]),
        text_cfg=CLIPTextCfg(**config["text_cfg"]),
    )


def toy_clip_folder(folder: str | Path | None = None) -> Path:
    """`folder` (default models/toy/clip), checked to hold the toy CLIP's weights (before any expensive work)."""
    folder = Path(folder) if folder is not None else DEFAULT_FOLDER
    if not (folder / WEIGHTS_FILE).is_file():
        raise ConfigError(
            f"toy CLIP weights not found: {folder / WEIGHTS_FILE}. They ship with the repository in models/toy/clip; "
            "restore them from git, retrain with `make toy-models`, or point the scorer at another folder "
            "(metrics.per_sample.subject_ok.clip_folder)."
        )
    return folder


def load_toy_clip(folder: str | Path | None = None) -> open_clip.CLIP:
    """The trained toy CLIP (float32, eval mode) from `folder` (default models/toy/clip)."""
    folder = toy_clip_folder(folder)
    model = new_clip(json.loads((folder / CONFIG_FILE).read_text()))
    state = {k: v.float() for k, v in load_file(str(folder / WEIGHTS_FILE)).items()}
    model.load_state_dict(state, strict=False)  # strict=False: non-float buffers (attn_mask) are rebuilt
    missing = [k for k, v in model.state_dict().items() if v.is_floating_point() and k not in state]
    if missing:
        raise ConfigError(f"toy CLIP weights in {folder} lack {missing[:5]}; retrain with `make toy-models`.")
    return model.eval().requires_grad_(False)


def images_to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] (numpy) or [B, 3, H, W] (torch) -> float [B, 3, 64, 64] in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2) if isinstance(images, np.ndarray) else images
    x = x.float() / 127.5 - 1.0
    if x.shape[-1] != IMAGE_SIZE:
        x = torch.nn.functional.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True)
    return x


def preprocess(image: Image.Image) -> torch.Tensor:
    """PIL image -> float [3, 64, 64] in [-1, 1] (the toy CLIP's input)."""
    return images_to_input(np.asarray(image.convert("RGB"))[None])[0]


def scoring_components(folder: str | Path | None = None) -> tuple[open_clip.CLIP, Callable, Callable]:
    """(model, preprocess, tokenizer) for bench.metrics.clip_score (metrics.clip=toy)."""
    return load_toy_clip(folder), preprocess, open_clip.tokenizer.SimpleTokenizer(context_length=77)
