"""Subject truth per sample in a run: one npz beside the sample's masks, `truth_*` row columns, and row pairing.

A run that records truth (`truth_record.enabled`) segments each generated image once. The file
`masks/<sample_key>/truth.npz` holds, at image resolution, `mask` (bool [H, W]) and `probability`
(float16 [H, W]); at latent resolution, `latent` (float32 [h, w], the fraction of subject pixels per
latent cell); with a second threshold, `mask_alt`; with a second source, `compare_mask` and
`compare_probability`. An empty truth is recorded as such: its area is 0, `truth_empty` is 1, and every
truth-derived column is NaN with the reason in `truth_nan_reason` (never a silent 0).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.records import atomic_write_bytes
from bench.truth.base import SubjectSegmenter, SubjectTruth, latent_truth, threshold_truth

TRUTH_FILE = "truth.npz"
NAN = math.nan
# A sample's identity across the runs of one task: the same reference image, prompt and seed.
IDENTITY = ("model", "dataset", "image_id", "prompt", "seed")
CONTROL_ABLATION = "no_manipulation"


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks; NaN when both are empty."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else NAN


@dataclass
class TruthRecorder:
    """Segment a generated image, save the truth file, and return its row columns."""

    segmenter: SubjectSegmenter
    alt_threshold: float | None = None  # a second threshold of the probability map (segmenters with `threshold`)
    compare: SubjectSegmenter | None = None  # a second source, scored against `segmenter` (IoU)
    latent_size: int | None = None  # the backbone's latent grid (h = w), known once the backbone is built

    def __call__(self, image: np.ndarray, subject: str, prompt: str, path: Path) -> dict:
        """Columns for uint8 [H, W, 3] `image`; writes `path` (npz, atomic)."""
        if self.latent_size is None:
            raise ValueError("TruthRecorder.latent_size is unset; set it to the backbone's latent_size.")
        truth = self.segmenter(image, subject, prompt)
        arrays = {
            "mask": truth.mask,
            "probability": truth.probability.astype(np.float16),
            "latent": latent_truth(truth.mask, self.latent_size, self.latent_size),
        }
        row = {
            "truth_source": truth.source,
            "truth_provenance": truth.provenance,
            "truth_area": float(truth.mask.mean()),
            "truth_area_latent": float((arrays["latent"] >= 0.5).mean()),
            "truth_empty": float(truth.is_empty),
            "truth_nan_reason": truth.empty_reason,
        }
        row.update(self.alt_columns(truth, subject, arrays))
        row.update(self.compare_columns(truth, image, subject, prompt, arrays))
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(path, buf.getvalue())
        return row

    def alt_columns(self, truth: SubjectTruth, subject: str, arrays: dict) -> dict:
        """The mask at `alt_threshold`: its area and its IoU with the mask at the segmenter's threshold."""
        threshold = getattr(self.segmenter, "threshold", None)
        if self.alt_threshold is None or threshold is None:
            return {}
        alt = threshold_truth(truth.probability, self.alt_threshold, subject, truth.source, truth.provenance)
        arrays["mask_alt"] = alt.mask
        return {
            "truth_threshold": float(threshold),
            "truth_alt_threshold": float(self.alt_threshold),
            "truth_area_alt": float(alt.mask.mean()),
            "truth_iou_alt": NAN if truth.is_empty else iou(truth.mask, alt.mask),
        }

    def compare_columns(self, truth: SubjectTruth, image: np.ndarray, subject: str, prompt: str, arrays: dict) -> dict:
        """A second source's truth of the same image: its area and its IoU with the first."""
        if self.compare is None:
            return {}
        other = self.compare(image, subject, prompt)
        arrays["compare_mask"] = other.mask
        arrays["compare_probability"] = other.probability.astype(np.float16)
        reason = truth.empty_reason or other.empty_reason
        return {
            "truth_compare_source": other.source,
            "truth_compare_provenance": other.provenance,
            "truth_compare_area": float(other.mask.mean()),
            "truth_iou_compare": NAN if reason else iou(truth.mask, other.mask),
            "truth_compare_nan_reason": reason,
        }


def load_truth(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a truth file (see the module docstring)."""
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def control_row(samples: pd.DataFrame, row: Mapping, ablation: str = CONTROL_ABLATION) -> pd.Series | None:
    """The successful `ablation` row (the no_manipulation chain) of `row`'s identity (model, dataset, image,
    prompt, seed) in a task's samples.csv, or None if that sample was not run (or failed)."""
    missing = [k for k in (*IDENTITY, "ablation", "status") if k not in samples.columns]
    if missing:
        raise ValueError(f"samples.csv lacks the columns {missing}; it is not a samples table of this harness.")
    same = np.ones(len(samples), dtype=bool)
    for key in IDENTITY:
        same &= (samples[key] == row[key]).to_numpy()
    found = samples[same & (samples["ablation"] == ablation).to_numpy() & (samples["status"] == "ok").to_numpy()]
    if len(found) > 1:
        raise ValueError(
            f"{len(found)} {ablation} rows share the identity {[row[k] for k in IDENTITY]}; a samples table "
            "holds one per sample (is it a concatenation of several tasks?)."
        )
    return found.iloc[0] if len(found) else None


def control_truth(samples: pd.DataFrame, row: Mapping, root_dir: str | Path) -> dict[str, np.ndarray] | None:
    """The truth arrays of `row`'s no_manipulation row (`control_row`), or None if it has none recorded.

    `root_dir` is the runs' `paths.root_dir` (truth paths in samples.csv are relative to it).
    """
    control = control_row(samples, row)
    if control is None or not isinstance(control.get("truth_path"), str) or not control["truth_path"]:
        return None
    return load_truth(Path(root_dir) / control["truth_path"])
