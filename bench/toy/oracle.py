"""The oracle segmenter: where a toy subject is in an image, found from its known colour.

Toy subjects are flat, saturated colours that no background uses (every background pixel is more
than 79 RGB units from every subject colour, see tests/toy). A pixel belongs to colour c when c is
the nearest of the four subject colours and lies within `MAX_DISTANCE` of it. The subject's shape
is read from the largest such region: of the world's three shapes drawn with the region's area and
centroid (`subject_mask`), the one that overlaps it most (IoU). The whole silhouette decides, so the
soft, ragged rims of decoded images sway it less than they sway a bounding-box fill ratio (which
misread 6.7% of true shapes after a VAE round trip; docs/toy_world.md).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from bench.sd.errors import ConfigError
from bench.toy.world import COLOURS, SHAPES, subject_mask

MAX_DISTANCE = 70.0  # RGB units; backgrounds stay above 79 from every subject colour
MIN_AREA = 0.01  # a region smaller than 1% of the image (41 px at 64x64) is no subject
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


# side of each shape with unit area (subject_mask geometry), and its centroid's offset below the centre
SIDE_PER_ROOT_AREA = {"ball": 2 / np.sqrt(np.pi), "box": 1 / 0.9, "cone": np.sqrt(2)}
CENTROID_BELOW_CENTRE = {"ball": 0.0, "box": 0.0, "cone": 1 / 6}  # x side; a triangle's centroid: 2/3 down


def shape_overlaps(blob: np.ndarray) -> dict[str, float]:
    """IoU of a bool [S, S] blob with each ideal shape of its area whose centroid is the blob's."""
    size = blob.shape[0]
    rows, cols = np.nonzero(blob)
    cx, cy = (cols.mean() + 0.5) / size, (rows.mean() + 0.5) / size
    out = {}
    for shape in SHAPES:
        side = SIDE_PER_ROOT_AREA[shape] * np.sqrt(len(rows)) / size
        ideal = subject_mask(shape, cx, cy - CENTROID_BELOW_CENTRE[shape] * side, side, size)
        out[shape] = float((ideal & blob).sum() / (ideal | blob).sum())
    return out


def region_shape(region: np.ndarray) -> str | None:
    """The shape that best overlaps the largest component (`shape_overlaps`), or None below MIN_AREA."""
    blob = largest_component(region)
    if blob.sum() < MIN_AREA * blob.size:
        return None
    overlaps = shape_overlaps(blob)
    return max(overlaps, key=overlaps.get)


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
