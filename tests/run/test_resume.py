"""Interrupted runs resume to exactly the uninterrupted result; W&B offline writes its run folder."""

from __future__ import annotations

from pathlib import Path

import pytest

import bench.task
from bench.task import run_benchmark
from tests.conftest import FAST, compose_cfg

OVERRIDES = [*FAST, "model.image_size=32", "dataset.subcategories=[forest,ocean,park]", "method=sdedit"]


def test_interrupted_run_resumes_to_the_same_samples_csv(tmp_path, monkeypatch):
    full = tmp_path / "full"
    run_benchmark(compose_cfg(OVERRIDES, tmp_root=full))

    resumed = tmp_path / "resumed"
    real_record = bench.task.record_sample
    calls = {"n": 0}

    def crash_after_two(*args, **kwargs):
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated interruption")
        calls["n"] += 1
        return real_record(*args, **kwargs)

    monkeypatch.setattr(bench.task, "record_sample", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(compose_cfg(OVERRIDES, tmp_root=resumed))
    monkeypatch.setattr(bench.task, "record_sample", real_record)
    rows = list((resumed / "outputs").rglob("rows/**/*.json"))
    assert len(rows) == 2

    summary = run_benchmark(compose_cfg(OVERRIDES, tmp_root=resumed))
    assert summary["pending"] == 1
    assert (resumed / "results/demo/samples.csv").read_bytes() == (full / "results/demo/samples.csv").read_bytes()
    assert run_benchmark(compose_cfg(OVERRIDES, tmp_root=resumed))["pending"] == 0


def test_wandb_offline_run_folder_is_written(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_cfg([*OVERRIDES, "dataset.subcategories=[forest]", "logger=wandb"], tmp_root=tmp_path)
    run_benchmark(cfg)
    runs = list((tmp_path / "outputs/wandb").rglob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb"))


def test_resuming_with_other_image_settings_is_refused(tmp_path):
    from bench.sd.errors import ConfigError

    small = [*OVERRIDES, "dataset.subcategories=[forest]"]
    run_benchmark(compose_cfg(small, tmp_root=tmp_path))
    with pytest.raises(ConfigError, match=r"sampling.guidance_scale differ"):
        run_benchmark(compose_cfg([*small, "sampling.guidance_scale=4"], tmp_root=tmp_path))
    # More samples with the same settings is a resume, not a conflict.
    assert run_benchmark(compose_cfg([*small, "seeds=[51828,7]"], tmp_root=tmp_path))["pending"] == 1
