"""Per-sample metrics that only the toy world makes possible: its subject's true region is known.

The true region of the subject in a *generated* image is found by the oracle segmenter (the prompt's
colour, bench/toy/oracle.py). All three metrics read the prompt from the work unit, so they need
dataset=toy_world; each returns NaN (never a made-up number) when its quantity is undefined.
"""

from __future__ import annotations

import hashlib

import numpy as np

from bench.metrics import (
    MASK_IOU,
    MASK_IOU_CENTRE,
    MASK_IOU_RANDOM,
    SUBJECT_OK,
    SUBJECT_OK_ORACLE,
    TRUE_BG_PSNR,
)
from bench.metrics.background import masked_psnr, subject_mask_to_image
from bench.metrics.common import SampleContext
from bench.metrics.inception import MissingWeightsError
from bench.metrics.toy_clip import load_toy_clip, toy_clip_folder
from bench.sd.errors import ConfigError
from bench.sd.maps import centre_prior  # not bench.truth.scores: that imports scipy.stats (~1 s)
from bench.toy.clip import ZeroShot
from bench.toy.oracle import MAX_DISTANCE, MIN_AREA, colour_region, prompt_subject, region_shape
from bench.toy.world import COLOURS, SHAPES
from bench.truth.base import cell_mask, iou

MASK_KEY = "subject_mask"
NAN = float("nan")


def upsample_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """[h, w] or [C, h, w] mask in [0, 1] -> bool [size, size], as bench.metrics.background reads it
    (channel mean >= 0.5, nearest-neighbour upsampling)."""
    return subject_mask_to_image(mask, size, size)


def random_mask_iou(mask: np.ndarray, truth: np.ndarray, rng: np.random.Generator, draws: int = 32) -> float:
    """Mean IoU with `truth` of `draws` random masks with as many latent cells as `mask` (its cells shuffled)."""
    cells = cell_mask(mask)
    values = []
    for _ in range(draws):
        shuffled = rng.permutation(cells.ravel()).reshape(cells.shape).astype(np.float32)
        values.append(iou(upsample_mask(shuffled, truth.shape[0]), truth))
    return float(np.mean(values))


def sample_rng(sample: SampleContext, purpose: str) -> np.random.Generator:
    """A generator of the sample's identity (image, prompt, seed) and the metric's purpose."""
    key = f"{sample.image_id}\x1f{sample.prompt}\x1f{sample.seed}\x1f{purpose}" if sample.image_id else purpose
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))


class ToyMaskIoU:
    """IoU of the method's subject mask with the subject's true region, beside a random mask of the same area."""

    name = MASK_IOU
    provenance = (
        f"toy world; mask '{MASK_KEY}' >= 0.5 ([h, w] masks as given; gradsam passes the union over channels of "
        "its last mask, [C, h, w] masks: channel mean), nearest-upsampled to image size; "
        "truth = oracle region of the prompt's colour in the generated image "
        f"(RGB distance <= {MAX_DISTANCE:g}); random = mean IoU of 32 masks with the same latent cells shuffled; "
        "centre = the same number of latent cells nearest the image centre (a data-free prior); "
        "NaN without a mask or without a subject region"
    )

    def __call__(self, sample: SampleContext) -> dict:
        generated = sample.generated
        colour, _shape = prompt_subject(sample.prompt)
        truth = colour_region(generated, colour)
        out = {MASK_IOU: NAN, MASK_IOU_RANDOM: NAN, MASK_IOU_CENTRE: NAN, "mask_area": NAN}
        out["true_area"] = float(truth.mean())
        mask = sample.masks.get(MASK_KEY)
        if mask is None:
            return out
        pred = upsample_mask(mask, generated.shape[0])
        out["mask_area"] = float(pred.mean())
        if truth.mean() >= MIN_AREA:
            out[MASK_IOU] = iou(pred, truth)
            out[MASK_IOU_RANDOM] = random_mask_iou(mask, truth, sample_rng(sample, MASK_IOU_RANDOM))
            out[MASK_IOU_CENTRE] = iou(upsample_mask(centre_mask(mask), truth.shape[0]), truth)
        return out


def centre_mask(mask: np.ndarray) -> np.ndarray:
    """As many latent cells as `mask` keeps, the ones nearest the centre (ties in row-major order), float [h, w]."""
    cells = cell_mask(mask)
    order = np.argsort(-centre_prior(*cells.shape).ravel(), kind="stable")
    out = np.zeros(cells.size, dtype=np.float32)
    out[order[: int(cells.sum())]] = 1.0
    return out.reshape(cells.shape)


class ToySubject:
    """Is the prompted subject there? Toy CLIP zero-shot colour and shape, and the oracle segmenter's reading."""

    name = SUBJECT_OK
    provenance = (
        "toy world; clip: toy open_clip (models/toy/clip) zero-shot over the world's 120 captions, colour and shape "
        f"of the best caption vs the prompt's; oracle: a region of the prompt's colour >= {MIN_AREA:.0%} of the image "
        "whose largest component best overlaps (IoU) the prompt's shape drawn with its area and centroid"
    )

    def __init__(self, clip_folder: str | None = None):
        self.clip_folder = toy_clip_folder(clip_folder)  # fails before any sample is generated
        self._zero_shot: ZeroShot | None = None

    def prepare(self) -> None:
        """Load the toy CLIP now (a run calls this before its first sample): a file that cannot load stops it."""
        if self._zero_shot is not None:
            return
        try:
            self._zero_shot = ZeroShot(load_toy_clip(self.clip_folder))
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - safetensors, json and torch raise their own kinds
            first = (str(exc).strip().splitlines() or [""])[0]
            raise MissingWeightsError(
                f"the toy CLIP in {self.clip_folder} cannot be loaded ({type(exc).__name__}: {first}). Fix: restore "
                "models/toy/clip from git, retrain with `make toy-models`, or point "
                "metrics.per_sample.subject_ok.clip_folder at another folder."
            ) from exc

    def __call__(self, sample: SampleContext) -> dict:
        generated = sample.generated
        colour, shape = prompt_subject(sample.prompt)
        self.prepare()
        pred = self._zero_shot(generated[None])[0]
        found = region_shape(colour_region(generated, colour))
        clip_ok = pred["colour"] == colour and pred["shape"] == shape
        return {
            SUBJECT_OK: float(clip_ok),
            "subject_colour_ok_clip": float(pred["colour"] == colour),
            "subject_shape_ok_clip": float(pred["shape"] == shape),
            SUBJECT_OK_ORACLE: float(found == shape),
            "subject_found_oracle": float(found is not None),
        }


class ToyBackground:
    """Background preservation: PSNR to the reference outside the subject's true region in the generated image."""

    name = TRUE_BG_PSNR
    provenance = (
        "toy world; PSNR (peak 255, inf if identical) of generated vs reference RGB uint8 over pixels outside "
        "the oracle region of the prompt's colour in the generated image; true_bg_mae: mean |difference| there (0-255)"
    )

    def __call__(self, sample: SampleContext) -> dict:
        generated, reference = sample.generated, sample.reference
        colour, _shape = prompt_subject(sample.prompt)
        keep = ~colour_region(generated, colour)
        if not keep.any():
            return {TRUE_BG_PSNR: NAN, "true_bg_mae": NAN}
        diff = generated.astype(np.float64)[keep] - reference.astype(np.float64)[keep]  # [n, 3]
        psnr = masked_psnr(generated, reference, keep)
        return {TRUE_BG_PSNR: psnr, "true_bg_mae": float(np.mean(np.abs(diff)))}


__all__ = ["COLOURS", "SHAPES", "ToyBackground", "ToyMaskIoU", "ToySubject", "iou", "upsample_mask"]
