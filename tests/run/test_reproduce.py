"""`make reproduce-table1 PROFILE=offline` on a small N: every file, a report with live links, W&B tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd

from bench.config import REPO_ROOT
from bench.reporting.html import referenced_files

SMALL = [
    "dataset.images_per_subcategory=1",
    "dataset.prompts_per_subcategory=1",
    "dataset.subcategories=[forest]",
    "cpu_threads=1",
]


def test_reproduce_table1_offline_writes_every_file(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "BENCH_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [
        sys.executable,
        "-m",
        "bench.reproduce",
        "table1",
        "--profile",
        "offline",
        "--logger",
        "wandb",
        "--root-dir",
        str(tmp_path),
        *SMALL,
    ]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    folder = tmp_path / "results" / "table1"
    for name in (
        "samples.csv",
        "table1.csv",
        "table1.md",
        "table1_by_category.csv",
        "table1_by_prompt.csv",
        "table1_set_level.csv",
        "paper_comparison.csv",
        "report.html",
    ):
        assert (folder / name).is_file(), name
    table = pd.read_csv(folder / "table1.csv")
    assert len(table) == 8 and set(table["N"]) == {1}
    assert {"gradsam", "sdedit_0.6", "sdedit_0.9", "txt2img", "blended_latent", "diffedit"} <= set(table["label"])
    assert set(table[table["label"] == "gradsam"]["ablation"]) == {"none", "reference_code", "no_manipulation"}
    assert list((folder / "figures").glob("samples_*.png")) and list((folder / "figures").glob("box_*.png"))
    links = referenced_files(folder / "report.html")
    assert links and all((folder / link).is_file() for link in links)
    assert "6.89" in (folder / "table1.md").read_text()

    # The offline profile is the toy world: its rows carry the metrics only the known truth allows.
    samples = pd.read_csv(folder / "samples.csv")
    assert set(samples["model"]) == {"toy"} and set(samples["dataset"]) == {"toy_world"}
    masked = samples["label"].isin(["gradsam", "blended_latent", "diffedit"])
    assert samples.loc[masked, "mask_area"].between(0, 1).all()  # every mask method reports its mask
    assert samples.loc[~masked, "mask_iou"].isna().all()  # SDEdit, txt2img have no mask: NaN, never 0
    assert samples["subject_ok"].isin([0.0, 1.0]).all() and samples["subject_ok_oracle"].isin([0.0, 1.0]).all()
    assert samples["true_bg_mae"].dropna().between(0, 255).all()

    # W&B: one offline run per Hydra job plus the aggregate run, which holds the tables.
    runs = sorted((tmp_path / "outputs" / "wandb").rglob("offline-run-*"))
    assert len(runs) == 9
    tables = [p for run in runs for p in run.rglob("*.table.json")]
    logged = {json.loads(p.read_text())["columns"][0] for p in tables}
    assert "model" in logged or "task" in logged
    assert any("table1" in p.name for p in tables)
