"""truth=clipseg: a real CLIPSegForImageSegmentation (tiny config, seeded weights) loaded through the loader.

The refined CLIPSeg weights cannot exist here, so a toy-width CLIPSeg saved with `save_pretrained`
(safetensors) stands in for them; only the hub is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from huggingface_hub import constants as hf_constants
from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor, CLIPTokenizer, ViTImageProcessor

import bench.sd.weights
import bench.truth.clipseg as clipseg
from bench.sd.errors import AssetMissingError, ConfigError
from bench.truth import SubjectTruth
from bench.truth.clipseg import DEFAULT_PREPROCESS, build_tiny_clipseg, load_clipseg, tiny_clipseg_config
from tests.conftest import compose_cfg
from tests.sd.test_sd15 import write_clip_tokenizer_files

REPO_ID = "CIDAS/clipseg-rd64-refined"
INPUT_SIZE = 64


@pytest.fixture(scope="module")
def tiny_clipseg_folder(tmp_path_factory) -> Path:
    """A toy-width CLIPSeg saved as the hub's folder would be: config.json, model.safetensors, preprocessor config."""
    folder = tmp_path_factory.mktemp("clipseg_tiny")
    torch.manual_seed(3)
    CLIPSegForImageSegmentation(tiny_clipseg_config()).save_pretrained(folder)
    preprocess = {**DEFAULT_PREPROCESS, "size": {"height": INPUT_SIZE, "width": INPUT_SIZE}}
    preprocess["image_processor_type"] = "ViTImageProcessor"
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocess))
    return folder


def scene(seed: int = 0, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((size, size, 3)) * 255).astype(np.uint8)


def clipseg_kwargs(**overrides) -> dict:
    cfg = compose_cfg(["truth=clipseg", "device=cpu"])
    return {**{k: v for k, v in cfg.truth.items() if k != "_target_"}, **overrides}


def test_the_folder_loads_with_its_weights_and_matches_transformers_own_processor(tiny_clipseg_folder, tmp_path):
    truth = load_clipseg(**clipseg_kwargs(path=str(tiny_clipseg_folder), threshold=0.4))
    saved = CLIPSegForImageSegmentation.from_pretrained(tiny_clipseg_folder).state_dict()
    assert all(torch.equal(saved[k], v) for k, v in truth.model.state_dict().items())
    image = scene()
    result = truth(image, "deer", "Deer roaming")
    assert isinstance(result, SubjectTruth) and result.source == "clipseg"
    assert result.probability.shape == result.mask.shape == (48, 48) and result.probability.dtype == np.float32
    assert np.array_equal(result.mask, result.probability >= 0.4)
    assert str(tiny_clipseg_folder) in result.provenance and ">= 0.4" in result.provenance
    # The same numbers as transformers' CLIPSegProcessor with SD1.5's CLIP tokenizer files.
    write_clip_tokenizer_files(tmp_path / "tok")
    processor = CLIPSegProcessor(
        image_processor=ViTImageProcessor.from_pretrained(tiny_clipseg_folder),
        tokenizer=CLIPTokenizer.from_pretrained(tmp_path / "tok"),
    )
    inputs = processor(text=["deer"], images=[image], padding=True, return_tensors="pt")
    assert inputs.pixel_values.shape == (1, 3, INPUT_SIZE, INPUT_SIZE)
    with torch.no_grad():
        logits = truth.model(**inputs).logits.reshape(1, 1, INPUT_SIZE, INPUT_SIZE)
    expected = torch.sigmoid(F.interpolate(logits, size=(48, 48), mode="bilinear", align_corners=False))[0, 0]
    assert np.allclose(result.probability, expected.numpy(), atol=1e-6)
    other = truth(image, "boats", "Boats sailing")
    assert not np.array_equal(other.probability, result.probability)  # the subject word reaches the model


def test_an_empty_truth_says_why(tiny_clipseg_folder):
    truth = load_clipseg(**clipseg_kwargs(path=str(tiny_clipseg_folder), threshold=0.5))
    assert not truth(scene(1), "deer", "Deer roaming").is_empty
    head = [m for m in truth.model.modules() if isinstance(m, torch.nn.ConvTranspose2d)][-1]
    with torch.no_grad():  # a model that finds the subject nowhere: every logit -20
        head.weight.zero_()
        head.bias.fill_(-20.0)
    result = truth(scene(1), "deer", "Deer roaming")
    assert result.is_empty and not result.mask.any() and result.probability.max() < 1e-8
    assert "finds no pixel of 'deer' with probability >= 0.5" in result.empty_reason


def test_bad_settings_and_inputs_name_the_value(tiny_clipseg_folder):
    with pytest.raises(ConfigError, match=r"truth.threshold=1.5; expected a probability"):
        load_clipseg(**clipseg_kwargs(path=str(tiny_clipseg_folder), threshold=1.5))
    truth = build_tiny_clipseg(device="cpu")
    with pytest.raises(ConfigError, match="subject=''"):
        truth(scene(), "", "a forest")
    assert "not a trained segmenter" in truth.provenance


def test_offline_without_the_weights_names_the_model_and_the_ways(tmp_path):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(AssetMissingError) as info:
        load_clipseg(**clipseg_kwargs(cache_dir=str(tmp_path / "empty")))
    message = str(info.value)
    assert REPO_ID in message and "HF_HUB_OFFLINE=1" in message
    assert "go online" in message and "OFFLINE=0" in message and "HF_HOME" in message and "truth.path=" in message


def test_a_folder_with_only_the_pickle_is_refused(tmp_path, tiny_clipseg_folder):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_clipseg_folder / "config.json", folder)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(AssetMissingError, match=r"lacks \['model.safetensors'\] \(it holds pytorch_model.bin"):
        load_clipseg(**clipseg_kwargs(path=str(folder)))
    weights = tmp_path / "partial"
    shutil.copytree(tiny_clipseg_folder, weights)
    (weights / "model.safetensors").write_bytes((weights / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(AssetMissingError, match="corrupt file"):
        load_clipseg(**clipseg_kwargs(path=str(weights)))


def cache_with(tmp_path: Path, folder: Path, *commits: str) -> Path:
    repo_dir = tmp_path / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    for commit in commits:
        shutil.copytree(folder, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text("0" * 40)  # main: the pickle-only commit, not cached
    return tmp_path / "hub"


def test_the_cached_safetensors_snapshot_loads_offline_and_is_named(tmp_path, tiny_clipseg_folder):
    commit = "a" * 40
    hub = cache_with(tmp_path, tiny_clipseg_folder, commit)
    truth = load_clipseg(**clipseg_kwargs(cache_dir=str(hub)))
    assert f"{REPO_ID}@{commit}" in truth.provenance
    pinned = load_clipseg(**clipseg_kwargs(cache_dir=str(hub), revision=commit))
    assert f"{REPO_ID}@{commit}" in pinned.provenance
    shutil.copytree(hub / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / commit, tmp_path / "b")
    shutil.move(tmp_path / "b", hub / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / ("b" * 40))
    with pytest.raises(ConfigError, match="pin one with truth.revision"):
        load_clipseg(**clipseg_kwargs(cache_dir=str(hub)))


class FakeHub:
    """The two hub calls the loader makes to find the safetensors PR (the hub is mocked, nothing else)."""

    def __init__(self, prs):
        self.prs = prs

    def model_info(self, repo_id, revision=None, timeout=None):
        assert repo_id == REPO_ID and timeout is not None
        return type("Info", (), {"sha": {None: "0" * 40, "refs/pr/7": "c" * 40}[revision]})()

    def get_repo_discussions(self, repo_id, discussion_type=None):
        return iter(self.prs)


def pr(num: int, title: str, author: str):
    return type("PR", (), {"num": num, "title": title, "author": author, "git_reference": f"refs/pr/{num}"})()


def test_online_the_safetensors_pr_is_found_and_only_safe_files_fetched(tmp_path, monkeypatch, tiny_clipseg_folder):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    prs = [pr(3, "Update README.md", "someone"), pr(7, clipseg.SAFETENSORS_PR_TITLE, clipseg.SAFETENSORS_PR_AUTHOR)]
    monkeypatch.setattr(clipseg, "HfApi", lambda: FakeHub(prs))
    fetched = {}

    def snapshot_download(repo_id, revision, cache_dir, allow_patterns):
        fetched.update(revision=revision, allow_patterns=allow_patterns)
        return str(tiny_clipseg_folder)

    monkeypatch.setattr(bench.sd.weights, "snapshot_download", snapshot_download)
    truth = load_clipseg(**clipseg_kwargs(cache_dir=str(tmp_path / "empty")))
    assert fetched["revision"] == "c" * 40 and "pytorch_model.bin" not in fetched["allow_patterns"]
    assert f"{REPO_ID}@{'c' * 40}" in truth.provenance
    monkeypatch.setattr(clipseg, "HfApi", lambda: FakeHub(prs[:1]))
    with pytest.raises(AssetMissingError, match="no pull request 'Adding `safetensors` variant"):
        load_clipseg(**clipseg_kwargs(cache_dir=str(tmp_path / "empty")))


def test_online_with_the_hub_unreachable_fails_at_the_probe(tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(AssetMissingError) as info:
        load_clipseg(**clipseg_kwargs(cache_dir=str(tmp_path / "empty")))
    message = str(info.value)
    assert "the hub cannot answer" in message and REPO_ID in message and "truth.path=" in message
