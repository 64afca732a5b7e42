"""The toy world's subject truth: the oracle segmenter (bench/toy/oracle.py) behind the `SubjectSegmenter` interface.

Minimal version for issue #14 (truth=oracle); the attribution study's issue (#13) owns this class.
"""

from __future__ import annotations

import numpy as np

from bench.toy.oracle import MAX_DISTANCE, colour_region, prompt_subject
from bench.truth.base import SubjectTruth


class OracleTruth:
    """Subject truth of a toy-world image: the pixels of the prompt's colour (exact, no model)."""

    name = "oracle"
    threshold = None  # the mask is the colour region itself, not a thresholded probability
    provenance = (
        "oracle: toy world; pixels whose nearest subject colour is the prompt's, within "
        f"{MAX_DISTANCE:g} RGB units (bench/toy/oracle.py); probability = the mask"
    )

    def __call__(self, image: np.ndarray, subject: str, prompt: str) -> SubjectTruth:
        colour, _shape = prompt_subject(prompt)
        mask = colour_region(image, colour)  # bool [H, W]
        reason = "" if mask.any() else f"oracle finds no {colour} pixel in the image: empty truth"
        return SubjectTruth(mask.astype(np.float32), mask, self.name, self.provenance, empty_reason=reason)
