"""Offline stand-in for Places365: procedurally drawn scenes for the protocol's subcategories.

Each scene is sky + ground + a few scene-specific structures, with colours and positions drawn
from a generator seeded by (seed, subcategory, k) alone, so image k never depends on how many
images, which subcategories or which order were asked for.
"""

from __future__ import annotations

import hashlib

import numpy as np

from bench.datasets.base import DrawnDataset
from bench.datasets.painters import (
    Chimneys,
    Dunes,
    FieldLines,
    Houses,
    Peaks,
    Pines,
    RoundTrees,
    Shore,
    Towers,
    Uniform,
    Waves,
    WorldStyle,
    paint_scene,
)
from bench.sd.errors import ConfigError

# Per subcategory: sky top colour, sky horizon colour, ground colour, structure kind.
SCENE_STYLES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int], str]] = {
    "athletic_field": ((70, 130, 220), (170, 200, 240), (60, 150, 60), "field_lines"),
    "industrial_area": ((120, 130, 140), (190, 190, 185), (95, 95, 95), "chimneys"),
    "residential_area": ((90, 150, 230), (190, 215, 245), (110, 160, 90), "houses"),
    "downtown": ((80, 120, 190), (180, 195, 220), (70, 70, 75), "towers"),
    "park": ((100, 160, 235), (200, 225, 250), (80, 170, 70), "round_trees"),
    "arid_area": ((120, 170, 230), (240, 220, 190), (220, 185, 120), "dunes"),
    "inland_water_body": ((100, 160, 230), (200, 220, 240), (60, 120, 170), "shore"),
    "ocean": ((60, 120, 210), (190, 215, 240), (20, 70, 140), "waves"),
    "forest": ((110, 160, 210), (190, 210, 220), (50, 90, 40), "pines"),
    "mountain": ((90, 140, 220), (200, 215, 235), (100, 110, 90), "peaks"),
}


def scene_rng(seed: int, subcategory: str, k: int) -> np.random.Generator:
    """The generator of scene k: a function of (seed, subcategory, k) only."""
    digest = hashlib.sha256(f"synthetic_places|{seed}|{subcategory}|{k}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


# How synthetic_places paints its scenes (see bench.datasets.painters).
PLACES_STYLE = WorldStyle(
    colour_jitter=12.0,
    horizon=(0.45, 0.7),
    pixel_offset=0.0,
    ground_shade=0.25,
    structures={
        "field_lines": FieldLines(count=3, x=(0.1, 0.9), half_width=0.01, colour=(235, 235, 235), across_max=0.95),
        "chimneys": Chimneys(
            count=(2, 5),
            x=(0, 0.9),
            width=(0.05, 0.2),
            height=(0.1, 0.35),
            wall=Uniform(60, 110),
            stack_half_width=0.02,
            stack_rise=0.2,
            stack_colour=(150, 60, 50),
            stack_from_centre=True,
        ),
        "houses": Houses(
            count=(2, 5), x=(0, 0.85), width=(0.1, 0.2), height=(0.08, 0.15), wall=Uniform(150, 230), roof=(150, 50, 40)
        ),
        "towers": Towers(
            count=(3, 7),
            x=(0, 0.9),
            width=(0.06, 0.15),
            height=(0.2, 0.6),
            wall=Uniform(90, 160),
            windows=(230, 220, 140),
        ),
        "round_trees": RoundTrees(
            count=(3, 7), below_horizon=(-0.05, 0.15), radius=(0.04, 0.1), leaves=Uniform((20, 90, 20), (60, 140, 50))
        ),
        "dunes": Dunes(frequency=(6, 14), below_horizon=0.0, band=0.03, darken=0.8),
        "shore": Shore(land=Uniform((90, 140, 60), (130, 170, 90))),
        "waves": Waves(frequency=(60, 90), bend=8, threshold=0.9, below_horizon=0.0, keep=0.6, lift=100),
        "pines": Pines(
            count=(5, 10),
            height=(0.15, 0.35),
            half_width=(0.04, 0.08),
            foot=(0, 0.1),
            needles=Uniform((15, 60, 20), (40, 100, 40)),
        ),
        "peaks": Peaks(
            height=(0.2, 0.4),
            half_width=(0.2, 0.4),
            rock=Uniform(100, 140),
            snow_depth=0.06,
            snow_slope=0.2,
            snow=(245, 245, 250),
        ),
    },
)


def draw_scene(subcategory: str, seed: int, k: int, size: int) -> np.ndarray:
    """Scene k of a subcategory as uint8 [size, size, 3]."""
    if subcategory not in SCENE_STYLES:
        raise ConfigError(f"no synthetic style for subcategory {subcategory!r}; known: {sorted(SCENE_STYLES)}.")
    rng = scene_rng(seed, subcategory, k)
    sky_top, sky_low, ground, kind = SCENE_STYLES[subcategory]
    img = paint_scene(rng, PLACES_STYLE, (sky_top, sky_low, ground), kind, size)
    img += rng.normal(0, 3, img.shape)  # film grain, so no two scenes share pixels
    return np.clip(img, 0, 255).astype(np.uint8)


class SyntheticPlaces(DrawnDataset):
    """Deterministic synthetic scenes with the Places365 protocol's subcategories and prompts."""

    kind = "synthetic"

    def draw(self, subcategory: str, k: int) -> np.ndarray:
        return draw_scene(subcategory, self.seed, k, self.image_size)
