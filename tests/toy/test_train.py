"""`make toy-models` in quick mode, end to end: trains, saves, reloads through model=toy, deterministically."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hydra.utils import instantiate

from bench.metrics.toy_clip import load_toy_clip
from bench.toy import MODEL_DIR
from bench.toy.fingerprint import clip_slice, unet_slice, vae_slice
from bench.toy.train import main
from tests.conftest import compose_cfg


@pytest.fixture(scope="module")
def quick_models(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "models"
    main(["--quick", "--out", str(out)])
    return out


def record(folder, stage: str) -> dict:
    return json.loads((folder / "training" / f"{stage}.json").read_text())


def test_quick_training_writes_a_diffusers_folder_that_model_toy_loads(quick_models):
    cfg = compose_cfg(["model=toy", f"model.path={quick_models}", "device=cpu"])
    backbone = instantiate(cfg.model, _convert_="all")
    assert backbone.provenance["weights"] == str(quick_models)
    np.testing.assert_allclose(vae_slice(backbone.vae), record(quick_models, "vae")["slice"], rtol=1e-4, atol=1e-5)
    got = unet_slice(backbone.unet, backbone.text_encoder)
    np.testing.assert_allclose(got, record(quick_models, "unet")["slice"], rtol=1e-4, atol=1e-5)
    clip = load_toy_clip(quick_models / "clip")
    np.testing.assert_allclose(clip_slice(clip), record(quick_models, "clip")["slice"], rtol=1e-4, atol=1e-5)
    assert record(quick_models, "unet")["steps"] == 2 and record(quick_models, "vae")["threads"] == 1


def test_retraining_is_bit_identical(quick_models, tmp_path):
    main(["--quick", "--out", str(tmp_path)])
    for name in (
        "vae/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "clip/open_clip_model.safetensors",
    ):
        assert (tmp_path / name).read_bytes() == (quick_models / name).read_bytes(), name


def test_quick_mode_refuses_to_overwrite_the_shipped_models(capsys):
    with pytest.raises(SystemExit):
        main(["--quick", "--out", str(MODEL_DIR)])
    assert "overwrite the shipped models" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--stages", "vae,unett", "--out", "/nonexistent"])
    assert "unett" in capsys.readouterr().err
