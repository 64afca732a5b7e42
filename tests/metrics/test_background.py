"""Background preservation: PSNR/SSIM outside the subject mask, against hand values and scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from bench.metrics.background import BackgroundPreservation
from bench.metrics.common import SampleContext
from tests.metrics.conftest import smooth_image


def test_whole_image_without_a_mask_equals_scikit_image():
    ref = smooth_image(32, 1)
    gen = np.clip(ref.astype(int) + np.random.default_rng(0).integers(-20, 21, ref.shape), 0, 255).astype(np.uint8)
    out = BackgroundPreservation()(SampleContext(gen, ref, masks={}))
    assert out["bg_mask_source"] == "none (whole image)" and out["bg_fraction"] == 1.0
    assert out["bg_psnr"] == pytest.approx(peak_signal_noise_ratio(ref, gen, data_range=255), rel=1e-12)
    ssim = structural_similarity(
        ref, gen, channel_axis=2, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert out["bg_ssim"] == pytest.approx(ssim, rel=1e-9)


def test_latent_mask_is_upsampled_and_only_the_background_counts():
    ref = smooth_image(32, 2)
    gen = ref.copy()
    gen[8:16, 8:16] = 255 - gen[8:16, 8:16]  # the subject: latent cells (2, 2)..(3, 3) of an 8x8 grid
    gen[24:] = np.clip(gen[24:].astype(int) + 4, 0, 255)  # the background differs by +4 in the bottom quarter
    mask = np.zeros((4, 8, 8), np.float32)  # per latent channel, as the Grad-SAM code's masks
    mask[:, 2:4, 2:4] = 1.0
    mask[0, 6, 6] = 1.0  # one channel of four: not a subject pixel (channel mean < 0.5)
    out = BackgroundPreservation()(SampleContext(gen, ref, masks={"subject_mask": mask}))
    assert out["bg_fraction"] == pytest.approx(1 - 64 / 1024)
    background = np.ones((32, 32), bool)
    background[8:16, 8:16] = False
    diff = gen.astype(float)[background] - ref.astype(float)[background]
    assert out["bg_psnr"] == pytest.approx(10 * np.log10(255**2 / np.mean(diff**2)), rel=1e-12)
    assert 0 < out["bg_ssim"] < 1
    out_identical = BackgroundPreservation()(SampleContext(ref, ref, masks={"subject_mask": mask}))
    assert out_identical["bg_psnr"] == math.inf and out_identical["bg_ssim"] == pytest.approx(1.0)


def test_bad_masks_and_sizes_give_nan_with_reasons():
    ref = smooth_image(32, 3)
    full = BackgroundPreservation()(SampleContext(ref, ref, masks={"subject_mask": np.ones((8, 8))}))
    assert math.isnan(full["bg_psnr"]) and "no background" in full["background_nan_reason"]
    wrong = BackgroundPreservation()(SampleContext(ref, ref, masks={"subject_mask": np.ones((2, 2, 2, 2))}))
    assert math.isnan(wrong["bg_ssim"]) and "shape" in wrong["background_nan_reason"]
    tiny = BackgroundPreservation()(SampleContext(ref[:8, :8], ref[:8, :8], masks={}))
    assert tiny["bg_psnr"] == math.inf and math.isnan(tiny["bg_ssim"]) and tiny["background_nan_reason"]
