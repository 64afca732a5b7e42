"""bench.task.SweepModels: the next job of a `-m` sweep reuses the previous job's backbone and metrics when their
config is the same, and what it makes is bit for bit what a fresh backbone makes."""

from __future__ import annotations

import hashlib

import pytest
from omegaconf import OmegaConf

import bench.task as task
from bench.task import SweepModels, run_benchmark
from tests.conftest import PIXEL_ONLY, compose_cfg

SMALL = [
    *PIXEL_ONLY,
    "model.image_size=32",
    "sampling.num_inference_steps=10",
    "dataset.images_per_subcategory=1",
    "dataset.prompts_per_subcategory=1",
    "dataset.subcategories=[forest]",
    "cpu_threads=1",
]
# The general path's columns swap every attention processor for their passes: a reused backbone must get its
# own back, or the next job's images change.
GRADSAM = ["method=gradsam", "method.injection_indices=[2,4,6]", "method.score.layers=res2"]


def test_reuse_builds_once_per_config_inside_a_multirun_and_always_outside(monkeypatch):
    cache, made = SweepModels(), []

    def make():
        made.append(object())
        return made[-1]

    first, second = (OmegaConf.create({"name": name}) for name in ("toy", "tiny"))
    monkeypatch.setattr(task, "in_multirun", lambda: False)
    assert cache.reuse("model", first, make) is not cache.reuse("model", first, make) and len(made) == 2
    monkeypatch.setattr(task, "in_multirun", lambda: True)
    kept = cache.reuse("model", first, make)
    assert cache.reuse("model", OmegaConf.create({"name": "toy"}), make) is kept  # an equal node, another object
    assert cache.reuse("metrics", first, make) is not kept  # each kind its own
    other = cache.reuse("model", second, make)
    assert other is not kept and cache.reuse("model", second, make) is other
    assert cache.reuse("model", first, make) is not kept  # one object per kind: the first was let go
    assert len(made) == 6  # 2 outside, then toy, metrics, tiny and toy again


def image_digests(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.png")}


@pytest.mark.parametrize("before", [["method=sdedit"], GRADSAM])
def test_a_reused_backbone_makes_the_images_a_fresh_one_makes(tmp_path, monkeypatch, before):
    built = []
    original = task.build
    monkeypatch.setattr(task, "build", lambda node, **kw: built.append(node.get("_target_")) or original(node, **kw))
    monkeypatch.setattr(task, "SWEEP_MODELS", SweepModels())
    monkeypatch.setattr(task, "in_multirun", lambda: True)
    run_benchmark(compose_cfg([*SMALL, *before, "task_name=first"], tmp_path / "sweep"))
    cfg = compose_cfg([*SMALL, *GRADSAM, "task_name=second"], tmp_path / "sweep")
    run_benchmark(cfg)
    assert built.count(cfg.model._target_) == 1  # the second job reused the first one's backbone
    reused_unet, fresh_unet = task.SWEEP_MODELS.last["model"][1].unet, original(cfg.model).unet
    assert {k: type(p) for k, p in reused_unet.attn_processors.items()} == {
        k: type(p) for k, p in fresh_unet.attn_processors.items()
    }  # what the jobs changed (the columns' explicit attention, the recorded layers) came back
    assert reused_unet.dtype == fresh_unet.dtype and not any(p.requires_grad for p in reused_unet.parameters())
    monkeypatch.setattr(task, "in_multirun", lambda: False)
    run_benchmark(compose_cfg([*SMALL, *GRADSAM, "task_name=second"], tmp_path / "fresh"))
    assert built.count(cfg.model._target_) == 2
    reused = image_digests(tmp_path / "sweep" / "outputs" / "second")
    fresh = image_digests(tmp_path / "fresh" / "outputs" / "second")
    assert reused and reused == fresh
