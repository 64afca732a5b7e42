"""Toy metrics and the oracle segmenter against hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bench.metrics.common import SampleContext
from bench.sd.errors import ConfigError
from bench.toy.metrics import ToyBackground, ToyMaskIoU, ToySubject, iou, random_mask_iou, upsample_mask
from bench.toy.oracle import colour_region, prompt_subject, region_shape, shape_overlaps
from bench.toy.world import COLOURS, background, subject_mask, toy_scene

PROMPT = "a red box in a forest"


def red_square_image() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A forest scene with a red 16x16 square at rows/cols 16..31 (latent cells 4..7 at 4 px per cell)."""
    reference = background("forest", 0, 0)
    generated = reference.copy()
    truth = np.zeros((64, 64), bool)
    truth[16:32, 16:32] = True
    generated[truth] = COLOURS["red"]
    return generated, reference, truth


def test_upsample_and_iou_by_hand():
    mask = np.zeros((16, 16), np.float32)
    mask[4:8, 4:8] = 0.9
    mask[0, 0] = 0.4  # below 0.5: off
    big = upsample_mask(mask, 64)
    assert big.sum() == 16 * 16 and big[16:32, 16:32].all()
    a, b = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    a[:2], b[1:3] = True, True  # 8 and 8 cells, 4 shared -> 4 / 12
    assert iou(a, b) == pytest.approx(1 / 3)
    assert np.isnan(iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)))
    per_channel = np.stack([mask, mask, np.zeros_like(mask), mask])  # [4, 16, 16]: channel mean 0.675 inside
    assert np.array_equal(upsample_mask(per_channel, 64), big)


def test_perfect_mask_gives_iou_one_and_disjoint_gives_zero():
    generated, reference, _ = red_square_image()
    metric = ToyMaskIoU()
    perfect = np.zeros((16, 16), np.float32)
    perfect[4:8, 4:8] = 1
    out = metric(SampleContext(generated, reference, prompt=PROMPT, masks={"subject_mask": perfect}))
    assert out["mask_iou"] == 1.0 and out["true_area"] == pytest.approx(256 / 4096)
    assert out["mask_area"] == pytest.approx(256 / 4096)
    assert out["mask_iou_random"] < 0.2
    disjoint = np.zeros((16, 16), np.float32)
    disjoint[10:14, 10:14] = 1
    assert (
        metric(SampleContext(generated, reference, prompt=PROMPT, masks={"subject_mask": disjoint}))["mask_iou"] == 0.0
    )
    none = metric(SampleContext(generated, reference, prompt=PROMPT, masks={}))
    assert np.isnan(none["mask_iou"]) and np.isnan(none["mask_iou_random"]) and np.isnan(none["mask_iou_centre"])


def test_centre_prior_line_takes_as_many_cells_nearest_the_centre():
    generated, reference, _ = red_square_image()  # true cells 4..7 x 4..7
    mask = np.zeros((16, 16), np.float32)
    mask[0:4, 0:4] = 1  # 16 cells anywhere: the centre line takes cells 6..9 x 6..9
    out = ToyMaskIoU()(SampleContext(generated, reference, prompt=PROMPT, masks={"subject_mask": mask}))
    assert out["mask_iou_centre"] == pytest.approx(4 / 28)  # 2x2 shared cells of two 4x4 squares


def test_random_mask_of_full_area_has_iou_equal_to_truth_fraction():
    truth = np.zeros((64, 64), bool)
    truth[:8] = True
    rng = np.random.default_rng(0)
    assert random_mask_iou(np.ones((16, 16)), truth, rng) == pytest.approx(truth.mean())
    # Expected overlap of a random mask of area a with truth of area t is a * t; IoU ~ a t / (a + t - a t).
    half = np.zeros((16, 16))
    half[:8] = 1
    expected = 0.5 * 0.125 / (0.5 + 0.125 - 0.5 * 0.125)
    assert random_mask_iou(half, truth, rng, draws=400) == pytest.approx(expected, abs=0.01)


def test_background_psnr_excludes_the_subject_region():
    generated, reference, truth = red_square_image()
    out = ToyBackground()(SampleContext(generated, reference, prompt=PROMPT))
    assert out["true_bg_psnr"] == float("inf") and out["true_bg_mae"] == 0.0
    shifted = np.clip(generated.astype(int) + np.where(truth[..., None], 0, 10), 0, 255).astype(np.uint8)
    keep = ~truth
    mse = np.mean((shifted[keep].astype(float) - reference[keep]) ** 2)  # 100 unless clipped at 255
    out = ToyBackground()(SampleContext(shifted, reference, prompt=PROMPT))
    assert out["true_bg_psnr"] == pytest.approx(10 * np.log10(255**2 / mse))


def test_oracle_reads_colour_and_shape_of_drawn_subjects():
    for k in range(40):
        scene = toy_scene(2, k)
        region = colour_region(scene.image, scene.colour)
        assert np.array_equal(region, scene.mask)
        assert region_shape(region) == scene.shape
        other = next(c for c in COLOURS if c != scene.colour)
        assert region_shape(colour_region(scene.image, other)) is None


def test_oracle_shape_by_overlap_with_ideal_shapes():
    for shape in ("ball", "box", "cone"):
        for cx, cy, side in ((0.5, 0.5, 0.4), (0.3, 0.7, 0.25), (0.6, 0.4, 0.45)):
            assert region_shape(subject_mask(shape, cx, cy, side, 64)) == shape
    assert region_shape(subject_mask("ball", 0.5, 0.5, 0.05, 64)) is None  # below 1% of the image
    # Softened shapes, as a decoder renders them: a box with rounded corners, an eroded disc.
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    qx, qy = np.maximum(np.abs(xx - 32) - 8, 0), np.maximum(np.abs(yy - 32) - 8, 0)
    assert region_shape(qx**2 + qy**2 <= 5**2) == "box"  # a 26 px square, corner radius 5
    assert region_shape(ndimage.binary_erosion(subject_mask("ball", 0.5, 0.5, 0.4, 64))) == "ball"


def test_oracle_overlap_of_a_square_with_a_disc_of_equal_area_matches_geometry():
    a = 40  # a 40 px square; the disc of equal area has r = a / sqrt(pi), and a / 2 < r < a / sqrt(2)
    square = np.zeros((64, 64), bool)
    square[12 : 12 + a, 12 : 12 + a] = True
    r, d = a / np.sqrt(np.pi), a / 2
    segment = r**2 * np.arccos(d / r) - d * np.sqrt(r**2 - d**2)  # the disc beyond one side of the square
    inter = np.pi * r**2 - 4 * segment
    expected = inter / (2 * a**2 - inter)
    assert shape_overlaps(square)["ball"] == pytest.approx(expected, abs=0.01)
    assert shape_overlaps(square)["box"] == pytest.approx(1.0, abs=0.01)


def test_prompt_subject_needs_a_toy_prompt():
    assert prompt_subject("a yellow cone in the ocean") == ("yellow", "cone")
    with pytest.raises(ConfigError, match="toy_world"):
        prompt_subject("Deer roaming")


def test_missing_toy_clip_is_one_clear_error_before_any_work(tmp_path):
    with pytest.raises(ConfigError) as err:
        ToySubject(clip_folder=str(tmp_path))
    message = str(err.value)
    assert str(tmp_path / "open_clip_model.safetensors") in message
    assert "make toy-models" in message and "clip_folder" in message
