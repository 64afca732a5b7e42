"""`python -m bench.run` as a real subprocess on the tiny offline profile."""

from __future__ import annotations

import json

import pandas as pd

from tests.conftest import FAST, run_cli


def test_run_writes_images_rows_config_and_samples_csv(tmp_path):
    run_cli([*FAST, f"paths.root_dir={tmp_path}", "method=sdedit"], cwd=tmp_path)
    run_dir = tmp_path / "outputs/demo/tiny/synthetic_places/sdedit_0.6+none"
    assert (run_dir / "config.yaml").exists()
    env = json.loads((run_dir / "environment-shard-0-of-1.json").read_text())
    assert {"git_sha", "git_dirty", "packages", "device", "torch_threads"} <= env.keys()
    samples = pd.read_csv(tmp_path / "results/demo/samples.csv")
    assert len(samples) == 2 and set(samples["status"]) == {"ok"}
    assert set(samples["subcategory"]) == {"forest", "ocean"}
    for path in samples["image_path"]:
        assert (tmp_path / path).exists()
    assert {"method.strength", "sampling.guidance_scale", "seed", "prompt", "subject"} <= set(samples.columns)


def test_dry_run_prints_plan_and_generates_nothing(tmp_path):
    proc = run_cli([*FAST, f"paths.root_dir={tmp_path}", "dry_run=true"], cwd=tmp_path)
    assert "would generate forest/00000/deer_roaming/s51828" in proc.stdout
    assert "guidance_scale: 8.0" in proc.stdout
    assert not (tmp_path / "results").exists()


def test_misspelt_key_names_the_allowed_keys(tmp_path):
    proc = run_cli([f"paths.root_dir={tmp_path}", "sampling.guidnce_scale=3"], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "guidnce_scale" in proc.stderr and "guidance_scale" in proc.stderr


def test_unknown_option_lists_the_options(tmp_path):
    proc = run_cli([f"paths.root_dir={tmp_path}", "method=sdeditt"], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "sdedit" in proc.stderr and "txt2img" in proc.stderr


def test_bad_value_is_a_clear_error_before_any_work(tmp_path):
    proc = run_cli([*FAST, f"paths.root_dir={tmp_path}", "method.strength=1.5"], cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "strength=1.5" in proc.stderr and "(0, 1]" in proc.stderr
    assert not list(tmp_path.rglob("*.png"))
