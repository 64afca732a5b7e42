"""The subject-truth interface: (image, subject word) -> probability map and binary mask, with provenance."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True, eq=False)
class SubjectTruth:
    """Where the subject is in one image, at image size."""

    probability: np.ndarray  # float32 [H, W] in [0, 1]
    mask: np.ndarray  # bool [H, W]: the subject's pixels
    source: str  # the segmenter's name, e.g. "oracle" or "clipseg"
    provenance: str  # model, revision, threshold: everything needed to say how the mask was made
    empty_reason: str = ""  # why the mask is empty ("" when it holds subject pixels)

    @property
    def is_empty(self) -> bool:
        return not bool(self.mask.any())


class SubjectSegmenter(Protocol):
    """A source of subject truth (config group `truth`)."""

    name: str
    provenance: str
    threshold: float | None  # the probability a mask pixel reaches; None when the mask is exact (the oracle)

    def __call__(self, image: np.ndarray, subject: str, prompt: str) -> SubjectTruth:
        """Truth for uint8 [H, W, 3] `image`, whose prompt is `prompt` and subject word `subject`."""
        ...


def latent_truth(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Fraction of subject pixels in each latent cell: bool [H, W] -> float32 [height, width] in [0, 1].

    H and W must be multiples of height and width (8x on SD1.5, 4x on the toy models).
    """
    big_h, big_w = mask.shape
    if big_h % height or big_w % width:
        raise ValueError(f"a {big_h}x{big_w} mask does not tile a {height}x{width} latent grid.")
    cells = mask.reshape(height, big_h // height, width, big_w // width)
    return cells.mean(axis=(1, 3)).astype(np.float32)


def cell_mask(mask: np.ndarray) -> np.ndarray:
    """bool [h, w]: the latent cells of a [h, w] or [C, h, w] mask in [0, 1] whose (channel mean) value is >= 0.5."""
    mask = np.asarray(mask, dtype=np.float32)
    return (mask.mean(axis=0) if mask.ndim == 3 else mask) >= 0.5


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks; NaN when both are empty."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else math.nan


def threshold_truth(
    probability: np.ndarray, threshold: float, subject: str, source: str, provenance: str
) -> SubjectTruth:
    """`SubjectTruth` with mask = probability >= threshold, and the reason when that mask is empty."""
    mask = probability >= threshold
    reason = ""
    if not mask.any():
        reason = (
            f"{source} finds no pixel of {subject!r} with probability >= {threshold:g} "
            f"(highest {float(probability.max()):.3g}): empty truth"
        )
    return SubjectTruth(probability, mask, source, provenance, empty_reason=reason)
