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
