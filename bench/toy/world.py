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

from bench.datasets.base import DrawnDataset, PromptSpec
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

# How the toy world paints its backgrounds (see bench.datasets.painters): pixel centres, no film grain,
# and fixed structure colours that stay clear of the subject colours.
TOY_STYLE = WorldStyle(
    colour_jitter=8.0,
    horizon=(0.35, 0.6),
    pixel_offset=0.5,
    ground_shade=0.2,
    structures={
        "field_lines": FieldLines(count=2, x=(0.15, 0.85), half_width=0.02, colour=(225, 230, 225), across_max=0.9),
        "chimneys": Chimneys(
            count=(2, 4),
            x=(0, 0.85),
            width=(0.1, 0.2),
            height=(0.1, 0.3),
            wall=Uniform(70, 110),
            stack_half_width=0.03,
            stack_rise=0.15,
            stack_colour=(120, 85, 75),
            stack_from_centre=False,
        ),
        "houses": Houses(
            count=(2, 4), x=(0, 0.8), width=(0.12, 0.22), height=(0.08, 0.15), wall=(215, 200, 170), roof=(130, 80, 65)
        ),
        "towers": Towers(
            count=(3, 6), x=(0, 0.9), width=(0.08, 0.16), height=(0.2, 0.5), wall=Uniform(110, 160), windows=None
        ),
        "round_trees": RoundTrees(count=(3, 6), below_horizon=(-0.05, 0.1), radius=(0.05, 0.1), leaves=(45, 110, 45)),
        "dunes": Dunes(frequency=(6, 12), below_horizon=0.1, band=0.05, darken=0.85),
        "shore": Shore(land=(120, 160, 90)),
        "waves": Waves(frequency=(30, 45), bend=6, threshold=0.8, below_horizon=0.03, keep=0.7, lift=60),
        "pines": Pines(count=(4, 8), height=(0.15, 0.3), half_width=(0.05, 0.08), foot=(0, 0.08), needles=(30, 70, 35)),
        "peaks": Peaks(
            height=(0.2, 0.3),
            half_width=(0.2, 0.35),
            rock=(125, 125, 130),
            snow_depth=0.07,
            snow_slope=0.0,
            snow=(240, 240, 245),
        ),
    },
)


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
    img = paint_scene(rng, TOY_STYLE, (sky_top, sky_low, ground), texture, size)
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
