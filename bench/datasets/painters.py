"""Procedural scene painters shared by the drawn worlds (synthetic_places, bench/toy's toy_world).

A scene is a sky gradient over a shaded ground plus the structures of its kind (field lines, chimneys,
houses, ...). The painting is the same in every world; a `WorldStyle` holds one world's constants
(colours, counts, sizes, line widths). Painters draw from the generator in a fixed order, so an image
is a pure function of the generator it is given.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

RGB = tuple[int, int, int]
Range = tuple[float, float]  # low, high of a uniform draw
Count = tuple[int, int]  # low, high (exclusive) of an integer draw


@dataclass(frozen=True)
class Uniform:
    """A colour drawn anew for each structure: uniform per channel between two grey levels or two colours."""

    low: float | RGB
    high: float | RGB


Paint = RGB | Uniform


def colour_of(paint: Paint, rng: np.random.Generator) -> RGB | np.ndarray:
    """A structure's colour: the fixed one, or 3 uniform draws from `rng`."""
    return rng.uniform(paint.low, paint.high, 3) if isinstance(paint, Uniform) else paint


class Canvas(NamedTuple):
    """A float RGB image [S, S, 3] being painted, its pixel coordinates (each [S, S], in [0, 1]) and horizon."""

    img: np.ndarray
    xx: np.ndarray
    yy: np.ndarray
    horizon: float

    def block(self, x0: float, width: float, height: float, sink: float = 0.0) -> np.ndarray:
        """bool [S, S]: a box standing on the horizon (its foot `sink` below it)."""
        xx, yy, horizon = self.xx, self.yy, self.horizon
        return (xx > x0) & (xx < x0 + width) & (yy > horizon - height) & (yy < horizon + sink)


class Structure(Protocol):
    """What a scene kind adds on top of sky and ground."""

    def paint(self, canvas: Canvas, rng: np.random.Generator) -> None: ...


@dataclass(frozen=True)
class FieldLines:
    """White lines on the ground: `count` running away from the viewer, one across."""

    count: int
    x: Range
    half_width: float
    colour: RGB
    across_max: float  # the line across lies between horizon + 0.1 and this

    def paint(self, canvas: Canvas, rng: np.random.Generator) -> None:
        img, xx, yy, horizon = canvas
        for x0 in rng.uniform(*self.x, self.count):
            img[(np.abs(xx - x0) < self.half_width) & (yy > horizon)] = self.colour
        across = rng.uniform(horizon + 0.1, self.across_max)
        img[np.abs(yy - across) < self.half_width] = self.colour


@dataclass(frozen=True)
class Blocks:
    """Boxes standing on the horizon: their count and where each one's left edge, width and height fall."""

    count: Count
    x: Range
    width: Range
    height: Range

    def boxes(self, rng: np.random.Generator) -> Iterator[tuple[float, float, float]]:
        """(left edge, width, height) per box, drawn in that order."""
        for _ in range(rng.integers(*self.count)):
            yield rng.uniform(*self.x), rng.uniform(*self.width), rng.uniform(*self.height)


@dataclass(frozen=True)
class Chimneys(Blocks):
    """Factory blocks, each with a smoke stack rising from its middle."""

    wall: Paint
    stack_half_width: float
    stack_rise: float  # above the block
    stack_colour: RGB
    # |x - (x0 + w/2)| if True, else |x - x0 - w/2|: the same distance rounded two ways; each world keeps
    # the one it was drawn with, so its pixels stay bit-identical.
    stack_from_centre: bool

    def paint(self, canvas: Canvas, rng: np.random.Generator) -> None:
        img, xx, yy, horizon = canvas
        for x0, w, h in self.boxes(rng):
            img[canvas.block(x0, w, h)] = colour_of(self.wall, rng)
            to_stack = np.abs(xx - (x0 + w / 2) if self.stack_from_centre else xx - x0 - w / 2)
            stack = (to_stack < self.stack_half_width) & (yy > horizon - h - self.stack_rise) & (yy < horizon)
            img[stack] = self.stack_colour


@dataclass(frozen=True)
class Houses(Blocks):
    """Houses: a wall block a little into the ground under a roof as high as half the house's width."""

    wall: Paint
    roof: RGB

    def paint(self, canvas: Canvas, rng: np.random.Generator) -> None:
        img, xx, yy, horizon = canvas
        for x0, w, h in self.boxes(rng):
            img[canvas.block(x0, w, h, sink=0.02)] = colour_of(self.wall, rng)
            eaves = horizon - h
            roof = (yy < eaves) & (yy > eaves - w / 2) & (np.abs(xx - x0 - w / 2) < (yy - horizon + h + w / 2))
            img[roof] = self.roof


@dataclass(frozen=True)
class Towers(Blocks):
    """Tall blocks, optionally with a grid of lit windows."""

    wall: Paint
    windows: RGB | None

    def paint(self, canvas: Canvas, rng: np.random.Generator) -> None:
        img, xx, yy, _ = canvas
        for x0, w, h in self.boxes(rng):
            body = canvas.block(x0, w, h)
            img[body] = colour_of(self.wall, rng)
            if self.windows is not None:
                img[body & (np.sin(xx * 120) > 0.5) & (np.sin(yy * 120) > 0.5)] = self.windows


@dataclass(frozen=True)
class RoundTrees:
    """Disc-shaped tree crowns around the horizon."""

    count: Count
    below_horizon: Range  # centre's depth under the horizon
    radius: Range
    leaves: Paint

    def paint(self, canvas: Canvas, rng: np.random.Generator) -> None:
        img, xx, yy, horizon = canvas
        for _ in range(rng.integers(*self.count)):
            cx, cy, r = rng.uniform(0, 1), horizon + rng.uniform(*self.below_horizon), rng.uniform(*self.radius)
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < r**2] = colour_of(self.leaves, rng)


@dataclass(frozen=True)
class Dunes:
    """One darker wavy band across the sand."""

    frequency: Range
    below_horizon: float  # the crest's mean depth under the horizon
    band: float
    darken: float

    def paint(self, canvas: Canvas, rng: np.random.Generator) -> None:
        img, xx, yy, horizon = canvas
        phase, freq = rng.uniform(0, 6.28), rng.uniform(*self.frequency)
        crest = horizon + self.below_horizon + 0.05 * np.sin(xx * freq + phase)
        img[(yy > crest) & (yy < crest + self.band)] *= self.darken


@dataclass(frozen=True)
class Shore:
    """Land in the foreground beyond a wavy shoreline."""

    land: Paint

    def paint(self, canvas: Canvas, rng: np.random.Generator) -> None:
        img, xx, yy, horizon = canvas
        shore = horizon + rng.uniform(0.15, 0.3) + 0.03 * np.sin(xx * rng.uniform(4, 9))
        img[yy > shore] = colour_of(self.land, rng)


@dataclass(frozen=True)
class Waves:
    """Lighter wave crests on the water: a sine in depth, bent by a sine across."""

    frequency: Range
    bend: float  # frequency across
    threshold: float  # sine level above which a pixel is a crest
    below_horizon: float  # crests start this far under the horizon
    keep: float  # crest = keep * water + lift
    lift: float

    def paint(self, canvas: Canvas, rng: np.random.Generator) -> None:
        img, xx, yy, horizon = canvas
        waves = np.sin(yy * rng.uniform(*self.frequency) + np.sin(xx * self.bend))
        crests = (waves > self.threshold) & (yy > horizon + self.below_horizon)
        img[crests] = img[crests] * self.keep + self.lift


@dataclass(frozen=True)
class Pines:
    """Triangular pine trees standing around the horizon."""

    count: Count
    height: Range
    half_width: Range  # at the foot
    foot: Range  # depth under the horizon
    needles: Paint

    def paint(self, canvas: Canvas, rng: np.random.Generator) -> None:
        img, xx, yy, horizon = canvas
        for _ in range(rng.integers(*self.count)):
            cx, h, w = rng.uniform(0, 1), rng.uniform(*self.height), rng.uniform(*self.half_width)
            base = horizon + rng.uniform(*self.foot)
            tree = (yy < base) & (yy > base - h) & (np.abs(xx - cx) < w * (yy - base + h) / h)
            img[tree] = colour_of(self.needles, rng)


@dataclass(frozen=True)
class Peaks:
    """Two or three mountains on the horizon with snowy tops."""

    height: Range
    half_width: Range  # at the foot
    rock: Paint
    snow_depth: float  # below the summit, on its axis
    snow_slope: float  # the snow line's slope away from the axis
    snow: RGB

    def paint(self, canvas: Canvas, rng: np.random.Generator) -> None:
        img, xx, yy, horizon = canvas
        for _ in range(rng.integers(2, 4)):
            cx, h, w = rng.uniform(0.1, 0.9), rng.uniform(*self.height), rng.uniform(*self.half_width)
            top = horizon - h
            mountain = (yy > top + np.abs(xx - cx) * h / w) & (yy < horizon + 0.01)
            img[mountain] = colour_of(self.rock, rng)
            img[mountain & (yy < top + self.snow_depth + np.abs(xx - cx) * self.snow_slope)] = self.snow


@dataclass(frozen=True)
class WorldStyle:
    """One world's constants for `paint_scene`; `structures` maps each scene kind to its painter."""

    colour_jitter: float  # std of the per-image normal noise on sky and ground colours
    horizon: Range
    pixel_offset: float  # where a pixel is sampled: 0 = its top-left corner, 0.5 = its centre
    ground_shade: float  # how much darker the ground gets from horizon to the bottom edge
    structures: Mapping[str, Structure]


def paint_scene(
    rng: np.random.Generator, style: WorldStyle, colours: tuple[RGB, RGB, RGB], kind: str, size: int
) -> np.ndarray:
    """float [size, size, 3]: sky (top, horizon) and ground `colours`, jittered, then the structures of `kind`."""
    sky_top, sky_low, ground = (_jittered(c, rng, style.colour_jitter) for c in colours)
    yy, xx = (np.mgrid[0:size, 0:size] + style.pixel_offset) / size  # [S, S] each
    horizon = rng.uniform(*style.horizon)
    img = _sky_and_ground(sky_top, sky_low, ground, yy, horizon, style.ground_shade)
    style.structures[kind].paint(Canvas(img, xx, yy, horizon), rng)
    return img


def _jittered(colour: RGB, rng: np.random.Generator, std: float) -> np.ndarray:
    return np.clip(np.array(colour, float) + rng.normal(0, std, 3), 0, 255)


def _sky_and_ground(
    sky_top: np.ndarray, sky_low: np.ndarray, ground: np.ndarray, yy: np.ndarray, horizon: float, shade_depth: float
) -> np.ndarray:
    """Sky blending from top to horizon colour, ground below the horizon darkening towards the viewer."""
    img = np.empty((*yy.shape, 3))
    mix = np.clip(yy / horizon, 0, 1)[..., None]
    img[:] = (1 - mix) * sky_top + mix * sky_low
    below = yy >= horizon
    shade = 1.0 - shade_depth * (yy - horizon) / max(1 - horizon, 1e-6)
    img[below] = ground * shade[below][:, None]
    return img
