"""The toy world: procedural scenes whose subject, caption and subject mask are known exactly.

A scene is a background of one of the protocol's 10 subcategories (sky gradient, ground, and a
scene-specific texture) plus, optionally, one flat-coloured subject (a `colour` x `shape` from a
small vocabulary) at a random position and size. Everything is a pure function of its keys:

    background(subcategory, seed, j)   the j-th subject-free scene of a subcategory (the references)
    toy_scene(seed, k)                 training/eval scene k: subcategory k % 10 on background
                                       (subcategory, seed, k // 10), plus a subject drawn from (seed, k)

so reference image j of a subcategory is exactly training scene 10 j + index(subcategory) without
its subject. The trained tiny models (bench/toy/) learn this world; metrics use its known colours.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from bench.config import ConfigError
from bench.datasets.base import DrawnDataset, PromptSpec

# Subject vocabulary: saturated colours kept far (RGB distance > 100) from every background colour.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "yellow": (245, 215, 0),
    "blue": (30, 60, 235),
    "purple": (160, 40, 190),
}
SHAPES: tuple[str, ...] = ("ball", "box", "cone")
MIN_SIZE, MAX_SIZE = 0.25, 0.45  # subject size as a fraction of the image side

# Per subcategory: caption phrase, sky top, sky at the horizon, ground colour, texture.
SCENES: dict[str, tuple[str, tuple[int, int, int], tuple[int, int, int], tuple[int, int, int], str]] = {
    "athletic_field": ("an athletic field", (110, 160, 225), (185, 210, 240), (70, 150, 70), "field_lines"),
    "industrial_area": ("an industrial area", (140, 145, 150), (195, 195, 190), (100, 100, 100), "chimneys"),
    "residential_area": ("a residential area", (115, 165, 225), (195, 215, 240), (120, 165, 100), "houses"),
    "downtown": ("a downtown street", (120, 150, 200), (190, 200, 220), (75, 75, 80), "towers"),
    "park": ("a park", (120, 170, 230), (205, 225, 245), (95, 175, 85), "round_trees"),
    "arid_area": ("a desert", (130, 175, 230), (240, 225, 200), (215, 185, 130), "dunes"),
    "inland_water_body": ("a lake", (120, 170, 225), (205, 220, 240), (60, 130, 140), "shore"),
    "ocean": ("the ocean", (100, 150, 215), (195, 215, 240), (40, 110, 135), "waves"),
    "forest": ("a forest", (120, 165, 210), (195, 210, 220), (55, 95, 45), "pines"),
    "mountain": ("the mountains", (110, 150, 220), (205, 215, 235), (105, 115, 95), "peaks"),
}
SUBCATEGORIES: tuple[str, ...] = tuple(SCENES)


@dataclass(frozen=True)
class ToyScene:
    """One drawn scene: the image, the same scene without subject, and the subject's exact mask."""

    image: np.ndarray  # uint8 [S, S, 3]
    background: np.ndarray  # uint8 [S, S, 3]: the image without its subject
    mask: np.ndarray  # bool [S, S]: True on the subject's pixels
    subcategory: str
    colour: str
    shape: str

    @property
    def caption(self) -> str:
        return caption(self.colour, self.shape, self.subcategory)


def caption(colour: str, shape: str, subcategory: str) -> str:
    """'a red ball in a forest': the subject word (the shape) is a word of the caption."""
    return f"a {colour} {shape} in {SCENES[subcategory][0]}"


def all_captions() -> list[tuple[str, str, str, str]]:
    """Every (caption, colour, shape, subcategory) of the world: 4 x 3 x 10 = 120."""
    return [(caption(c, s, sub), c, s, sub) for sub in SUBCATEGORIES for c in COLOURS for s in SHAPES]


def _rng(*key: object) -> np.random.Generator:
    digest = hashlib.sha256("|".join(map(str, ("toy_world", *key))).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def background(subcategory: str, seed: int, j: int, size: int = 64) -> np.ndarray:
    """The j-th subject-free scene of a subcategory, uint8 [size, size, 3]; a function of its keys only."""
    if subcategory not in SCENES:
        raise ConfigError(f"toy_world has no subcategory {subcategory!r}; known: {list(SUBCATEGORIES)}.")
    rng = _rng("background", seed, subcategory, j)
    _, sky_top, sky_low, ground, texture = SCENES[subcategory]
    jitter = lambda c: np.clip(np.array(c, float) + rng.normal(0, 8, 3), 0, 255)  # noqa: E731
    sky_top, sky_low, ground = jitter(sky_top), jitter(sky_low), jitter(ground)
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size  # [S, S] each, pixel centres in (0, 1)
    horizon = rng.uniform(0.35, 0.6)
    img = np.empty((size, size, 3))
    mix = np.clip(yy / horizon, 0, 1)[..., None]
    img[:] = (1 - mix) * sky_top + mix * sky_low
    below = yy >= horizon
    shade = 1.0 - 0.2 * (yy - horizon) / (1 - horizon)
    img[below] = ground * shade[below][:, None]
    TEXTURES[texture](img, rng, xx, yy, horizon)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def subject_mask(shape: str, cx: float, cy: float, side: float, size: int) -> np.ndarray:
    """bool [size, size]: the pixels whose centre lies inside the shape (centre cx, cy; side, in [0, 1] units)."""
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    h = side / 2
    if shape == "ball":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= h**2
    if shape == "box":
        return (np.abs(xx - cx) <= h * 0.9) & (np.abs(yy - cy) <= h * 0.9)
    if shape == "cone":  # apex up: the half-width grows from 0 at the top to h at the bottom
        return (yy >= cy - h) & (yy <= cy + h) & (np.abs(xx - cx) <= (yy - (cy - h)) / 2)
    raise ConfigError(f"toy_world has no shape {shape!r}; known: {list(SHAPES)}.")


def toy_scene(seed: int, k: int, size: int = 64) -> ToyScene:
    """Scene k: subcategory k % 10 on background (subcategory, seed, k // 10), with a subject from (seed, k)."""
    subcategory = SUBCATEGORIES[k % len(SUBCATEGORIES)]
    bg = background(subcategory, seed, k // len(SUBCATEGORIES), size)
    rng = _rng("subject", seed, k)
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    side = rng.uniform(MIN_SIZE, MAX_SIZE)
    cx, cy = rng.uniform(side / 2, 1 - side / 2, 2)
    mask = subject_mask(shape, cx, cy, side, size)
    rgb = np.clip(np.array(COLOURS[colour]) + rng.integers(-12, 13, 3), 0, 255).astype(np.uint8)
    image = bg.copy()
    image[mask] = rgb
    return ToyScene(image=image, background=bg, mask=mask, subcategory=subcategory, colour=colour, shape=shape)


def _field_lines(img, rng, xx, yy, horizon):
    for x0 in rng.uniform(0.15, 0.85, 2):
        img[(np.abs(xx - x0) < 0.02) & (yy > horizon)] = (225, 230, 225)
    img[(np.abs(yy - rng.uniform(horizon + 0.1, 0.9)) < 0.02)] = (225, 230, 225)


def _chimneys(img, rng, xx, yy, horizon):
    for _ in range(rng.integers(2, 4)):
        x0, w, h = rng.uniform(0, 0.85), rng.uniform(0.1, 0.2), rng.uniform(0.1, 0.3)
        img[(xx > x0) & (xx < x0 + w) & (yy > horizon - h) & (yy < horizon)] = rng.uniform(70, 110, 3)
        img[(np.abs(xx - x0 - w / 2) < 0.03) & (yy > horizon - h - 0.15) & (yy < horizon)] = (120, 85, 75)


def _houses(img, rng, xx, yy, horizon):
    for _ in range(rng.integers(2, 4)):
        x0, w, h = rng.uniform(0, 0.8), rng.uniform(0.12, 0.22), rng.uniform(0.08, 0.15)
        img[(xx > x0) & (xx < x0 + w) & (yy > horizon - h) & (yy < horizon + 0.02)] = (215, 200, 170)
        roof = (yy < horizon - h) & (yy > horizon - h - w / 2) & (np.abs(xx - x0 - w / 2) < (yy - horizon + h + w / 2))
        img[roof] = (130, 80, 65)


def _towers(img, rng, xx, yy, horizon):
    for _ in range(rng.integers(3, 6)):
        x0, w, h = rng.uniform(0, 0.9), rng.uniform(0.08, 0.16), rng.uniform(0.2, 0.5)
        img[(xx > x0) & (xx < x0 + w) & (yy > horizon - h) & (yy < horizon)] = rng.uniform(110, 160, 3)


def _round_trees(img, rng, xx, yy, horizon):
    for _ in range(rng.integers(3, 6)):
        cx, cy, r = rng.uniform(0, 1), horizon + rng.uniform(-0.05, 0.1), rng.uniform(0.05, 0.1)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r**2] = (45, 110, 45)


def _dunes(img, rng, xx, yy, horizon):
    phase, freq = rng.uniform(0, 6.28), rng.uniform(6, 12)
    crest = horizon + 0.1 + 0.05 * np.sin(xx * freq + phase)
    img[(yy > crest) & (yy < crest + 0.05)] *= 0.85


def _shore(img, rng, xx, yy, horizon):
    shore = horizon + rng.uniform(0.15, 0.3) + 0.03 * np.sin(xx * rng.uniform(4, 9))
    img[yy > shore] = (120, 160, 90)


def _waves(img, rng, xx, yy, horizon):
    crests = (np.sin(yy * rng.uniform(30, 45) + np.sin(xx * 6)) > 0.8) & (yy > horizon + 0.03)
    img[crests] = img[crests] * 0.7 + 60


def _pines(img, rng, xx, yy, horizon):
    for _ in range(rng.integers(4, 8)):
        cx, h, w = rng.uniform(0, 1), rng.uniform(0.15, 0.3), rng.uniform(0.05, 0.08)
        base = horizon + rng.uniform(0, 0.08)
        img[(yy < base) & (yy > base - h) & (np.abs(xx - cx) < w * (yy - base + h) / h)] = (30, 70, 35)


def _peaks(img, rng, xx, yy, horizon):
    for _ in range(rng.integers(2, 4)):
        cx, h, w = rng.uniform(0.1, 0.9), rng.uniform(0.2, 0.3), rng.uniform(0.2, 0.35)
        top = horizon - h
        tri = (yy > top + np.abs(xx - cx) * h / w) & (yy < horizon + 0.01)
        img[tri] = (125, 125, 130)
        img[tri & (yy < top + 0.07)] = (240, 240, 245)


TEXTURES = {
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


def toy_prompts(subcategory: str, count: int, offset: int) -> tuple[PromptSpec, ...]:
    """`count` prompts for a subcategory; prompt p (global index offset + i) cycles colours, then shapes."""
    out = []
    for p in range(offset, offset + count):
        colour = list(COLOURS)[p % len(COLOURS)]
        shape = SHAPES[(p // len(COLOURS)) % len(SHAPES)]
        out.append(PromptSpec(text=caption(colour, shape, subcategory), subject=shape))
    return tuple(out)


def toy_protocol(protocol: Mapping) -> dict:
    """The protocol with each subcategory's prompts replaced by as many toy prompts (see `toy_prompts`)."""
    subcategories, offset = [], 0
    for e in protocol["subcategories"]:
        if e["subcategory"] not in SCENES:
            raise ConfigError(f"protocol subcategory {e['subcategory']!r} has no toy scene; known: {SUBCATEGORIES}.")
        prompts = toy_prompts(e["subcategory"], len(e["prompts"]), offset)
        offset += len(e["prompts"])
        subcategories.append({**e, "prompts": [{"text": p.text, "subject": p.subject} for p in prompts]})
    return {**protocol, "subcategories": subcategories}


class ToyWorld(DrawnDataset):
    """References = subject-free toy scenes of the protocol's subcategories; prompts = toy subjects.

    Each subcategory gets as many prompts as the protocol gives it (34 in all); prompt p of the
    protocol order is colour p % 4 and shape (p // 4) % 3, so the 12 subjects recur evenly.
    """

    kind = "toy_world"

    def prompted(self, protocol: Mapping) -> dict:
        return toy_protocol(protocol)

    def draw(self, subcategory: str, k: int) -> np.ndarray:
        """A subject-free scene: the reference of toy scene 10 k + i (i = the subcategory's index)."""
        return background(subcategory, self.seed, k, self.image_size)
