"""Subject truth per sample in a run: one npz beside the sample's masks, `truth_*` row columns, and row pairing.

A run that records truth (`truth_record.enabled`) segments each generated image once. The file
`masks/<sample_key>/truth.npz` holds, at image resolution, `mask` (bool [H, W]) and `probability`
(float16 [H, W]); at latent resolution, `latent` (float32 [h, w], the fraction of subject pixels per
latent cell); with a second threshold, `mask_alt`; with a second source, `compare_mask` and
`compare_probability`. An empty truth is recorded as such: its area is 0, `truth_empty` is 1, and every
truth-derived column is NaN with the reason in `truth_nan_reason` (never a silent 0).
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.records import atomic_write_bytes, read_npz
from bench.truth.base import SubjectSegmenter, SubjectTruth, cell_mask, iou, latent_truth, threshold_truth

TRUTH_FILE = "truth.npz"
NAN = math.nan
# A sample's identity across the runs of one task: the same reference image, prompt and seed.
IDENTITY = ("model", "dataset", "image_id", "prompt", "seed")
# The control chain of a sample: the paper's sampler run without background replacement (variant=no_manipulation),
# known by what it is, whatever its label: a row of this method whose `method.manipulate` column is false.
CONTROL_METHOD = "gradsam"
MANIPULATE_COLUMN = "method.manipulate"
MASK_KEY = "subject_mask"  # the method's mask that the mask columns score (as bg_psnr reads it)
RANDOM_DRAWS = 32


@dataclass(frozen=True)
class TruthSources:
    """A run's segmenters, built before the backbone (missing weights stop the run there), and the second threshold."""

    segmenter: SubjectSegmenter
    alt_threshold: float | None = None  # a second threshold of the probability map (segmenters with a `threshold`)
    compare: SubjectSegmenter | None = None  # a second source, scored against `segmenter` (IoU)

    def recorder(self, latent_size: int) -> TruthRecorder:
        """The recorder of these sources on the backbone's latent grid (h = w = `latent_size`)."""
        return TruthRecorder(self.segmenter, latent_size, self.alt_threshold, self.compare)


@dataclass(frozen=True)
class TruthRecorder:
    """Segment a generated image, save the truth file, and return its row columns."""

    segmenter: SubjectSegmenter
    latent_size: int  # the backbone's latent grid (h = w)
    alt_threshold: float | None = None  # a second threshold of the probability map (segmenters with a `threshold`)
    compare: SubjectSegmenter | None = None  # a second source, scored against `segmenter` (IoU)

    def __call__(
        self,
        image: np.ndarray,
        subject: str,
        prompt: str,
        path: Path,
        masks: Mapping[str, np.ndarray] | None = None,
        reference: np.ndarray | None = None,
        identity: str = "",
    ) -> dict:
        """Columns for uint8 [H, W, 3] `image`; writes `path` (npz, atomic).

        With the method's `masks` and the `reference`, also the mask columns (`mask_columns`); `identity`
        (the sample key) seeds their random baseline.
        """
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
        if masks is not None and reference is not None:
            row.update(mask_columns(truth, masks.get(MASK_KEY), image, reference, identity))
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(path, buf.getvalue())
        return row

    def alt_columns(self, truth: SubjectTruth, subject: str, arrays: dict) -> dict:
        """The mask at `alt_threshold`: its area and its IoU with the mask at the segmenter's threshold."""
        threshold = self.segmenter.threshold
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


def mask_columns(
    truth: SubjectTruth, mask: np.ndarray | None, image: np.ndarray, reference: np.ndarray, identity: str
) -> dict:
    """The method's subject mask against the truth, beside chance, and the background kept outside the truth.

    truth_mask_iou: IoU of the method's mask (channel mean >= 0.5, nearest-upsampled) with the truth;
    truth_mask_iou_random: mean IoU of 32 masks with the same latent cells shuffled (seeded by `identity`);
    truth_bg_psnr: PSNR of image vs reference outside the truth. All NaN for an empty truth (its reason).
    """
    out = {"truth_mask_iou": NAN, "truth_mask_iou_random": NAN, "truth_bg_psnr": NAN, "truth_mask_nan_reason": ""}
    if truth.is_empty:
        out["truth_mask_nan_reason"] = truth.empty_reason
        return out
    keep = ~truth.mask
    if keep.any():
        out["truth_bg_psnr"] = psnr(image[keep], reference[keep])
    if mask is None:
        out["truth_mask_nan_reason"] = f"the method records no '{MASK_KEY}'"
        return out
    cells = cell_mask(mask)  # bool [h, w]
    out["truth_mask_iou"] = iou(upsample(cells, truth.mask.shape), truth.mask)
    rng = np.random.default_rng(
        int.from_bytes(hashlib.sha256(f"{identity}|truth_mask_iou_random".encode()).digest()[:8], "little")
    )
    draws = [
        iou(upsample(rng.permutation(cells.ravel()).reshape(cells.shape), truth.mask.shape), truth.mask)
        for _ in range(RANDOM_DRAWS)
    ]
    out["truth_mask_iou_random"] = float(np.mean(draws))
    return out


def upsample(cells: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest upsampling of bool [h, w] to `shape` (integer factors, as SD's latent grid has)."""
    (h, w), (big_h, big_w) = cells.shape, shape
    if big_h % h or big_w % w:
        raise ValueError(f"a {h}x{w} mask does not tile a {big_h}x{big_w} image.")
    return cells.repeat(big_h // h, axis=0).repeat(big_w // w, axis=1)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB, peak 255) of two uint8 arrays of the same shape; inf if they are equal."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def load_truth(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a truth file (see the module docstring); a missing or damaged file raises StorageError naming
    it (a rerun of the job that wrote it redoes that sample: damaged means not done)."""
    return read_npz(path)


def control_row(samples: pd.DataFrame, row: Mapping) -> pd.Series | None:
    """The successful control row of `row`'s identity (model, dataset, image, prompt, seed) in a task's
    samples.csv: made by method gradsam with `method.manipulate` false (the no_manipulation chain, whatever
    its label). None if that sample was not run, failed, or the table holds no gradsam row at all."""
    missing = [k for k in (*IDENTITY, "method", "status") if k not in samples.columns]
    if missing:
        raise ValueError(f"samples.csv lacks the columns {missing}; it is not a samples table of this harness.")
    if MANIPULATE_COLUMN not in samples.columns:
        return None  # no gradsam row in the table, so no control
    same = np.ones(len(samples), dtype=bool)
    for key in IDENTITY:
        same &= (samples[key] == row[key]).to_numpy()
    control = (samples["method"] == CONTROL_METHOD).to_numpy() & is_false(samples[MANIPULATE_COLUMN])
    found = samples[same & control & (samples["status"] == "ok").to_numpy()]
    if len(found) > 1:
        raise ValueError(
            f"{len(found)} control rows ({CONTROL_METHOD}, {MANIPULATE_COLUMN}=false; labels "
            f"{sorted(set(found.get('label', [])))}) share the identity {[row[k] for k in IDENTITY]}; a samples table "
            "holds one per sample (is it a concatenation of several tasks, or two control rows in one task?)."
        )
    return found.iloc[0] if len(found) else None


def is_false(column: pd.Series) -> np.ndarray:
    """bool per row: the value is false (a bool from samples.csv or a row, or its text 'False'/'false')."""
    return column.map(lambda value: str(value).strip().lower() == "false").to_numpy(dtype=bool)


def control_truth(samples: pd.DataFrame, row: Mapping, root_dir: str | Path) -> dict[str, np.ndarray] | None:
    """The truth arrays of `row`'s control row (`control_row`), or None if it has none recorded.

    `root_dir` is the runs' `paths.root_dir` (truth paths in samples.csv are relative to it).
    """
    control = control_row(samples, row)
    if control is None or not isinstance(control.get("truth_path"), str) or not control["truth_path"]:
        return None
    return load_truth(Path(root_dir) / control["truth_path"])
