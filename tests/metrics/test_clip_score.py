"""CLIP score: the 100 * max(cos, 0) convention, the offline tiny_random model, truncation, missing weights."""

from __future__ import annotations

import huggingface_hub.constants
import numpy as np
import open_clip
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from bench.metrics.clip_score import TINY_RANDOM, CLIPScore, clip_score_from_embeddings, resolve_arch
from bench.metrics.common import SampleContext
from bench.metrics.inception import MissingWeightsError
from tests.conftest import compose_cfg
from tests.metrics.conftest import smooth_image


def test_convention_on_hand_made_embeddings():
    image = torch.tensor([[3.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    text = torch.tensor([[1.0, 1.0], [-1.0, 0.1], [0.0, 5.0]])
    # cos = 1/sqrt(2) (norms do not matter), a negative cosine (clamped to 0), and 1.
    expected = [100 / np.sqrt(2), 0.0, 100.0]
    np.testing.assert_allclose(clip_score_from_embeddings(image, text).numpy(), expected, rtol=1e-12)


def numpy_clip_score(metric: CLIPScore, image: np.ndarray, prompt: str) -> tuple[float, float]:
    """(cosine, 100 * max(cos, 0)) recomputed with numpy from the model's raw embeddings."""
    tokens = open_clip.tokenizer.SimpleTokenizer(context_length=77)([prompt])  # [1, 77]
    pixels = metric._preprocess(Image.fromarray(image)).unsqueeze(0)  # [1, 3, 32, 32]
    with torch.no_grad():
        img_emb = metric._model.encode_image(pixels)[0].double().numpy()
        txt_emb = metric._model.encode_text(tokens)[0].double().numpy()
    cos = float(img_emb @ txt_emb / np.linalg.norm(img_emb) / np.linalg.norm(txt_emb))
    return cos, 100 * max(cos, 0.0)


def test_tiny_random_scores_like_its_own_embeddings_and_says_what_it_is():
    metric = CLIPScore(arch=TINY_RANDOM, paper_jpeg=False)
    image = smooth_image(64, 5)
    positive = metric(SampleContext(image, image, prompt="Camel walking"))
    assert "NOT real CLIP" in metric.provenance and "100*max(cos,0)" in metric.provenance
    assert "NOT real CLIP" in positive["clip_model"] and positive["clip_prompt_truncated"] == 0
    cos, expected = numpy_clip_score(metric, image, "Camel walking")
    assert cos > 0 and positive["clip_score"] == pytest.approx(expected, abs=1e-9)
    clamped = metric(SampleContext(image, image, prompt="Deer roaming"))
    cos, expected = numpy_clip_score(metric, image, "Deer roaming")
    assert cos < 0 and clamped["clip_score"] == expected == 0.0  # the max(cos, 0) clamp
    again = CLIPScore(arch=TINY_RANDOM, paper_jpeg=False)(SampleContext(image, image, prompt="Camel walking"))
    assert again["clip_score"] == positive["clip_score"]  # seeded: the same "model" in every process


def test_long_prompt_is_truncated_not_fatal():
    metric = CLIPScore(arch=TINY_RANDOM)
    out = metric(SampleContext(smooth_image(64, 6), None, prompt=" ".join(["deer"] * 120)))
    assert out["clip_prompt_truncated"] == 1 and np.isfinite(out["clip_score"])


def test_auto_choice_and_hydra_override():
    assert resolve_arch("auto", "tiny") == TINY_RANDOM and resolve_arch("auto", "sd15") == "ViT-L-14"
    cfg = compose_cfg(["metrics.clip=tiny_random", "model=tiny"])
    metric = instantiate(cfg.metrics.per_sample.clip)
    assert metric.arch == TINY_RANDOM


def test_missing_real_weights_offline_is_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty hub cache
    monkeypatch.setenv("HOME", str(tmp_path))  # and an empty ~/.cache/clip
    with pytest.raises(MissingWeightsError) as err:
        CLIPScore(arch="ViT-L-14", pretrained="openai")
    message = str(err.value)
    for expected in ("vit_large_patch14_clip_224.openai", "metrics.clip_weights=", "OFFLINE=0", "tiny_random"):
        assert expected in message
