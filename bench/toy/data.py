"""Toy-world training and evaluation sets as tensors (drawn once, held in memory)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bench.toy.world import COLOURS, SHAPES, SUBCATEGORIES, all_captions, toy_scene

TRAIN_SEED = 1  # training scenes; the benchmark's references use seed 0, held-out evaluation seed 2
HELDOUT_SEED = 2
CAPTIONS = [c for c, *_ in all_captions()]  # index = caption id; 120 captions
CAPTION_ID = {c: i for i, c in enumerate(CAPTIONS)}


@dataclass
class ToySet:
    images: torch.Tensor  # uint8 [N, 3, S, S]
    masks: torch.Tensor  # bool [N, S, S]
    caption_ids: torch.Tensor  # long [N], into CAPTIONS
    colour_ids: torch.Tensor  # long [N], into COLOURS
    shape_ids: torch.Tensor  # long [N], into SHAPES
    subcategory_ids: torch.Tensor  # long [N], into SUBCATEGORIES

    def __len__(self) -> int:
        return len(self.images)


def toy_set(seed: int, count: int, size: int = 64) -> ToySet:
    """Scenes 0..count-1 of `seed` (see bench.toy.world.toy_scene)."""
    scenes = [toy_scene(seed, k, size) for k in range(count)]
    colours, subs = list(COLOURS), list(SUBCATEGORIES)
    return ToySet(
        images=torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).contiguous(),
        masks=torch.from_numpy(np.stack([s.mask for s in scenes])),
        caption_ids=torch.tensor([CAPTION_ID[s.caption] for s in scenes]),
        colour_ids=torch.tensor([colours.index(s.colour) for s in scenes]),
        shape_ids=torch.tensor([SHAPES.index(s.shape) for s in scenes]),
        subcategory_ids=torch.tensor([subs.index(s.subcategory) for s in scenes]),
    )


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, S, S] -> float [-1, 1]."""
    return images.float() / 127.5 - 1.0
