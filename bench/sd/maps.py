"""A recorded subject map as data: what a method's chain hands the attribution study (light: numpy only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class MapRecord:
    """One continuous, pre-threshold subject map recorded at a scoring step (method.attribution.record).

    A map is either one cross-attention layer's term (`layer` set), or the sum over a layer set that
    drove the mask (`layer_set` set, `layer` None), or a map of a layer-free kind (noise_diff: both None).
    """

    kind: str  # the score kind: gradsam, attention_only, daam, noise_diff
    layer: str | None  # the cross-attention layer of a per-layer term; None for a whole set or a layer-free kind
    layer_set: str | None  # the layer set whose sum this map is (e.g. "last", "res8", "a,b"); None otherwise
    index: int  # schedule index k of the injection the map was computed for
    timestep: int  # t of the UNet call the map comes from
    side: int  # the map's native grid side: the layer's resolution (the latent's for a set or a layer-free kind)
    values: np.ndarray  # float32 [C, h, w] at the latent grid


@dataclass(frozen=True, eq=False)
class LatentRecord:
    """The chain's latent z_t entering denoising step `index` (method.attribution.latents): with the prompt, any
    map of any kind can be recomputed later at exactly the inputs the chain saw (the study's sanity checks)."""

    index: int  # denoising step i of the truncated schedule
    timestep: int  # t_i
    values: np.ndarray  # float32 [C, h, w]


def centre_prior(height: int, width: int) -> np.ndarray:
    """Minus the distance of each cell centre to the grid centre [h, w] (higher = more central): a data-free
    map, strong where subjects sit mid-frame."""
    rows = (np.arange(height) + 0.5) / height - 0.5
    cols = (np.arange(width) + 0.5) / width - 0.5
    return -np.sqrt(rows[:, None] ** 2 + cols[None, :] ** 2)
