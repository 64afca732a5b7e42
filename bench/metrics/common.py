"""What every per-sample metric shares: the sample context it reads, its protocol, NaN results with a reason.

A per-sample metric is a callable with a `name` and a `provenance` string that maps one
`SampleContext` to row columns. It never sees the harness's work unit: everything it may read about
the sample is in the context. A metric with weights also has `prepare()`, which loads them: a run calls
it before its first sample, so weights that cannot load stop the run (MissingWeightsError) instead of
leaving NaN in every row; `__call__` itself never raises on a bad sample (NaN with a reason).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from PIL import Image

from bench.sd.device import resolve_device

__all__ = ["PerSampleMetric", "SampleContext", "nan_result", "resolve_device"]


@dataclass(frozen=True, eq=False)
class SampleContext:
    """One generated sample as a metric sees it."""

    generated: np.ndarray  # uint8 [H, W, 3], the method's image
    reference: np.ndarray | None  # uint8 [H, W, 3], the reference as the method saw it (model resolution)
    prompt: str = ""
    subject: str = ""
    image_id: str = ""
    seed: int = 0
    masks: Mapping[str, np.ndarray] = field(default_factory=dict)  # name -> [h, w] or [C, h, w] in [0, 1]
    native_reference: Callable[[], Image.Image] | None = None  # the reference file as stored (any size, mode)


class PerSampleMetric(Protocol):
    """The protocol of conf/metrics/*.yaml `per_sample` entries."""

    name: str
    provenance: str

    def __call__(self, sample: SampleContext) -> dict: ...


def nan_result(name: str, reason: str, keys: list[str] | None = None) -> dict:
    """Every value of the metric NaN, plus `<name>_nan_reason` (so the row keeps its other metrics)."""
    return {**{k: math.nan for k in (keys or [name])}, f"{name}_nan_reason": reason}
