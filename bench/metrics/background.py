"""Background preservation (beyond the paper; PIE-Bench's "unedited region" metrics, ANCHORS.md §1).

How much of the reference a method kept outside the subject: PSNR and SSIM between the generated and
the reference image (both at model resolution, uint8 RGB) over the background pixels only.

* Mask: the method's `masks[mask_key]` (the final Grad-SAM subject mask, or a baseline's own mask), 1 =
  subject, at latent resolution [h, w] or per latent channel [C, h, w] (a pixel is subject when the
  channel mean is >= 0.5), upsampled (nearest) to the image. Background = mask 0. A method with no mask
  is scored over the whole image (`bg_mask_source = none (whole image)`).
* bg_psnr = 10 log10(255^2 / MSE), MSE over background pixels and RGB channels (inf if identical there).
  PIE-Bench instead multiplies both images by the mask and averages over the whole image, which
  mixes the mask's area into the score; this averages over the background only.
* bg_ssim = the SSIM map (Wang et al. 2004: Gaussian window sigma 1.5, 11x11, K1 0.01, K2 0.03,
  data range 255, per channel; scikit-image) averaged over background pixels and channels, leaving out
  the 5-pixel image border as scikit-image does (so with no mask it equals scikit-image's SSIM).
  Windows centred on background pixels near the subject see some subject pixels.
"""

from __future__ import annotations

from importlib import metadata

import numpy as np
from PIL import Image
from skimage.metrics import structural_similarity

from bench.metrics import BG_PSNR, BG_SSIM
from bench.metrics.common import SampleContext, nan_result

SSIM_SIGMA = 1.5
SSIM_MIN_SIDE = 11  # the Gaussian window's size at sigma 1.5 (truncate 3.5)


def subject_mask_to_image(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Subject mask [h, w] or [C, h, w] (values in [0, 1]) -> bool [H, W], nearest upsampling."""
    mask = np.asarray(mask, dtype=np.float32)
    if mask.ndim == 3:
        mask = mask.mean(axis=0)  # [C, h, w] -> [h, w]: fraction of latent channels kept as subject
    if mask.ndim != 2:
        raise ValueError(f"subject mask has shape {mask.shape}; expected [h, w] or [C, h, w]")
    subject = (mask >= 0.5).astype(np.uint8) * 255
    return np.asarray(Image.fromarray(subject).resize((width, height), Image.NEAREST)) > 127


def masked_psnr(generated: np.ndarray, reference: np.ndarray, region: np.ndarray) -> float:
    """PSNR (dB, data range 255) over the pixels where region [H, W] is True."""
    diff = generated.astype(np.float64)[region] - reference.astype(np.float64)[region]  # [P, 3]
    mse = float(np.mean(diff**2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def masked_ssim(generated: np.ndarray, reference: np.ndarray, region: np.ndarray) -> float:
    """Mean of the per-pixel SSIM map over region [H, W] (and the 3 channels), without the 5-pixel border.

    scikit-image drops the border where the window leaves the image; so does this, hence with a region
    of all True it equals structural_similarity's own mean. NaN if no region pixel is inside the border.
    """
    _, ssim_map = structural_similarity(
        generated,
        reference,
        channel_axis=2,
        data_range=255,
        gaussian_weights=True,
        sigma=SSIM_SIGMA,
        use_sample_covariance=False,
        full=True,
    )  # ssim_map: [H, W, 3]
    pad = (SSIM_MIN_SIDE - 1) // 2
    inside = np.zeros_like(region)
    inside[pad:-pad, pad:-pad] = True
    return float(ssim_map[region & inside].mean()) if (region & inside).any() else float("nan")


class BackgroundPreservation:
    """Per-sample metrics bg_psnr and bg_ssim (higher = more of the reference kept outside the subject)."""

    name = "background"

    def __init__(self, mask_key: str = "subject_mask"):
        self.mask_key = mask_key

    @property
    def provenance(self) -> str:
        return (
            f"numpy PSNR and scikit-image {metadata.version('scikit-image')} SSIM map (gaussian sigma 1.5, "
            f"K1 0.01, K2 0.03, range 255) averaged outside masks['{self.mask_key}'] (1 = subject, nearest-"
            "upsampled latent mask; whole image if the method has none); uint8 RGB at model resolution"
        )

    def __call__(self, sample: SampleContext) -> dict:
        try:
            return self.score(sample.generated, sample.reference, sample.masks.get(self.mask_key))
        except Exception as exc:  # noqa: BLE001 - a metric failure must not lose the row
            return nan_result(self.name, f"{type(exc).__name__}: {exc}", [BG_PSNR, BG_SSIM])

    def score(self, generated: np.ndarray, reference: np.ndarray, mask: np.ndarray | None) -> dict:
        keys = [BG_PSNR, BG_SSIM]
        height, width = generated.shape[:2]
        if mask is None:
            background, source = np.ones((height, width), bool), "none (whole image)"
        else:
            background, source = ~subject_mask_to_image(mask, height, width), f"{self.mask_key} (method)"
        row = {"bg_mask_source": source, "bg_fraction": float(background.mean())}
        if generated.shape != reference.shape:
            return {**row, **nan_result(self.name, f"shapes differ: {generated.shape} vs {reference.shape}", keys)}
        if not background.any():
            return {**row, **nan_result(self.name, "no background pixels (the mask covers the image)", keys)}
        row[BG_PSNR] = masked_psnr(generated, reference, background)
        if min(height, width) < SSIM_MIN_SIDE:
            return {**row, BG_SSIM: float("nan"), f"{self.name}_nan_reason": f"image below {SSIM_MIN_SIDE}px: no SSIM"}
        row[BG_SSIM] = masked_ssim(generated, reference, background)
        if np.isnan(row[BG_SSIM]):
            row[f"{self.name}_nan_reason"] = "no background pixel outside the 5-pixel SSIM border"
        return row
