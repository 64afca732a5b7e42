"""fid64_pair against torchmetrics' FrechetInceptionDistance(feature=64) on duplicated pairs (the paper's code)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.image.fid import FrechetInceptionDistance

from bench.metrics.common import SampleContext
from bench.metrics.fid_pair import Fid64Pair
from bench.metrics.inception import weights_only_loads
from tests.metrics.conftest import smooth_image


@pytest.fixture(scope="module")
def torchmetrics_fid(converted_weights):
    # antialias=False: torchmetrics 1.3.1 (the code's version) resized with torch-fidelity's TF1 bilinear.
    with weights_only_loads():  # torchmetrics passes the file to torch-fidelity's torch.load
        return FrechetInceptionDistance(
            feature=64, feature_extractor_weights_path=str(converted_weights), antialias=False
        )


def paper_fid(metric: FrechetInceptionDistance, reference: np.ndarray, generated: np.ndarray) -> float:
    """What results_fid.py did: each image duplicated x2, FID between the two 2-image sets."""
    metric.reset()
    as_batch = lambda img: torch.from_numpy(np.stack([img, img])).permute(0, 3, 1, 2)  # noqa: E731 [2, 3, H, W]
    metric.update(as_batch(reference), real=True)
    metric.update(as_batch(generated), real=False)
    return float(metric.compute())


def jpeg_256(image: np.ndarray) -> np.ndarray:
    """The reference code's save (written out here independently): PIL bicubic 256x256, JPEG quality 75."""
    buf = io.BytesIO()
    Image.fromarray(image).resize((256, 256), Image.BICUBIC).save(buf, "JPEG", quality=75)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def test_fid64_pair_equals_torchmetrics_on_duplicated_pairs(torchmetrics_fid, converted_weights, tmp_path):
    """Both colour orders, the JPEG step on and off, and the native reference read from its file."""
    rng = np.random.default_rng(3)
    native = smooth_image(48, 10)  # the reference file at its own size
    model_input = smooth_image(32, 11)
    noise = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    cases = [("bgr", True, smooth_image(32, 12)), ("bgr", True, noise), ("rgb", False, noise)]  # the code's, corrected
    for color_order, jpeg, gen in cases:
        metric = Fid64Pair(color_order, jpeg, inception_weights=str(converted_weights), cache_dir=tmp_path)
        ours = metric(SampleContext(gen, model_input, native_reference=lambda: Image.fromarray(native)))["fid64_pair"]
        gen_fed = jpeg_256(gen) if jpeg else gen
        flip = (lambda a: a[..., ::-1].copy()) if color_order == "bgr" else (lambda a: a)  # noqa: E731
        expected = paper_fid(torchmetrics_fid, flip(native), flip(gen_fed))
        assert ours == pytest.approx(expected, abs=1e-3), (color_order, jpeg)
        assert ours > 1e-3  # distinct images: a real distance, not a trivial zero


def test_model_input_reference_and_identical_pair(converted_weights, tmp_path):
    metric = Fid64Pair(
        "rgb", False, reference="model_input", inception_weights=str(converted_weights), cache_dir=tmp_path
    )
    image = smooth_image(32, 20)
    assert metric(SampleContext(image, image))["fid64_pair"] == 0.0


def test_second_pass_hits_the_feature_cache(converted_weights, inception, tmp_path):
    metric = Fid64Pair(inception_weights=str(converted_weights), reference="model_input", cache_dir=tmp_path)
    gen, ref = smooth_image(32, 30), smooth_image(32, 31)
    first = metric(SampleContext(gen, ref))["fid64_pair"]
    extracted = inception.extracted
    fresh = Fid64Pair(inception_weights=str(converted_weights), reference="model_input", cache_dir=tmp_path)
    # a new metric object: features come from the disk cache
    assert fresh(SampleContext(gen, ref))["fid64_pair"] == first
    assert inception.extracted == extracted  # nothing went through the network
    assert fresh._cache.hits == 2 and fresh._cache.misses == 0


def test_bad_image_gives_nan_with_reason(converted_weights, tmp_path):
    metric = Fid64Pair(inception_weights=str(converted_weights), reference="model_input", cache_dir=tmp_path)
    out = metric(SampleContext(np.zeros((32, 32), np.float64), smooth_image(32, 1)))  # wrong dtype and shape
    assert math.isnan(out["fid64_pair"]) and out["fid64_pair_nan_reason"]
