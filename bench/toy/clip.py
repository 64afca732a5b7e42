"""The toy open_clip model's training-side helpers and its zero-shot classifier.

Loading and preprocessing live with the scorer (bench/metrics/toy_clip.py). Training ends by rounding
the weights to float16, so what was evaluated is what is stored.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import torch
from safetensors.torch import save_file

from bench.metrics.toy_clip import CONFIG_FILE, WEIGHTS_FILE, images_to_input
from bench.toy.architecture import CLIP
from bench.toy.world import all_captions


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
