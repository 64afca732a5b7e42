"""The attribution study end to end on the smallest profile (real subprocesses), and its layer-set algebra."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bench.attribution.study import cell_maps, layer_sets
from bench.config import REPO_ROOT


def test_layer_sets_sum_the_per_layer_maps():
    names = ["down.0", "down.1", "mid", "up.1", "up.2"]
    sides = [16, 8, 4, 8, 16]
    maps = [np.full((4, 2, 2), float(i + 1), dtype=np.float32) for i in range(len(names))]
    frame = pd.DataFrame({"kind": "gradsam", "layer": names, "index": 5, "timestep": 800, "side": sides, "map": maps})
    sets = layer_sets(frame)
    assert sets["last"] == ["up.2"] and sets["all"] == names and sets["res8"] == ["down.1", "up.1"]
    out = {name: m for _, name, _, _, m in cell_maps(frame)}
    assert out["res8"][0, 0, 0] == 2 + 4 and out["all"][0, 0, 0] == 15 and out["layer:mid"][0, 0, 0] == 3


def test_the_study_runs_end_to_end_on_the_smallest_profile(tmp_path: Path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [sys.executable, "-m", "bench.attribution", "--profile", "smoke", "--shards", "1"]
    cmd += ["--root-dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    folder = tmp_path / "results" / "attribution"
    for name in ("attribution.csv", "attribution.md", "mask_rules.csv", "samples_attribution.csv", "report.html"):
        assert (folder / name).is_file(), name
    assert {p.name for p in (folder / "figures").iterdir()} == {"auroc_by_layer.png", "auroc_by_step.png"}
    table = pd.read_csv(folder / "attribution.csv")
    assert set(table["truth"]) == {"no_manipulation", "method_output"}
    kinds = set(table[table["truth"] == "no_manipulation"]["kind"])
    assert kinds == {"gradsam", "attention_only", "daam", "noise_diff", "chance:uniform", "chance:centre"}
    assert {"last", "all", "own:last"} <= set(table["layer_set"])
    assert set(table["index"]) == {2, 4, 6}
    assert "Attribution study" in (folder / "report.html").read_text()
