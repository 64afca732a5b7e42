"""model=sd15: real diffusers loading from a local folder and a Hugging Face cache, and one clear error offline.

The SD1.5 weights cannot exist here, so a tiny model saved with `save_pretrained` in SD1.5's folder
layout (with SD1.5's own PNDM scheduler config and CLIP tokenizer files) stands in for them: the
loading code runs for real up to and including the weights.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hf_constants
from hydra.utils import instantiate
from transformers import CLIPTokenizer

from bench.perf.sd15_folder import SCHEDULER, write_tokenizer
from bench.sd.backbone import Backbone
from bench.sd.errors import ConfigError
from bench.sd.sd15 import AssetMissingError, check_tokenizer, load_sd15, resolve_dtype, sd15_scheduler
from bench.sd.tokenizer import ClipBpeTokenizer
from bench.task import run_benchmark
from method.gradsam import ScoreInputs, scores_and_path
from tests.conftest import compose_cfg, minimal_run

REPO_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# SD1.5's scheduler/scheduler_config.json (PNDM, steps_offset 1), as published with the weights.
SD15_SCHEDULER_CONFIG = SCHEDULER


def write_clip_tokenizer_files(folder: Path) -> None:
    """SD1.5's tokenizer/ files from CLIP's raw BPE merges (one writer: bench/perf/sd15_folder.py)."""
    write_tokenizer(folder)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tiny_backbone) -> Path:
    """The tiny model in SD1.5's diffusers folder layout (safetensors)."""
    folder = tmp_path_factory.mktemp("sd15_tiny")
    tiny_backbone.unet.save_pretrained(folder / "unet")
    tiny_backbone.vae.save_pretrained(folder / "vae")
    tiny_backbone.text_encoder.save_pretrained(folder / "text_encoder")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER_CONFIG))
    write_clip_tokenizer_files(folder / "tokenizer")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return folder


def sd15_config(**overrides):
    cfg = compose_cfg(["model=sd15", "model.image_size=32", "device=cpu"])
    kwargs = {k: v for k, v in cfg.model.items() if k != "_target_"}
    return {**kwargs, **overrides}


def test_clip_bpe_tokenizer_gives_the_ids_of_transformers_clip_tokenizer(tmp_path):
    write_clip_tokenizer_files(tmp_path)
    hf = CLIPTokenizer.from_pretrained(tmp_path)
    protocol = compose_cfg().protocol
    prompts = [p.text for e in protocol.subcategories for p in e.prompts]
    assert len(prompts) == 34
    prompts += ["", "a photo of a forest, " * 30]  # the negative prompt and one longer than 77 tokens
    ours = ClipBpeTokenizer()(prompts)
    theirs = hf(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ours, theirs)


def test_folder_loads_the_saved_weights_with_the_protocol_scheduler(tiny_folder, tiny_backbone):
    backbone = load_sd15(**sd15_config(path=str(tiny_folder)))
    assert isinstance(backbone, Backbone) and backbone.dtype == torch.float32
    for part in ("unet", "vae", "text_encoder"):
        saved, loaded = getattr(tiny_backbone, part).state_dict(), getattr(backbone, part).state_dict()
        assert saved.keys() == loaded.keys()
        assert all(torch.equal(saved[k], loaded[k]) for k in saved), part
    # The folder's PNDM config says steps_offset 1 (981, ..., 1); the protocol runs DDPM 980, ..., 0 (B13).
    scheduler = backbone.new_scheduler()
    scheduler.set_timesteps(50)
    assert type(scheduler).__name__ == "DDPMScheduler"
    assert scheduler.timesteps.tolist() == list(range(980, -1, -20))
    assert backbone.latent_size == 8 and backbone.float32_unet() is backbone.unet
    assert backbone.provenance["weights"] == str(tiny_folder)


def test_float32_unet_has_the_stored_weights_not_an_upcast(tiny_folder, tiny_backbone):
    backbone = load_sd15(**sd15_config(path=str(tiny_folder), dtype="bfloat16"))
    assert backbone.unet.dtype == torch.bfloat16
    unet32 = backbone.float32_unet()
    assert unet32.dtype == torch.float32 and unet32 is backbone.float32_unet()  # loaded once
    stored, upcast = tiny_backbone.unet.state_dict(), backbone.unet.state_dict()
    assert all(torch.equal(stored[k], v) for k, v in unet32.state_dict().items())
    assert any(not torch.equal(stored[k], upcast[k].float()) for k in stored)  # bfloat16 rounding is visible


def test_upcast_scores_with_the_sampling_unet_and_casts_it_back(tiny_folder, tiny_backbone):
    """model.gradient_unet=upcast: no float32 twin; the bfloat16 UNet scores in float32 and stays bfloat16."""
    backbone = load_sd15(**sd15_config(path=str(tiny_folder), dtype="bfloat16", gradient_unet="upcast"))
    unet = backbone.float32_unet()
    assert unet is backbone.unet and backbone._unet_float32 is None
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    z, cond = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    low, path = scores_and_path(ScoreInputs(unet, z, 500, cond, (1, 2)))
    assert path == "tail" and low.dtype == torch.float32 and unet.dtype == torch.bfloat16
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())  # the round trip is exact
    ref, _ = scores_and_path(ScoreInputs(tiny_backbone.unet, z, 500, cond, (1, 2)))
    assert (low - ref).abs().max() <= 0.1 * ref.abs().max()  # bfloat16 weights: close, not equal


def test_unknown_gradient_unet_is_a_config_error(tiny_folder):
    with pytest.raises(ConfigError, match="model.gradient_unet"):
        load_sd15(**sd15_config(path=str(tiny_folder), gradient_unet="autocast"))


def test_sd15_from_a_folder_generates_the_same_image_as_the_tiny_model(tmp_path, tiny_folder):
    common = minimal_run()
    run_benchmark(compose_cfg([*common, "model=tiny"], tmp_root=tmp_path / "tiny"))
    run_benchmark(compose_cfg([*common, "model=sd15", f"model.path={tiny_folder}"], tmp_root=tmp_path / "sd15"))
    tiny = sorted((tmp_path / "tiny" / "outputs").rglob("images/**/*.png"))
    sd15 = sorted((tmp_path / "sd15" / "outputs").rglob("images/**/*.png"))
    assert len(tiny) == len(sd15) == 1
    assert "/sd15/" in str(sd15[0]) and "/tiny/" in str(tiny[0])
    assert tiny[0].read_bytes() == sd15[0].read_bytes()


def test_a_hugging_face_cache_with_the_pinned_revision_loads_offline(tmp_path, tiny_folder):
    revision = sd15_config()["revision"]
    repo_dir = tmp_path / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    shutil.copytree(tiny_folder, repo_dir / "snapshots" / revision)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)
    backbone = load_sd15(**sd15_config(cache_dir=str(tmp_path / "hub")))
    assert backbone.provenance["weights"] == f"{REPO_ID}@{revision}"


def test_offline_with_an_empty_cache_fails_before_generation_naming_the_model_and_the_three_ways(tmp_path):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    overrides = [
        "model=sd15",
        f"model.cache_dir={tmp_path / 'empty'}",
        "metrics=none",
        "dataset.subcategories=[forest]",
    ]
    cfg = compose_cfg(overrides, tmp_root=tmp_path)
    with pytest.raises(AssetMissingError) as info:  # unwrapped from Hydra's InstantiationException
        run_benchmark(cfg)
    message = str(info.value)
    assert f"{REPO_ID}@{cfg.model.revision}" in message and "HF_HUB_OFFLINE=1" in message
    assert "go online" in message and "HF_HOME" in message and "model.path=" in message
    assert not list((tmp_path / "outputs").rglob("*.png"))


def test_online_with_the_hub_unreachable_fails_at_the_probe_with_the_message(tmp_path, monkeypatch):
    """Online mode, but the hub endpoint refuses connections: one quick probe, then one message."""
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", "http://127.0.0.1:9")
    cfg = sd15_config(cache_dir=str(tmp_path / "empty"))
    with pytest.raises(AssetMissingError) as info:
        load_sd15(**cfg)
    message = str(info.value)
    assert "the hub cannot be reached" in message and "Connection refused" in message
    assert f"{REPO_ID}@{cfg['revision']}" in message
    assert "go online" in message and "HF_HOME" in message and "model.path=" in message
    assert not (tmp_path / "empty").exists() or not any((tmp_path / "empty").rglob("*.safetensors"))


def test_local_paths_that_cannot_work_are_named(tmp_path, tiny_folder):
    with pytest.raises(AssetMissingError, match="does not exist"):
        load_sd15(**sd15_config(path=str(tmp_path / "nowhere")))
    pickle = tmp_path / "model.bin"
    pickle.write_bytes(b"\x80\x04")
    with pytest.raises(ConfigError, match=r"suffix '\.bin'"):
        load_sd15(**sd15_config(path=str(pickle)))
    partial = tmp_path / "partial"
    shutil.copytree(tiny_folder, partial)
    (partial / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(AssetMissingError, match=r"lacks \['unet/diffusion_pytorch_model.safetensors'\]"):
        load_sd15(**sd15_config(path=str(partial)))
    shutil.copy(tiny_folder / "unet" / "diffusion_pytorch_model.safetensors", partial / "unet")
    weights = partial / "text_encoder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # an interrupted download
    with pytest.raises(AssetMissingError, match="corrupt file"):
        load_sd15(**sd15_config(path=str(partial)))


def test_a_folder_with_pickled_weights_in_place_of_safetensors_names_them(tmp_path, tiny_folder):
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_folder, pickled)
    weights = pickled / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))  # the layout of a pickled diffusers folder
    expected = (
        r"model.path=\S+ lacks \['unet/diffusion_pytorch_model.safetensors'\] \(it holds "
        r"unet/diffusion_pytorch_model.bin, pickled weights, which are never loaded\) \(set model.variant=fp16"
    )
    with pytest.raises(AssetMissingError, match=expected):
        load_sd15(**sd15_config(path=str(pickled)))


def test_checkpoint_and_config_must_agree_on_training_keys_and_tokenizer(tmp_path):
    overrides = sd15_config()["scheduler"]
    with pytest.raises(ConfigError, match="prediction_type"):
        sd15_scheduler({**SD15_SCHEDULER_CONFIG, "prediction_type": "v_prediction"}, overrides)
    write_clip_tokenizer_files(tmp_path / "tokenizer")
    check_tokenizer(tmp_path)  # SD1.5's BPE: accepted
    vocab = json.loads((tmp_path / "tokenizer" / "vocab.json").read_text())
    vocab["<|newtoken|>"] = len(vocab)
    (tmp_path / "tokenizer" / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ConfigError, match="not the CLIP BPE vocabulary"):
        check_tokenizer(tmp_path)


def test_dtype_policy():
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    with pytest.raises(ConfigError, match="float16 on the CPU"):
        resolve_dtype("float16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="expected auto"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_sd15_config_composes_and_instantiates_with_a_path(tiny_folder):
    cfg = compose_cfg(["model=sd15", f"model.path={tiny_folder}", "model.image_size=32", "device=cpu"])
    assert cfg.model.revision == "451f4fe16113bff5a5d2269ed5ad43b0592e9a14" and cfg.model.image_size == 32
    assert compose_cfg(["model=sd15"]).model.image_size == 512
    backbone = instantiate(cfg.model, _convert_="all")
    assert backbone.name == "sd15" and backbone.vae_scale == 4
