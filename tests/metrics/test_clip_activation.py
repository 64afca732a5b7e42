"""CLIP activation (#15): OpenAI-style weights are built with QuickGELU however they arrive (a pretrained
tag through the hub cache, or a weights file), and the provenance says which activation ran.

The hub is faked: a tiny open_clip model is registered with an OpenAI-style tag (quick_gelu: true) whose
weights sit in a temporary Hugging Face cache; everything else is the project's real loader."""

from __future__ import annotations

import huggingface_hub.constants
import numpy as np
import open_clip
import pytest
import torch
from open_clip.constants import HF_SAFE_WEIGHTS_NAME
from PIL import Image
from safetensors.torch import save_file

from bench.metrics.clip_score import TINY_CONFIG, CLIPScore
from tests.metrics.conftest import smooth_image

ARCH, REPO = "Tiny-OpenAI-Style", "fake-org/tiny-clip-openai"
OPENAI_TAG = {
    "hf_hub": f"{REPO}/",
    "mean": (0.48145466, 0.4578275, 0.40821073),
    "std": (0.26862954, 0.26130258, 0.27577711),
    "quick_gelu": True,
}


def activations(model: torch.nn.Module) -> set[str]:
    return {type(m).__name__ for m in model.modules() if type(m).__name__ in ("GELU", "QuickGELU")}


@pytest.fixture
def openai_style_weights(tmp_path, monkeypatch):
    """(reference QuickGELU model, weights file): the tag resolves to a faked hub cache holding that file."""
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, ARCH, TINY_CONFIG)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, ARCH, {"openai": OPENAI_TAG})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        trained = open_clip.model.CLIP(**TINY_CONFIG, quick_gelu=True).eval()
    cache = tmp_path / "hf"
    repo_dir = cache / f"models--{REPO.replace('/', '--')}"
    commit = "0" * 40
    (repo_dir / "snapshots" / commit).mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    weights = repo_dir / "snapshots" / commit / HF_SAFE_WEIGHTS_NAME
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(weights))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return trained, weights


@pytest.mark.parametrize("arrival", ["pretrained_tag", "weights_file"])
def test_openai_style_weights_are_built_with_quickgelu(openai_style_weights, arrival):
    trained, weights = openai_style_weights
    path = str(weights) if arrival == "weights_file" else None
    metric = CLIPScore(arch=ARCH, pretrained="openai", weights_path=path, paper_jpeg=False, device="cpu")
    assert metric.weights == path  # the tag route found the weights in the (faked) hub cache
    image = smooth_image(32, seed=1)
    score, _ = metric.score(image, "a red circle in a forest")
    assert activations(metric._model) == {"QuickGELU"}
    assert "activation QuickGELU" in metric.provenance
    # The same weights under QuickGELU give the same embedding: they were loaded and run as trained.
    pixels = metric._preprocess(Image.fromarray(image)).unsqueeze(0)
    with torch.no_grad():
        np.testing.assert_allclose(
            metric._model.encode_image(pixels).numpy(), trained.encode_image(pixels).numpy(), rtol=1e-5, atol=1e-6
        )
    assert np.isfinite(score)


def test_weights_without_quickgelu_keep_gelu_and_say_so():
    metric = CLIPScore(arch="tiny_random", paper_jpeg=False, device="cpu")
    assert "activation not loaded yet" in metric.provenance
    metric.score(smooth_image(32, seed=2), "a deer")
    assert activations(metric._model) == {"GELU"} and "activation GELU" in metric.provenance
