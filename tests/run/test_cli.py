"""`python -m bench.run` as a real subprocess on the tiny offline profile."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd

from bench.config import REPO_ROOT
from tests.conftest import FAST, run_cli, with_test_profile


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


# What checking a config must not import: seconds before a one-line refusal (diffusers alone pulls in
# torch._dynamo and every diffusers model). The model, the metrics and the stages import them when they are built.
HEAVY = ("diffusers", "transformers", "open_clip", "torchmetrics")
CHECK_ONLY = """
import json, sys
from hydra import compose, initialize_config_dir
from bench.cli_checks import check_overrides
from bench.config import CONF_DIR
from bench.sd.errors import ConfigError
from bench.summary import start_lines
from bench.task import validate_config
for overrides in json.loads(sys.argv[1]):
    check_overrides(overrides)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("bench", overrides=overrides)
    start_lines(cfg)
    try:
        print(type(validate_config(cfg)[1]).__name__)
    except ConfigError as exc:
        print("refused:", exc)
print(sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2:])))
"""


def test_checking_a_config_imports_no_model_library(tmp_path):
    """bench.run's path to validate_config (its refusals, and every method's check) imports neither diffusers,
    transformers, open_clip nor torchmetrics: a refused run pays no model library's import time."""
    methods = ["sdedit", "txt2img", "diffedit", "blended_latent", "gradsam"]
    runs = [[f"paths.root_dir={tmp_path}", f"method={m}"] for m in methods]
    runs.append([f"paths.root_dir={tmp_path}", "method=sdedit", "method.strength=1.5"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO_ROOT)}
    argv = [json.dumps([with_test_profile(r) for r in runs]), *HEAVY]
    proc = subprocess.run(
        [sys.executable, "-c", CHECK_ONLY, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    *built, refused, imported = proc.stdout.splitlines()
    assert built == ["SDEdit", "Txt2Img", "DiffEdit", "BlendedLatent", "GradSAM"]
    assert refused.startswith("refused: method.strength=1.5")
    assert imported == "[]", f"checking a config imported {imported}"
