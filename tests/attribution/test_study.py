"""The attribution study end to end on the smallest profile (real subprocesses), and its layer-set algebra."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.attribution.report import truth_function
from bench.attribution.study import TruthCells, cell_maps, layer_sets, sample_rows
from bench.config import REPO_ROOT
from bench.truth.record import TRUTH_FILE
from tests.attribution.conftest import MapsRun
from tests.warm_cli import run_python_module


def test_layer_sets_sum_the_per_layer_maps():
    names = ["down.0", "down.1", "mid", "up.1", "up.2"]
    sides = [16, 8, 4, 8, 16]
    maps = [np.full((4, 2, 2), float(i + 1), dtype=np.float32) for i in range(len(names))]
    frame = pd.DataFrame({"kind": "gradsam", "layer": names, "index": 5, "timestep": 800, "side": sides, "map": maps})
    sets = layer_sets(frame)
    assert sets["last"] == ["up.2"] and sets["all"] == names and sets["res8"] == ["down.1", "up.1"]
    out = {name: m for _, name, _, _, m in cell_maps(frame)}
    assert out["res8"][0, 0, 0] == 2 + 4 and out["all"][0, 0, 0] == 15 and out["layer:mid"][0, 0, 0] == 3


def write_truth(root: Path, key: str, mask: np.ndarray, mask_alt: np.ndarray | None = None) -> str:
    path = root / "masks" / key / TRUTH_FILE
    path.parent.mkdir(parents=True)
    arrays = {"mask": mask, "probability": mask.astype(np.float16)}
    np.savez(path, **arrays, **({} if mask_alt is None else {"mask_alt": mask_alt}))
    return str(path.relative_to(root))


def test_truth_of_reads_the_recorded_truth_at_both_thresholds_and_of_the_control(tmp_path: Path):
    main = np.zeros((8, 8), dtype=bool)
    main[:4, :4] = True  # the top-left 2x2 cells of a 4x4 grid
    alt = main.copy()
    alt[4:6, :4] = True  # + two cells half covered at the alt threshold
    base = {"model": "m", "dataset": "d", "image_id": "i", "prompt": "p", "seed": 0, "status": "ok", "ablation": "none"}
    base |= {"method": "gradsam"}  # the control is the gradsam row that does not manipulate, whatever its label
    samples = pd.DataFrame(
        [
            {
                **base,
                "label": "no_manipulation",
                "method.manipulate": False,
                "sample_key": "a",
                "truth_path": write_truth(tmp_path, "a", main, alt),
            },
            {
                **base,
                "label": "gradsam",
                "method.manipulate": True,
                "sample_key": "b",
                "truth_path": write_truth(tmp_path, "b", ~main),
            },
        ]
    )
    samples["truth_source"], samples["truth_provenance"], samples["truth_nan_reason"] = "fixed", "fixed map", ""
    samples["truth_threshold"], samples["truth_alt_threshold"] = 0.5, 0.3
    method = samples.iloc[1]
    own = truth_function(samples, tmp_path, "own", "main")(method, 4, 4)
    assert np.array_equal(own.cells, ~(np.arange(4)[:, None] < 2) | ~(np.arange(4)[None] < 2))
    control = truth_function(samples, tmp_path, "control", "main")(method, 4, 4)
    assert np.array_equal(control.cells[:2, :2], np.ones((2, 2), bool)) and control.cells.sum() == 4
    assert control.columns == {
        "truth_threshold": "main",
        "truth_cutoff": 0.5,
        "truth_source": "fixed",
        "truth_provenance": "fixed map",
    }
    control_alt = truth_function(samples, tmp_path, "control", "alt")(method, 4, 4)
    assert control_alt.cells.sum() == 6 and control_alt.columns["truth_cutoff"] == 0.3
    # no mask_alt recorded (the oracle's binary probability): the alt truth is the main one
    assert np.array_equal(truth_function(samples, tmp_path, "own", "alt")(method, 4, 4).cells, own.cells)
    # maps of an older run (no truth recorded): the toy oracle on toy_world only, a clear message elsewhere
    old = method.copy()
    old["truth_path"] = float("nan")
    with pytest.raises(SystemExit, match="no recorded subject truth"):
        truth_function(samples, tmp_path, "own", "main")(old, 4, 4)


def test_an_empty_truth_gives_nan_metrics_with_its_reason():
    maps = pd.DataFrame(
        {
            "kind": "gradsam",
            "layer": ["a", "b"],
            "index": 2,
            "timestep": 800,
            "side": 4,
            "map": list(np.random.default_rng(0).random((2, 2, 4, 4))),
        }
    )
    row = pd.Series({"sample_key": "k", "image_id": "i", "prompt": "p", "seed": 0, "label": "x"})
    empty = TruthCells(np.zeros((4, 4), bool), "fixed finds nothing", {"truth_threshold": "main"})
    rows, masks = sample_rows(row, maps, empty, "no_manipulation")
    assert rows and all(np.isnan(r["auroc"]) and r["truth_nan_reason"].startswith("fixed finds nothing") for r in rows)
    assert masks and all(np.isnan(m["mask_iou"]) for m in masks)  # NaN against an empty truth, never a silent 0
    ok, _ = sample_rows(row, maps, np.eye(4, dtype=bool), "no_manipulation")
    assert all(r["truth_nan_reason"] == "" and not np.isnan(r["auroc"]) for r in ok)


def run_study(root: Path, *overrides: str) -> tuple[Path, str]:
    """The study's folder, and what the command printed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    args = ["--stage", "maps", "--profile", "smoke", "--shards", "1", "--root-dir", str(root), *overrides]
    proc = run_python_module("bench.attribution", args, root, env, 1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return root / "results" / "attribution", proc.stdout


@pytest.mark.slow  # the session's shared smoke maps run (conftest.py: two Hydra jobs and the report, two samples)
def test_the_study_runs_end_to_end_on_the_smallest_profile(smoke_maps: MapsRun):
    folder, printed = smoke_maps.folder, smoke_maps.stdout
    for name in ("attribution.csv", "attribution.md", "mask_rules.csv", "samples_attribution.csv", "report.html"):
        assert (folder / name).is_file(), name
    figures = {"auroc_overview.png", "auroc_by_layer.png", "auroc_by_step.png"}
    assert {p.name for p in (folder / "figures").iterdir()} == figures
    # the printout ends with the verdict (its table, the answers, the files) within 100 columns, not the Markdown
    verdict = printed[printed.index("Verdict: does the score find the subject?") :]
    assert max(map(len, verdict.splitlines())) <= 100 and "report: results/attribution/report.html" in verdict
    assert "Which layers find the subject?" in verdict and "## " not in printed
    table = pd.read_csv(folder / "attribution.csv")
    assert set(table["truth"]) == {"no_manipulation", "method_output"}
    # Table 1's summary scheme (bench.reporting.tables.summarize), one column set per metric
    assert {"N", "auroc_mean", "auroc_mean_lo", "auroc_mean_hi", "auroc_n"} <= set(table.columns)
    assert not {"auroc_lo", "auroc_hi"} & set(table.columns)
    # the control's maps are the no_manipulation row's, the method's the paper row's (label gradsam, ablation none)
    assert set(table[table["truth"] == "method_output"]["label"]) == {"gradsam"}
    assert set(table[table["truth"] == "no_manipulation"]["label"]) == {"no_manipulation", "gradsam"}
    kinds = set(table[table["truth"] == "no_manipulation"]["kind"])
    assert kinds == {"gradsam", "attention_only", "daam", "noise_diff", "chance:uniform", "chance:centre"}
    assert {"last", "all", "own:last"} <= set(table["layer_set"])
    assert set(table["index"]) == {2, 4, 6, 9}  # the scoring steps, and the full-window DAAM at the chain's end (L)
    full = table[table["index"] == 9]
    assert set(full["kind"]) - {"chance:uniform", "chance:centre"} == {"daam"}  # only DAAM has a whole-chain map
    assert "Attribution study" in (folder / "report.html").read_text()
    assert set(table["truth_source"]) == {"oracle"} and set(table["truth_threshold"]) == {"main", "alt"}
    md = (folder / "attribution.md").read_text()
    assert "the two coincide" in md
    assert md.index("## Verdict") < md.index("## truth = no_manipulation") < md.index("## truth = method_output")


@pytest.mark.slow  # two Hydra jobs and the report: 80-95 s here
def test_the_study_takes_a_segmenters_truth_end_to_end(tmp_path: Path):
    """truth=clipseg_tiny: the real CLIPSeg code path records each image's truth and the study scores by it."""
    folder, _ = run_study(tmp_path, "truth=clipseg_tiny")
    samples = pd.read_csv(folder / "samples.csv")
    assert set(samples["truth_source"]) == {"clipseg_tiny"} and samples["truth_path"].notna().all()
    table = pd.read_csv(folder / "attribution.csv")
    assert set(table["truth_source"]) == {"clipseg_tiny"} and set(table["truth_threshold"]) == {"main", "alt"}
    assert set(table["truth"]) == {"no_manipulation", "method_output"}
    per_sample = pd.read_csv(folder / "samples_attribution.csv", keep_default_na=False, na_values=[""])
    assert set(per_sample["truth_cutoff"]) == {0.5, 0.3}
    empty = per_sample["truth_nan_reason"].notna()
    assert per_sample[empty]["auroc"].isna().all()  # an empty truth: NaN with its reason, never a silent 0
    md = (folder / "attribution.md").read_text()
    assert "Truth source: clipseg_tiny" in md and "not a trained segmenter" in md
    assert "AUROC under two truth thresholds" in md
