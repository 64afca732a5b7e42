"""The shipped toy models (models/toy): small, load through the model=toy config, reproduce training outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hydra.utils import instantiate

from bench.metrics.common import SampleContext
from bench.metrics.toy_clip import load_toy_clip
from bench.toy import MODEL_DIR
from bench.toy.clip import ZeroShot
from bench.toy.data import HELDOUT_SEED, toy_set
from bench.toy.evaluate import txt2img_subjects
from bench.toy.fingerprint import clip_slice, unet_slice, vae_slice
from bench.toy.metrics import ToySubject
from bench.toy.world import COLOURS, SHAPES
from tests.conftest import compose_cfg

BUDGET_BYTES = 20_000_000


def training_record(stage: str) -> dict:
    return json.loads((MODEL_DIR / "training" / f"{stage}.json").read_text())


@pytest.fixture(scope="module")
def toy_backbone():
    cfg = compose_cfg(["model=toy", "device=cpu"])
    return instantiate(cfg.model, _convert_="all")


def test_shipped_models_fit_the_budget_and_hold_no_pickles():
    files = [p for p in MODEL_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= BUDGET_BYTES
    assert {p.suffix for p in files} <= {".json", ".safetensors", ".md"}


def test_model_toy_loads_through_the_sd15_loader(toy_backbone):
    assert toy_backbone.name == "toy" and toy_backbone.latent_size == 16 and toy_backbone.latent_channels == 4
    assert toy_backbone.provenance["weights"] == str(MODEL_DIR)
    assert toy_backbone.vae.config.scaling_factor == training_record("vae")["scaling_factor"]


def test_loaded_models_give_the_outputs_recorded_at_training_time(toy_backbone):
    np.testing.assert_allclose(vae_slice(toy_backbone.vae), training_record("vae")["slice"], rtol=1e-4, atol=1e-5)
    got = unet_slice(toy_backbone.unet, toy_backbone.text_encoder)
    np.testing.assert_allclose(got, training_record("unet")["slice"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(clip_slice(load_toy_clip()), training_record("clip")["slice"], rtol=1e-4, atol=1e-5)


def test_toy_clip_names_colour_and_shape_of_held_out_scenes():
    data = toy_set(HELDOUT_SEED, 40)
    preds = ZeroShot(load_toy_clip())(data.images)
    colours = [list(COLOURS)[c] for c in data.colour_ids.tolist()]
    shapes = [SHAPES[s] for s in data.shape_ids.tolist()]
    # A regression guard, not the quality bar (bench.toy.evaluate: 1.000 colour, 0.996 shape on 500 scenes).
    assert np.mean([p["colour"] == c for p, c in zip(preds, colours, strict=True)]) >= 0.95
    assert np.mean([p["shape"] == s for p, s in zip(preds, shapes, strict=True)]) >= 0.95


def test_subject_metric_on_a_drawn_scene_and_on_its_empty_background():
    data = toy_set(HELDOUT_SEED, 1)
    image = data.images[0].permute(1, 2, 0).numpy()
    prompt = f"a {list(COLOURS)[int(data.colour_ids[0])]} {SHAPES[int(data.shape_ids[0])]} in a forest"
    metric = ToySubject()
    assert metric(SampleContext(image, image, prompt=prompt))["subject_ok_oracle"] == 1.0
    empty = metric(SampleContext(np.full_like(image, 128), image, prompt=prompt))
    assert empty["subject_found_oracle"] == 0.0 and empty["subject_ok_oracle"] == 0.0


def test_txt2img_on_the_shipped_models_draws_the_prompted_subject(toy_backbone):
    """A regression guard for the UNet (the bar itself: bench.toy.evaluate, 98% by the oracle on 120 prompts)."""
    zero_shot = ZeroShot(load_toy_clip())
    result = txt2img_subjects(toy_backbone, zero_shot, count=6, out_dir=None)
    assert result["txt2img_colour_oracle"] == 1.0
    assert result["txt2img_ok_oracle"] >= 5 / 6 and result["txt2img_ok_clip"] >= 5 / 6
