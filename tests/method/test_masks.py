"""Masks from hand-made score maps, against numpy/scipy (docs/paper.md §2.4, B5, B6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from bench.sd.config import from_mapping
from bench.sd.errors import ConfigError
from method.config import MaskConfig
from method.masks import (
    blur,
    box_sum,
    dilate,
    gaussian_kernel,
    replace_background,
    subject_mask,
    threshold,
    union_mask,
)

RNG = np.random.default_rng(0)
SCORE = RNG.gamma(2.0, size=(4, 9, 9)).astype(np.float32)  # a positive, lumpy score map [C, h, w]


def mask_config(values: dict) -> MaskConfig:
    """`method.mask` as the sampler builds it."""
    return from_mapping(MaskConfig, values, "method.mask")


PAPER = mask_config({})
OFF = {"enabled": False}
REFERENCE_CODE = mask_config({"box_sum_once": True, "blur": OFF, "dilation": OFF})


def np_threshold(score: np.ndarray, k: float, per_channel: bool = True) -> np.ndarray:
    axes = (1, 2) if per_channel else None
    tau = score.mean(axis=axes, keepdims=True) + k * score.std(axis=axes, ddof=1, keepdims=True)
    return (score > tau).astype(np.float32)


def np_gaussian(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size) - size // 2
    g = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2))
    return g / g.sum()


def per_channel(fn, x: np.ndarray) -> np.ndarray:
    return np.stack([fn(c) for c in x])


def test_threshold_is_mean_plus_half_std_per_channel():
    mask = threshold(torch.from_numpy(SCORE), 0.5, "per_channel").numpy()
    np.testing.assert_array_equal(mask, np_threshold(SCORE, 0.5))
    assert 0 < mask.mean() < 0.6


def test_global_threshold_and_threshold_mean():
    np.testing.assert_array_equal(
        threshold(torch.from_numpy(SCORE), 0.5, "global").numpy(), np_threshold(SCORE, 0.5, False)
    )
    at_mean = threshold(torch.from_numpy(SCORE), 0.0, "per_channel").numpy()
    np.testing.assert_array_equal(at_mean, np_threshold(SCORE, 0))


def test_gaussian_kernel_3x3_sigma6_is_nearly_uniform():
    k = gaussian_kernel(3, 6.0).numpy()
    np.testing.assert_allclose(k, np_gaussian(3, 6.0), rtol=1e-6)
    assert abs(k.sum() - 1) < 1e-6 and k.max() / k.min() < 1.03


def test_blur_is_zero_padded_convolution():
    ours = blur(torch.from_numpy(SCORE), 3, 6.0).numpy()
    ref = per_channel(lambda c: ndimage.convolve(c, np_gaussian(3, 6.0), mode="constant", cval=0.0), SCORE)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_dilation_is_a_max_filter_iterated():
    ours = dilate(torch.from_numpy(SCORE), 3, 3).numpy()
    ref = SCORE
    for _ in range(3):
        ref = per_channel(lambda c: ndimage.maximum_filter(c, size=3, mode="nearest"), ref)
    np.testing.assert_array_equal(ours, ref)


def test_binary_dilation_of_one_pixel_three_times_is_a_7x7_square():
    mask = torch.zeros(1, 11, 11)
    mask[0, 5, 5] = 1
    out = dilate(mask, 3, 3)[0].numpy()
    expected = np.zeros((11, 11), np.float32)
    expected[2:9, 2:9] = 1
    np.testing.assert_array_equal(out, expected)


def test_paper_preset_blurs_the_score_then_dilates_the_mask():
    ours = subject_mask(torch.from_numpy(SCORE), PAPER).numpy()
    smooth = per_channel(lambda c: ndimage.convolve(c, np_gaussian(3, 6.0), mode="constant"), SCORE)
    expected = np_threshold(smooth, 0.5)
    expected = np.stack([ndimage.binary_dilation(c, np.ones((3, 3)), iterations=3) for c in expected]).astype(float)
    np.testing.assert_array_equal(ours, expected)


def test_reference_code_preset_is_one_box_sum_of_the_raw_score():
    ours = subject_mask(torch.from_numpy(SCORE), REFERENCE_CODE).numpy()
    boxed = per_channel(lambda c: ndimage.convolve(c, np.ones((3, 3)), mode="constant"), SCORE)
    np.testing.assert_allclose(box_sum(torch.from_numpy(SCORE)).numpy(), boxed, rtol=1e-5)
    np.testing.assert_array_equal(ours, np_threshold(boxed, 0.5))


def test_switches_off_leave_the_bare_threshold():
    bare = mask_config({"blur": {"enabled": False}, "dilation": {"enabled": False}})
    np.testing.assert_array_equal(subject_mask(torch.from_numpy(SCORE), bare).numpy(), np_threshold(SCORE, 0.5))


def test_blur_on_the_mask_gives_a_soft_mask():
    cfg = mask_config({"blur": {"stage": "mask"}, "dilation": {"enabled": False}})
    soft = subject_mask(torch.from_numpy(SCORE), cfg).numpy()
    ref = per_channel(lambda c: ndimage.convolve(c, np_gaussian(3, 6.0), mode="constant"), np_threshold(SCORE, 0.5))
    np.testing.assert_allclose(soft, ref, rtol=1e-5, atol=1e-6)
    assert ((soft > 0) & (soft < 1)).any()


def test_union_over_subjects():
    a = np.zeros((1, 4, 4), np.float32)
    b = np.zeros((1, 4, 4), np.float32)
    a[0, 0, 0] = b[0, 3, 3] = 10.0
    bare = mask_config({"blur": {"enabled": False}, "dilation": {"enabled": False}})
    union = union_mask(torch.from_numpy(np.stack([a, b])), bare).numpy()
    expected = np.zeros((1, 4, 4), np.float32)
    expected[0, 0, 0] = expected[0, 3, 3] = 1
    np.testing.assert_array_equal(union, expected)


def test_mask_of_ones_keeps_the_latent_and_zeros_give_the_reference():
    z, z_ref = torch.randn(4, 8, 8), torch.randn(4, 8, 8)
    assert torch.equal(replace_background(z, z_ref, torch.ones(4, 8, 8)), z)
    assert torch.equal(replace_background(z, z_ref, torch.zeros(4, 8, 8)), z_ref)
    half = torch.zeros(4, 8, 8)
    half[:, :4] = 1
    out = replace_background(z, z_ref, half)
    assert torch.equal(out[:, :4], z[:, :4]) and torch.equal(out[:, 4:], z_ref[:, 4:])


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"blur": {"sigmaa": 1}}, "unknown keys"),
        ({"dilation": {"stage": "both"}}, "stage"),
        ({"blur": {"kernel": 4}}, "odd"),
        ({"box_sum_once": True}, "box_sum_once"),
        ({"threshold_scope": "pixel"}, "threshold_scope"),
        ({"threshold_k": float("nan")}, r"method\.mask\.threshold_k=nan is not a finite number"),
        ({"threshold_k": float("-inf")}, r"method\.mask\.threshold_k=-inf is not a finite number"),
        ({"blur": {"sigma": float("nan")}}, r"method\.mask\.blur\.sigma=nan is not a finite number > 0"),
        ({"blur": {"sigma": float("inf")}}, r"method\.mask\.blur\.sigma=inf"),
        ({"blur": {"sigma": 0.0}}, r"method\.mask\.blur\.enabled=false instead"),
        ({"dilation": {"iterations": 0}}, r"method\.mask\.dilation\.iterations=0 is not an integer >= 1"),
        ({"dilation": {"kernel": 3.0}}, r"method\.mask\.dilation\.kernel=3\.0 is not an odd integer"),
        ({"blur": {"enabled": "no"}}, r"method\.mask\.blur\.enabled='no' is not true or false"),
        ({"blur": 3}, r"method\.mask\.blur=3 is not a mapping"),
    ],
)
def test_bad_mask_config_is_explained(values, match):
    with pytest.raises(ConfigError, match=match):
        mask_config(values)
