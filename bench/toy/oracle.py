"""The oracle segmenter: where a toy subject is in an image, found from its known colour.

Toy subjects are flat, saturated colours that no background uses (every background pixel is more
than 79 RGB units from every subject colour, see tests/toy). A pixel belongs to colour c when c is
the nearest of the four subject colours and lies within `MAX_DISTANCE` of it. The subject's shape
is read from the largest such region: the fraction of its bounding box it fills (box ~ 1.0,
ball ~ pi/4 = 0.79, cone ~ 0.5).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from bench.config import ConfigError
from bench.datasets.toy_world import COLOURS, SHAPES

MAX_DISTANCE = 70.0  # RGB units; backgrounds stay above 79 from every subject colour
MIN_AREA = 0.01  # a region smaller than 1% of the image (41 px at 64x64) is no subject
FILL_BOX, FILL_BALL = 0.9, 0.65  # fill >= 0.9: box; >= 0.65: ball; else cone
PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)  # [4, 3]


def colour_region(image: np.ndarray, colour: str) -> np.ndarray:
    """bool [H, W]: pixels of `image` (uint8 [H, W, 3]) that read as subject colour `colour`."""
    if colour not in COLOURS:
        raise ConfigError(f"colour {colour!r} is not a toy subject colour; known: {list(COLOURS)}.")
    dist = np.linalg.norm(image.astype(np.float32)[:, :, None, :] - PALETTE, axis=-1)  # [H, W, 4]
    k = list(COLOURS).index(colour)
    return (dist.argmin(axis=-1) == k) & (dist[..., k] <= MAX_DISTANCE)


def largest_component(region: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a bool mask (all False if empty)."""
    labels, count = ndimage.label(region)
    if count == 0:
        return region.copy()
    sizes = ndimage.sum(region, labels, index=np.arange(1, count + 1))
    return labels == (1 + int(np.argmax(sizes)))


def region_shape(region: np.ndarray) -> str | None:
    """The shape whose bounding-box fill matches the largest component, or None below MIN_AREA."""
    blob = largest_component(region)
    area = int(blob.sum())
    if area < MIN_AREA * blob.size:
        return None
    rows, cols = np.nonzero(blob)
    fill = area / ((rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1))
    return "box" if fill >= FILL_BOX else "ball" if fill >= FILL_BALL else "cone"


def prompt_subject(prompt: str) -> tuple[str, str]:
    """(colour, shape) named by a toy-world prompt such as 'a red ball in a forest'."""
    words = prompt.lower().split()
    colours = [w for w in words if w in COLOURS]
    shapes = [w for w in words if w in SHAPES]
    if len(colours) != 1 or len(shapes) != 1:
        raise ConfigError(
            f"prompt {prompt!r} is not a toy-world prompt (one of {list(COLOURS)} and one of {list(SHAPES)}); "
            "the toy metrics need dataset=toy_world."
        )
    return colours[0], shapes[0]
