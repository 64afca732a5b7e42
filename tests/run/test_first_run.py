"""`python -m bench.run` as a user's first command: the trained offline profile by default, a table of its own,
and a closing summary (bench/summary.py) after each job and after a `-m` sweep."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from bench.config import CONF_DIR, REPO_ROOT, build
from bench.reproduce import PROFILES
from bench.summary import WIDTH, JobSummary, aggregate_command, duration, format_job, format_sweep, random_weights
from bench.task import plan_work, run_benchmark
from tests.conftest import FAST, PIXEL_ONLY, compose_cfg, run_cli, run_cli_exact

# The command, exactly as a user types it after `make demo`.
FIRST_COMMAND = ["method=gradsam", "ablation=no_blur"]
POISONED = "forest/00000/deer_roaming/s1"
NAN_SDEDIT = ["method._target_=tests.run.test_faults.NaNInjectingSDEdit", f"+method.poison_key={POISONED}"]
TINY_SDEDIT = [*FAST, *PIXEL_ONLY, "model.image_size=32", "method=sdedit", "cpu_threads=1"]


def compose_plain(overrides: list[str]):
    """conf/bench.yaml as `python -m bench.run` composes it: the user's defaults, not the tests' TINY profile."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("bench", overrides=overrides)


def planned_keys(cfg) -> list[str]:
    return [u.key for u in plan_work(build(cfg.dataset).references(), list(cfg.seeds), 0, 1)]


def summary_block(stdout: str, first: str) -> list[str]:
    """The summary lines of a run's stdout: from the line starting with `first` to the end of that block."""
    lines = stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith(first))
    end = start + 1
    while end < len(lines) and lines[end].startswith("  "):
        end += 1
    return lines[start:end]


def activate(monkeypatch, tmp_path: Path) -> None:
    """The environment of a user whose virtual environment is active (`python` is this interpreter)."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / ".cache"))


# -- the default profile and its task ---------------------------------------------------------------------------


def test_the_default_is_the_trained_offline_profile_with_its_metrics_into_a_task_of_its_own():
    cfg = compose_plain([])
    assert (cfg.model.name, cfg.dataset.name, cfg.metrics.clip) == ("toy", "toy_world", "toy")
    assert {"mask_iou", "subject_ok", "true_bg_psnr", "clip"} <= set(cfg.metrics.per_sample)
    assert cfg.task_name == "runs-toy-toy_world" and random_weights(cfg) is None
    # A first run's size: the demo's samples (same images, prompts and seeds), one per subcategory.
    demo = compose_plain(["experiment=demo"])
    assert planned_keys(cfg) == planned_keys(demo) and len(planned_keys(cfg)) == len(cfg.protocol.subcategories)


@pytest.mark.parametrize(
    ("overrides", "metrics", "task"),
    [
        (["model=tiny", "dataset=synthetic_places"], "default", "runs-tiny-synthetic_places"),
        (["dataset=synthetic_places", "model=tiny"], "default", "runs-tiny-synthetic_places"),
        (["model=tiny"], "toy", "runs-tiny-toy_world"),  # the toy world's metrics score any model's images
        (["model=sd15", "dataset=places365"], "default", "runs-sd15-places365"),
        (["metrics=none"], "none", "runs-toy-toy_world"),  # the command line wins over the dataset's choice
        (["dataset=toy_world", "metrics=default"], "default", "runs-toy-toy_world"),
        (["metrics=default", "dataset=toy_world"], "default", "runs-toy-toy_world"),
        (["task_name=mine"], "toy", "mine"),
    ],
)
def test_the_metrics_follow_the_dataset_unless_named_and_the_task_follows_the_profile(overrides, metrics, task):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("bench", overrides=overrides, return_hydra_config=True)
    assert cfg.hydra.runtime.choices.metrics == metrics
    assert cfg.task_name == task


def test_the_random_profile_says_so_and_the_studies_keep_their_tasks():
    tiny = compose_plain(["model=tiny", "dataset=synthetic_places"])
    assert random_weights(tiny) == "model=tiny, metrics.clip=tiny_random"
    assert random_weights(compose_plain(["model=tiny", "metrics=none"])) == "model=tiny"
    assert random_weights(compose_plain(["model=sd15", "dataset=places365"])) is None
    for experiment in ("demo", "table1", "ablations"):
        assert compose_plain([f"experiment={experiment}"]).task_name == experiment
    # `make reproduce-table1 PROFILE=offline` keeps its size: 2 scenes x every prompt of the toy world.
    offline = compose_plain(["experiment=table1", *PROFILES["offline"]])
    assert len(planned_keys(offline)) == 2 * sum(len(s.prompts) for s in offline.protocol.subcategories)


def test_the_tests_profile_is_added_only_where_a_test_names_none():
    assert compose_cfg([]).model.name == "tiny" and compose_cfg([]).task_name == "demo"
    named = compose_cfg(["model=toy", "dataset=toy_world", "task_name=t"])
    assert (named.model.name, named.dataset.name, named.task_name) == ("toy", "toy_world", "t")
    assert compose_cfg(["experiment=demo"]).model.name == "toy"
    assert compose_cfg(["model.image_size=32"]).model.name == "tiny"  # a key inside the model names no model


# -- the summary's lines ----------------------------------------------------------------------------------------


def job(tmp_path: Path, **changes) -> JobSummary:
    values = {
        "task": "runs-toy-toy_world",
        "label": "gradsam+no_blur",
        "profile": "toy/toy_world",
        "run_dir": str(tmp_path / "outputs/runs-toy-toy_world/toy/toy_world/gradsam+no_blur"),
        "samples_csv": str(tmp_path / "results/runs-toy-toy_world/samples.csv"),
        "results_dir": str(tmp_path / "results"),
        "root_dir": str(tmp_path),
        "made": 10,
        "skipped": 0,
        "failed": 0,
        "first_failure": None,
        "wall_s": 125.0,
        "generation_s": 100.0,
        "random_weights": None,
    }
    return JobSummary(**{**values, **changes})


def test_a_job_summary_has_at_most_8_lines_within_100_columns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # paths show relative to the current folder
    activate(monkeypatch, tmp_path)  # `python` is this interpreter
    reason = "non-finite latent (" + "x" * 300 + ")"
    worst = job(
        tmp_path,
        made=8,
        skipped=3,
        failed=2,
        first_failure=f"{POISONED}: {reason}",
        random_weights="model=tiny, metrics.clip=tiny_random",
    )
    lines = format_job(worst, {"toy/toy_world": 11, "tiny/synthetic_places": 2})
    text = "\n".join(lines)
    assert len(lines) == 8 and max(map(len, lines)) <= WIDTH, text
    assert lines[0] == "gradsam+no_blur on toy/toy_world: 8 made, 3 skipped (already done), 2 failed"
    assert f"first failure:  gradsam+no_blur {POISONED}: non-finite latent (xxx" in text and lines[1].endswith("...")
    assert "run folder:     outputs/runs-toy-toy_world/toy/toy_world/gradsam+no_blur" in text
    assert "task's rows:    results/runs-toy-toy_world/samples.csv (13 samples)" in text
    assert "table, report:  python -m bench.aggregate --task runs-toy-toy_world --results-dir results" in text
    assert "time:           2 min 05 s wall; 10.0 s per sample (10 in 1 min 40 s; loading, checks 25 s)" in text
    assert "random weights: model=tiny, metrics.clip=tiny_random: images and numbers mean nothing" in text
    assert "mixed table:    its samples.csv now holds tiny/synthetic_places (2), toy/toy_world (11)" in text

    plain = format_job(job(tmp_path), {"toy/toy_world": 10})
    assert len(plain) == 5 and not any("random" in line or "mixed" in line or "failure" in line for line in plain)
    done = format_job(job(tmp_path, made=0, skipped=10, generation_s=0.0, wall_s=14.2), {"toy/toy_world": 10})
    assert "time:           14 s wall; no sample to make (all 10 already done)" in "\n".join(done)


def test_a_sweep_summary_adds_up_its_jobs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    activate(monkeypatch, tmp_path)
    first = job(tmp_path, made=3, skipped=1, failed=0, generation_s=30.0)
    second = job(
        tmp_path,
        label="sdedit_0.6+none",
        run_dir=str(tmp_path / "outputs/runs-toy-toy_world/toy/toy_world/sdedit_0.6+none"),
        made=4,
        skipped=0,
        failed=1,
        first_failure=f"{POISONED}: no image",
        generation_s=20.0,
    )
    lines = format_sweep([first, second], 3725.0, {first.samples_csv: {"toy/toy_world": 9}})
    text = "\n".join(lines)
    assert lines[0] == "sweep of 2 jobs: 7 made, 1 skipped (already done), 1 failed"
    assert f"first failure:  sdedit_0.6+none {POISONED}: no image" in text
    assert "run folders:    outputs/runs-toy-toy_world/toy/toy_world" in text
    assert "time:           1 h 02 min wall; 6.2 s per sample (8 in 50 s; loading, checks 1 h 01 min)" in text
    assert len(lines) <= 8 and max(map(len, lines)) <= WIDTH
    assert "no job summary reached" in format_sweep([], 5.0, {})[0]


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.4, "0 s"), (59.6, "1 min 00 s"), (61, "1 min 01 s"), (7322, "2 h 02 min")]
)
def test_durations_read_as_a_person_would_say_them(seconds, text):
    assert duration(seconds) == text


def test_the_aggregate_command_names_the_folders_only_where_they_differ_from_its_defaults(tmp_path):
    repo = job(tmp_path, results_dir=str(REPO_ROOT / "results"), root_dir=str(REPO_ROOT))
    assert aggregate_command([repo]).endswith("-m bench.aggregate --task runs-toy-toy_world")
    other = job(tmp_path, results_dir=str(tmp_path / "r"), root_dir=str(tmp_path / "root"))
    words = shlex.split(aggregate_command([other, job(tmp_path, task="b")]))
    assert words[words.index("-m") :] == [
        "-m",
        "bench.aggregate",
        "--task",
        "b",
        "--task",
        "runs-toy-toy_world",
        "--results-dir",
        str(tmp_path / "r"),
        "--root-dir",
        str(tmp_path / "root"),
    ]


def test_run_benchmark_counts_made_and_failed_samples_with_the_first_failure(tmp_path):
    result = run_benchmark(compose_cfg([*TINY_SDEDIT, "seeds=[1]", *NAN_SDEDIT], tmp_path))
    assert (result["planned"], result["pending"], result["made"], result["failed"]) == (2, 2, 1, 1)
    assert result["first_failure"].startswith(f"{POISONED}: non-finite latent (")
    assert result["generation_s"] > 0
    again = run_benchmark(compose_cfg([*TINY_SDEDIT, "seeds=[1]", *NAN_SDEDIT], tmp_path))
    assert (again["pending"], again["made"], again["failed"], again["first_failure"]) == (0, 0, 0, None)


# -- the command line -------------------------------------------------------------------------------------------


@pytest.mark.slow  # the command at its default size: 10 gradsam samples of the toy models, 50 steps
def test_the_first_command_runs_trained_models_into_its_own_task_and_ends_with_the_summary(tmp_path, monkeypatch):
    activate(monkeypatch, tmp_path)  # run_cli_exact passes os.environ on
    proc = run_cli_exact([*FIRST_COMMAND, f"paths.root_dir={tmp_path}"], cwd=tmp_path, timeout=1500)
    assert "random weights" not in proc.stdout
    lines = summary_block(proc.stdout, "gradsam+no_blur on toy/toy_world: ")
    assert proc.stdout.rstrip().endswith(lines[-1])  # the summary closes the output
    assert lines[0] == "gradsam+no_blur on toy/toy_world: 10 made, 0 skipped (already done), 0 failed"
    assert lines[1] == "  run folder:     outputs/runs-toy-toy_world/toy/toy_world/gradsam+no_blur"
    assert lines[2] == "  task's rows:    results/runs-toy-toy_world/samples.csv (10 samples)"
    assert lines[3] == "  table, report:  python -m bench.aggregate --task runs-toy-toy_world --results-dir results"
    assert lines[4].startswith("  time:           ") and " s per sample (10 in " in lines[4]
    assert len(lines) == 5 and max(map(len, lines)) <= WIDTH

    # Numbers from the trained models, in a task other than the demo's.
    assert not (tmp_path / "results/demo").exists()
    samples = pd.read_csv(tmp_path / "results/runs-toy-toy_world/samples.csv")
    assert len(samples) == 10 and set(samples["status"]) == {"ok"} and set(samples["task"]) == {"runs-toy-toy_world"}
    identity = samples[["model", "dataset", "label", "ablation"]].drop_duplicates().values.tolist()
    assert identity == [["toy", "toy_world", "gradsam", "no_blur"]]
    assert samples["clip_score_provenance"].str.contains("trained on the toy world").all()
    assert samples["mask_iou"].between(0, 1).all() and samples["subject_ok"].isin([0.0, 1.0]).all()

    # The printed command builds the task's table and report.
    command = shlex.split(lines[3].split(":  ", 1)[1])
    built = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stderr[-3000:]
    assert (tmp_path / "results/runs-toy-toy_world/report.html").is_file()

    # The same command again: nothing to make, every sample skipped.
    again = run_cli_exact([*FIRST_COMMAND, f"paths.root_dir={tmp_path}"], cwd=tmp_path, timeout=600)
    rerun = summary_block(again.stdout, "gradsam+no_blur on toy/toy_world: ")
    assert rerun[0].endswith(": 0 made, 10 skipped (already done), 0 failed")
    assert "no sample to make (all 10 already done)" in rerun[4]

    # A random-weight smoke run into that task: said at the start, and the summary says the table mixes profiles.
    smoke = ["model=tiny", "dataset=synthetic_places", "task_name=runs-toy-toy_world", *TINY_SDEDIT]
    mixed = run_cli_exact([*smoke, f"paths.root_dir={tmp_path}"], cwd=tmp_path, timeout=600)
    assert mixed.stdout.startswith("warning: random weights (model=tiny): images and numbers mean nothing")
    text = "\n".join(summary_block(mixed.stdout, "sdedit_0.6+none on tiny/synthetic_places: "))
    assert "random weights: model=tiny: images and numbers mean nothing" in text
    assert "mixed table:    its samples.csv now holds tiny/synthetic_places (2), toy/toy_world (10)" in text


def test_a_sweep_prints_each_jobs_summary_and_one_for_the_whole_sweep(tmp_path):
    sweep = ["-m", "seeds=[1],[2]", *TINY_SDEDIT, *NAN_SDEDIT, f"paths.root_dir={tmp_path}"]
    proc = run_cli(sweep, cwd=tmp_path, timeout=600)
    jobs = [line for line in proc.stdout.splitlines() if line.startswith("sdedit_0.6+none on tiny/synthetic_places")]
    assert jobs == [
        "sdedit_0.6+none on tiny/synthetic_places: 1 made, 0 skipped (already done), 1 failed",
        "sdedit_0.6+none on tiny/synthetic_places: 2 made, 0 skipped (already done), 0 failed",
    ]
    lines = summary_block(proc.stdout, "sweep of 2 jobs: ")
    assert proc.stdout.rstrip().endswith(lines[-1]) and len(lines) <= 8
    text = "\n".join(lines)
    assert lines[0] == "sweep of 2 jobs: 3 made, 0 skipped (already done), 1 failed"
    assert f"first failure:  sdedit_0.6+none {POISONED}: non-finite latent (" in text
    assert "run folders:    outputs/demo/tiny/synthetic_places/sdedit_0.6+none" in text
    assert "task's rows:    results/demo/samples.csv" in text
    assert "random weights: model=tiny" in text and "(4 in " in text
    assert not (tmp_path / "outputs/.sweeps").exists()  # the jobs' summaries are gone with the sweep


def test_a_dry_run_sweep_prints_plans_and_no_summary(tmp_path):
    proc = run_cli(["-m", "method=sdedit,txt2img", "dry_run=true", *FAST, f"paths.root_dir={tmp_path}"], cwd=tmp_path)
    assert proc.stdout.count("would generate forest/00000/") == 2
    assert "sweep of" not in proc.stdout and "no job summary" not in proc.stdout and " made, " not in proc.stdout
    assert not (tmp_path / "outputs/.sweeps").exists() and not (tmp_path / "results").exists()
