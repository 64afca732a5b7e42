"""`make reproduce-table1 PROFILE=offline` on a small N: every file, a report with live links, W&B tables;
every override honoured (task_name included), and a failure is one line, not a traceback."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from hydra.utils import get_object

from bench.config import CONF_DIR, REPO_ROOT
from bench.reporting.html import referenced_files
from bench.reporting.tables import PAPER_TABLE1
from bench.reproduce import PROFILES, ReproduceError, Times, check_shards, merge_shards
from bench.summary import JobSummary
from tests.conftest import compose_cfg, printout_width
from tests.warm_cli import run_python_module

SMALL = [
    "dataset.images_per_subcategory=1",
    "dataset.prompts_per_subcategory=1",
    "dataset.subcategories=[forest]",
    "cpu_threads=1",
]


@pytest.mark.slow  # every row file through the real multirun: several minutes here
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
        "table1_headline.md",
        "paired_deltas.csv",
        "report.html",
    ):
        assert (folder / name).is_file(), name
    assert not (folder / "paper_comparison.csv").exists()  # the toy world is not comparable with the paper
    row_pairs, makes_mask = row_facts()
    table = pd.read_csv(folder / "table1.csv")
    assert len(table) == len(ROWS) and set(table["N"]) == {1}  # every row file of conf/row/
    assert set(zip(table["label"], table["ablation"], strict=True)) == set(row_pairs.values())
    assert list((folder / "figures").glob("samples_*.png")) and list((folder / "figures").glob("box_*.png"))
    links = referenced_files(folder / "report.html")
    assert links and all((folder / link).is_file() for link in links)
    md = (folder / "table1.md").read_text()
    assert "row is absent" in md and "model=toy" in md
    assert PAPER_TABLE1["label"] not in md and PAPER_TABLE1["label"] not in (folder / "table1_headline.md").read_text()
    assert "FID64 mean" in proc.stdout and "report: " in proc.stdout
    assert printout_width(proc.stdout[proc.stdout.index("method ") :], tmp_path) <= 100

    # The offline profile is the toy world: its rows carry the metrics only the known truth allows.
    samples = pd.read_csv(folder / "samples.csv")
    assert set(samples["model"]) == {"toy"} and set(samples["dataset"]) == {"toy_world"}
    pairs = pd.Series(list(zip(samples["label"], samples["ablation"], strict=True)))
    masked = pairs.isin([row_pairs[row] for row in ROWS if makes_mask[row]]).to_numpy()
    assert masked.any()
    assert samples.loc[masked, "mask_area"].between(0, 1).all()  # every mask method reports its mask
    assert samples.loc[~masked, "mask_iou"].isna().all()  # a method without a mask (SDEdit, txt2img): NaN, never 0
    assert samples["subject_ok"].isin([0.0, 1.0]).all() and samples["subject_ok_oracle"].isin([0.0, 1.0]).all()
    assert samples["true_bg_mae"].dropna().between(0, 255).all()

    # W&B: one offline run per Hydra job plus the aggregate run, which holds the tables.
    runs = sorted((tmp_path / "outputs" / "wandb").rglob("offline-run-*"))
    assert len(runs) == len(ROWS) + 1
    tables = [p for run in runs for p in run.rglob("*.table.json")]
    logged = {json.loads(p.read_text())["columns"][0] for p in tables}
    assert "model" in logged or "task" in logged
    assert any("table1" in p.name for p in tables)


ROWS = sorted(p.stem for p in (CONF_DIR / "row").glob("*.yaml"))
# Each row file composed as the offline profile runs it: its (label, ablation) pair, and whether its method
# makes a mask (`Method.makes_mask` of the class its config builds): a new row file needs no edit here.
# Composed when the test runs, not at collection (ten Hydra composes, ~6 s, on every xdist worker).


@functools.cache
def row_facts() -> tuple[dict, dict]:
    """(row -> (label, ablation), row -> whether its method makes a mask)."""
    configs = {row: compose_cfg([*PROFILES["offline"], *SMALL, f"row={row}"]) for row in ROWS}
    pairs = {row: (cfg.method.label, cfg.ablation.name) for row, cfg in configs.items()}
    masks = {row: bool(getattr(get_object(cfg.method._target_), "makes_mask", False)) for row, cfg in configs.items()}
    return pairs, masks


TINY_ONE_ROW = [
    "model=tiny",
    "dataset=synthetic_places",
    "metrics=none",
    "sampling.num_inference_steps=2",
    "dataset.subcategories=[forest]",
    "model.image_size=32",
    "row=txt2img",
]


def reproduce(tmp_path, *args: str, fresh: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENCH_CACHE_DIR": str(tmp_path / "cache")}
    return run_python_module("bench.reproduce", [*args, "--root-dir", str(tmp_path)], REPO_ROOT, env, 600, fresh)


def job(label: str, new: int, done: int, wall_s: float, generation_s: float) -> JobSummary:
    return JobSummary(
        "demo", label, "toy/toy_world", "run", "csv", "results", "root", new, done, 0, None, wall_s, generation_s, None
    )


def test_the_times_say_where_the_wall_time_went():
    rows = [job("gradsam_reference_code+none", 10, 0, 95.0, 80.0), job("txt2img+none", 0, 10, 4.0, 0.0)]
    parts = {"tables and set-level FID/KID": 30.4, "figures": 5.0, "report": 1.2}
    lines = Times(rows, multirun_s=130.0, sweep_s=110.0, parts=parts, total_s=170.0).lines()
    assert lines[0].startswith("time per row") and max(map(len, lines)) <= 100
    assert lines[1].split() == [
        "gradsam_reference_code+none",
        "10",
        "new",
        "1",
        "min",
        "35",
        "s",
        "8.0",
        "s",
        "a",
        "sample",
        "15",
        "s",
    ]
    assert lines[2].split() == ["txt2img+none", "0", "new,", "10", "done", "4", "s", "no", "new", "sample", "4", "s"]
    text = "\n".join(lines)
    assert "rows 1 min 39 s" in text and "process start-up\n  20 s; Hydra between the rows 11 s" in text
    assert (
        "tables and set-level FID/KID 30 s; figures 5 s; report 1 s" in text and lines[-1] == "total: 2 min 50 s wall"
    )
    unrecorded = Times([], multirun_s=61.0, sweep_s=None, parts=parts, total_s=99.0).lines()
    assert "the multirun 1 min 01 s (it left no record of its rows)" in "\n".join(unrecorded)


def test_shards_merge_into_one_line_per_row():
    """Each row's shards as one job: counts summed, the slowest shard's wall time, the longest loading."""
    one = [job("gradsam_res8+none", 5, 1, 100.0, 90.0), job("txt2img+none", 5, 0, 20.0, 12.0)]
    two = [job("gradsam_res8+none", 5, 0, 110.0, 95.0), job("txt2img+none", 4, 0, 18.0, 8.0)]
    sweep_s, rows = merge_shards([(130.0, one), (140.0, two)])
    assert sweep_s == 140.0 and [r.label for r in rows] == ["gradsam_res8+none", "txt2img+none"]
    res8, txt = rows
    assert (res8.made, res8.skipped, res8.wall_s, res8.generation_s) == (10, 1, 110.0, 95.0)
    assert (txt.made, txt.wall_s, txt.generation_s) == (9, 20.0, 10.0)  # 20 s wall less the longest loading (10 s)
    assert merge_shards([(130.0, one), None]) is None  # a shard without a record: no per-row times at all
    lines = Times(rows, multirun_s=150.0, sweep_s=140.0, parts={}, total_s=160.0, shards=2).lines()
    assert lines[0].startswith("time per row (2 processes at once") and max(map(len, lines)) <= 100
    assert lines[1].split()[:3] == ["gradsam_res8+none", "10", "new,"]


@pytest.mark.parametrize("shards", [0, -1, True, "2", 1.5])
def test_shards_must_be_a_count(shards):
    with pytest.raises(ReproduceError, match="expected an integer >= 1"):
        check_shards(shards, [])


def test_shards_refuse_the_overrides_they_set():
    check_shards(1, ["cpu_threads=1", "shard.count=2"])  # one process: the user's own split is honoured
    for override in ["cpu_threads=2", "shard.index=1", "+shard.count=3"]:
        with pytest.raises(ReproduceError, match="drop") as refused:
            check_shards(2, ["model=tiny", override])
        assert override in str(refused.value) and "\n" not in str(refused.value)


def test_reproduce_honours_task_name_and_every_override_and_runs_its_shards_at_once(tmp_path):
    proc = reproduce(tmp_path, "demo", "--shards", "2", "task_name=mine", "seeds=[0,1]", *TINY_ONE_ROW)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "results" / "mine" / "table1.md").is_file() and (
        tmp_path / "results" / "mine" / "report.html"
    ).is_file()
    assert not (tmp_path / "results" / "demo").exists()
    samples = pd.read_csv(tmp_path / "results" / "mine" / "samples.csv")
    assert (
        set(samples["task"]) == {"mine"} and set(samples["label"]) == {"txt2img"} and set(samples["model"]) == {"tiny"}
    )
    assert str(tmp_path / "results" / "mine" / "report.html") in proc.stdout
    launched = [line for line in proc.stdout.splitlines() if line.startswith("+ ")]
    assert [line.split()[-3:] for line in launched] == [
        ["shard.index=0", "shard.count=2", "cpu_threads=1"],
        ["shard.index=1", "shard.count=2", "cpu_threads=1"],
    ]
    assert sorted(samples["seed"]) == [0, 1] and set(samples["status"]) == {"ok"}  # one sample per shard
    times = proc.stdout[proc.stdout.index("time per row") :].splitlines()  # after the tables: where the time went
    assert "2 processes at once" in times[0] and times[1].split()[:3] == ["txt2img+none", "2", "new"]
    assert (
        "s a sample" in times[1] and "tables and set-level FID/KID" in proc.stdout and times[-1].startswith("total: ")
    )
    assert printout_width("\n".join(times), tmp_path) <= 100


def test_reproduce_failures_are_one_line(tmp_path):
    typo = reproduce(tmp_path, "table1", "--profile", "offline", "sampling.guidnce_scale=3", fresh=True)
    assert typo.returncode == 2 and not (tmp_path / "outputs").exists()  # refused before any job started
    assert typo.stderr.strip().count("\n") == 0 and "guidance_scale" in typo.stderr and "Traceback" not in typo.stderr
    # A run that writes no samples (dry_run): the tables cannot be built, and it says which task and why.
    # (the protocol's 50 steps: every ablation's injection indices must fit the schedule)
    tiny = [o for o in TINY_ONE_ROW[:-1] if not o.startswith("sampling.")]
    dry = reproduce(tmp_path, "ablations", "task_name=dry", "dry_run=true", *tiny)
    assert dry.returncode == 1 and "Traceback" not in dry.stderr
    last = dry.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "'dry'" in last and "samples.csv does not exist" in last
    swept = reproduce(tmp_path, "demo", "task_name=a,b")
    assert swept.returncode == 2 and "task_name must be one value" in swept.stderr
