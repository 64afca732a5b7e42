"""The toy open_clip model: the offline CLIP scorer of the toy world, and its zero-shot classifier.

Stored as `models/toy/clip/open_clip_config.json` + `open_clip_model.safetensors` (float16 on disk,
float32 in memory; training ends by rounding the weights to float16, so what was evaluated is what
is stored). Images are fed at 64x64, scaled to [-1, 1]; text goes through open_clip's tokenizer
(the CLIP BPE vocabulary, zero padded).
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
from safetensors.torch import load_file, save_file

from bench.config import ConfigError
from bench.datasets.toy_world import all_captions
from bench.toy import MODEL_DIR
from bench.toy.architecture import CLIP, IMAGE_SIZE

CONFIG_FILE, WEIGHTS_FILE = "open_clip_config.json", "open_clip_model.safetensors"


def new_clip(config: dict = CLIP) -> open_clip.CLIP:
    return open_clip.CLIP(
        embed_dim=config["embed_dim"],
        vision_cfg=CLIPVisionCfg(**config["vision_cfg"]),
        text_cfg=CLIPTextCfg(**config["text_cfg"]),
    )


def round_to_fp16(model: torch.nn.Module) -> None:
    """Round every weight to float16 precision in place (kept float32), as it will be stored."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())


def save_clip(model: open_clip.CLIP, folder: Path, config: dict = CLIP) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items() if v.is_floating_point()}
    save_file(state, str(folder / WEIGHTS_FILE))


def toy_clip_folder(folder: str | Path | None = None) -> Path:
    """`folder` (default models/toy/clip), checked to hold the toy CLIP's weights (before any expensive work)."""
    folder = Path(folder) if folder is not None else MODEL_DIR / "clip"
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


class ZeroShot:
    """Zero-shot toy classifier: the nearest of the world's 120 captions (4 colours x 3 shapes x 10 scenes)."""

    def __init__(self, model: open_clip.CLIP):
        self.model = model
        self.entries = all_captions()  # (caption, colour, shape, subcategory)
        with torch.no_grad():
            text = model.encode_text(open_clip.tokenize([c for c, *_ in self.entries]))
        self.text = torch.nn.functional.normalize(text, dim=-1)  # [120, E]

    @torch.no_grad()
    def __call__(self, images: np.ndarray | torch.Tensor) -> list[dict]:
        """Per image: predicted colour, shape, subcategory and caption, with the cosine of the best caption."""
        feats = torch.nn.functional.normalize(self.model.encode_image(images_to_input(images)), dim=-1)
        cos = feats @ self.text.T  # [B, 120]
        best = cos.argmax(dim=1)
        out = []
        for b, i in enumerate(best.tolist()):
            caption, colour, shape, sub = self.entries[i]
            out.append(
                {"caption": caption, "colour": colour, "shape": shape, "subcategory": sub, "cos": float(cos[b, i])}
            )
        return out
