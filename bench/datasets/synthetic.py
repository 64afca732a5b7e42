"""Offline stand-in for Places365: procedurally drawn scenes for the protocol's subcategories.

Each scene is sky + ground + a few scene-specific structures, with colours and positions drawn
from a generator seeded by (seed, subcategory, k) alone, so image k never depends on how many
images, which subcategories or which order were asked for.
"""

from __future__ import annotations

import hashlib

import numpy as np

from bench.config import ConfigError
from bench.datasets.base import DrawnDataset

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


def draw_scene(subcategory: str, seed: int, k: int, size: int) -> np.ndarray:
    """Scene k of a subcategory as uint8 [size, size, 3]."""
    if subcategory not in SCENE_STYLES:
        raise ConfigError(f"no synthetic style for subcategory {subcategory!r}; known: {sorted(SCENE_STYLES)}.")
    rng = scene_rng(seed, subcategory, k)
    sky_top, sky_low, ground, kind = SCENE_STYLES[subcategory]
    jitter = lambda c: np.clip(np.array(c, float) + rng.normal(0, 12, 3), 0, 255)  # noqa: E731
    sky_top, sky_low, ground = jitter(sky_top), jitter(sky_low), jitter(ground)
    yy, xx = np.mgrid[0:size, 0:size] / size  # [S, S] each, in [0, 1)
    horizon = rng.uniform(0.45, 0.7)
    img = np.empty((size, size, 3))
    mix = np.clip(yy / horizon, 0, 1)[..., None]
    img[:] = (1 - mix) * sky_top + mix * sky_low
    below = yy >= horizon
    shade = 1.0 - 0.25 * (yy - horizon) / max(1 - horizon, 1e-6)
    img[below] = ground * shade[below][:, None]
    STRUCTURES[kind](img, rng, xx, yy, horizon)
    img += rng.normal(0, 3, img.shape)  # film grain, so no two scenes share pixels
    return np.clip(img, 0, 255).astype(np.uint8)


def _field_lines(img, rng, xx, yy, horizon):
    for x0 in rng.uniform(0.1, 0.9, 3):
        img[(np.abs(xx - x0) < 0.01) & (yy > horizon)] = (235, 235, 235)
    img[(np.abs(yy - rng.uniform(horizon + 0.1, 0.95)) < 0.01)] = (235, 235, 235)


def _chimneys(img, rng, xx, yy, horizon):
    for _ in range(rng.integers(2, 5)):
        x0, w, h = rng.uniform(0, 0.9), rng.uniform(0.05, 0.2), rng.uniform(0.1, 0.35)
        img[(xx > x0) & (xx < x0 + w) & (yy > horizon - h) & (yy < horizon)] = rng.uniform(60, 110, 3)
        cx = x0 + w / 2
        img[(np.abs(xx - cx) < 0.02) & (yy > horizon - h - 0.2) & (yy < horizon)] = (150, 60, 50)


def _houses(img, rng, xx, yy, horizon):
    for _ in range(rng.integers(2, 5)):
        x0, w, h = rng.uniform(0, 0.85), rng.uniform(0.1, 0.2), rng.uniform(0.08, 0.15)
        body = (xx > x0) & (xx < x0 + w) & (yy > horizon - h) & (yy < horizon + 0.02)
        img[body] = rng.uniform(150, 230, 3)
        roof = (yy < horizon - h) & (yy > horizon - h - w / 2) & (np.abs(xx - x0 - w / 2) < (yy - horizon + h + w / 2))
        img[roof] = (150, 50, 40)


def _towers(img, rng, xx, yy, horizon):
    for _ in range(rng.integers(3, 7)):
        x0, w, h = rng.uniform(0, 0.9), rng.uniform(0.06, 0.15), rng.uniform(0.2, 0.6)
        body = (xx > x0) & (xx < x0 + w) & (yy > horizon - h) & (yy < horizon)
        img[body] = rng.uniform(90, 160, 3)
        windows = body & (np.sin(xx * 120) > 0.5) & (np.sin(yy * 120) > 0.5)
        img[windows] = (230, 220, 140)


def _round_trees(img, rng, xx, yy, horizon):
    for _ in range(rng.integers(3, 7)):
        cx, cy, r = rng.uniform(0, 1), horizon + rng.uniform(-0.05, 0.15), rng.uniform(0.04, 0.1)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r**2] = rng.uniform([20, 90, 20], [60, 140, 50])


def _dunes(img, rng, xx, yy, horizon):
    phase, freq = rng.uniform(0, 6.28), rng.uniform(6, 14)
    crest = horizon + 0.05 * np.sin(xx * freq + phase)
    img[(yy > crest) & (yy < crest + 0.03)] *= 0.8


def _shore(img, rng, xx, yy, horizon):
    shore = horizon + rng.uniform(0.15, 0.3) + 0.03 * np.sin(xx * rng.uniform(4, 9))
    img[yy > shore] = rng.uniform([90, 140, 60], [130, 170, 90])


def _waves(img, rng, xx, yy, horizon):
    crests = (np.sin(yy * rng.uniform(60, 90) + np.sin(xx * 8)) > 0.9) & (yy > horizon)
    img[crests] = img[crests] * 0.6 + 100


def _pines(img, rng, xx, yy, horizon):
    for _ in range(rng.integers(5, 10)):
        cx, h, w = rng.uniform(0, 1), rng.uniform(0.15, 0.35), rng.uniform(0.04, 0.08)
        base = horizon + rng.uniform(0, 0.1)
        tri = (yy < base) & (yy > base - h) & (np.abs(xx - cx) < w * (yy - base + h) / h)
        img[tri] = rng.uniform([15, 60, 20], [40, 100, 40])


def _peaks(img, rng, xx, yy, horizon):
    for _ in range(rng.integers(2, 4)):
        cx, h, w = rng.uniform(0.1, 0.9), rng.uniform(0.2, 0.4), rng.uniform(0.2, 0.4)
        top = horizon - h
        tri = (yy > top + np.abs(xx - cx) * h / w) & (yy < horizon + 0.01)
        img[tri] = rng.uniform(100, 140, 3)
        img[tri & (yy < top + 0.06 + np.abs(xx - cx) * 0.2)] = (245, 245, 250)


STRUCTURES = {
    "field_lines": _field_lines,
    "chimneys": _chimneys,
    "houses": _houses,
    "towers": _towers,
    "round_trees": _round_trees,
    "dunes": _dunes,
    "shore": _shore,
    "waves": _waves,
    "pines": _pines,
    "peaks": _peaks,
}


class SyntheticPlaces(DrawnDataset):
    """Deterministic synthetic scenes with the Places365 protocol's subcategories and prompts."""

    kind = "synthetic"

    def draw(self, subcategory: str, k: int) -> np.ndarray:
        return draw_scene(subcategory, self.seed, k, self.image_size)
