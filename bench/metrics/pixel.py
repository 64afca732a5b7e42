"""Simple, honest pixel-space distances to the reference image."""

from __future__ import annotations

import numpy as np

from bench.metrics import PIXEL_MAD
from bench.metrics.common import SampleContext


class PixelMAD:
    """Mean absolute difference of uint8 RGB values to the reference, in [0, 255] (lower = closer)."""

    name = PIXEL_MAD
    provenance = "numpy; mean |gen - ref| over RGB uint8 pixels at model resolution; 0-255"

    def __call__(self, sample: SampleContext) -> dict[str, float]:
        diff = np.abs(sample.generated.astype(np.int16) - sample.reference.astype(np.int16))
        return {self.name: float(diff.mean())}
