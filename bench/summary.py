"""The closing summary of `python -m bench.run`: one per job, and one per `-m` sweep (a Hydra callback).

A job's summary, at most 8 lines within 100 columns (a path or a command is never cut; the failure, random
weights and mixed table lines only when they apply):

    gradsam+no_blur on toy/toy_world: 10 made, 0 skipped (already done), 0 failed
      first failure:  gradsam+no_blur <sample key>: <reason, cut to the width>
      run folder:     outputs/runs-toy-toy_world/toy/toy_world/gradsam+no_blur
      task's rows:    results/runs-toy-toy_world/samples.csv (10 samples)
      table, report:  python -m bench.aggregate --task runs-toy-toy_world
      time:           1 min 44 s wall; 7.4 s per sample (10 in 1 min 14 s; loading, checks 30 s)
      random weights: model=tiny, metrics.clip=tiny_random: images and numbers mean nothing
      mixed table:    its samples.csv now holds tiny/synthetic_places (2), toy/toy_world (10)

A sweep's summary has the same lines over all its jobs. The jobs hand their summaries to the sweep's
launching process through files in `outputs/.sweeps/<sweep>/` (the folder's path travels in the environment
variable BENCH_SWEEP_SUMMARIES, so it works with the basic launcher and with submitit, local or Slurm, on a
shared file system); the sweep deletes the folder when it ends.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from bench.config import REPO_ROOT

WIDTH = 100  # columns of every line (a path or a command is never cut)
SWEEP_ENV = "BENCH_SWEEP_SUMMARIES"  # the folder where a sweep's jobs leave their summaries
SWEEPS_FOLDER = ".sweeps"  # under paths.output_dir (a task name never starts with a dot)
RANDOM_BACKBONES = ("bench.sd.backbone.build_tiny",)  # loaders whose weights are seeded random, not trained
MEANINGLESS = "images and numbers mean nothing"  # said at the start and in the summary


@dataclass(frozen=True)
class JobSummary:
    """What one job did, in the terms of its closing summary (paths absolute)."""

    task: str
    label: str  # <method label>+<ablation>: the run folder's name and the table's row
    profile: str  # <model>/<dataset>
    run_dir: str
    samples_csv: str  # results/<task>/samples.csv
    results_dir: str  # paths.results_dir
    root_dir: str  # paths.root_dir: the rows' paths are relative to it
    made: int
    skipped: int  # done before this run (their rows exist)
    failed: int
    first_failure: str | None  # "<sample key>: <reason>"
    wall_s: float
    generation_s: float  # generating, scoring and recording the samples of this run
    random_weights: str | None  # e.g. "model=tiny, metrics.clip=tiny_random"; None: trained weights

    @property
    def generated(self) -> int:
        return self.made + self.failed


def random_weights(cfg: DictConfig) -> str | None:
    """The parts of the run whose weights are random (model=tiny; the tiny_random CLIP), or None."""
    from bench.metrics.clip_score import TINY_RANDOM, resolve_arch

    parts = []
    if cfg.model.get("_target_") in RANDOM_BACKBONES:
        parts.append(f"model={cfg.model.name}")
    clip = cfg.metrics.per_sample.get("clip")
    if clip is not None and resolve_arch(clip.get("arch", "auto"), clip.get("backbone_name")) == TINY_RANDOM:
        parts.append(f"metrics.clip={TINY_RANDOM}")
    return ", ".join(parts) or None


def start_lines(cfg: DictConfig) -> list[str]:
    """What a run says before it starts: one line when its weights are random."""
    parts = random_weights(cfg)
    if parts is None:
        return []
    return [fit(f"warning: random weights ({parts}): {MEANINGLESS}")]


def job_summary(cfg: DictConfig, result: dict, wall_s: float) -> JobSummary:
    """A job's summary from its config and what `run_benchmark` returned."""
    made, failed = result.get("made", 0), result.get("failed", 0)
    return JobSummary(
        task=str(cfg.task_name),
        label=f"{cfg.method.label}+{cfg.ablation.name}",
        profile=f"{cfg.model.name}/{cfg.dataset.name}",
        run_dir=str(Path(result["run_dir"]).absolute()),
        samples_csv=str((Path(cfg.paths.results_dir) / cfg.task_name / "samples.csv").absolute()),
        results_dir=str(Path(cfg.paths.results_dir).absolute()),
        root_dir=str(Path(cfg.paths.root_dir).absolute()),
        made=made,
        skipped=result["planned"] - result["pending"],
        failed=failed,
        first_failure=result.get("first_failure"),
        wall_s=wall_s,
        generation_s=result.get("generation_s", 0.0),
        random_weights=random_weights(cfg),
    )


def finish_job(cfg: DictConfig, result: dict, wall_s: float) -> JobSummary:
    """Print the job's summary and, inside a sweep, leave it for the sweep's summary."""
    summary = job_summary(cfg, result, wall_s)
    print("\n".join(format_job(summary, profiles_in(summary.samples_csv))), flush=True)
    record_for_sweep(summary)
    return summary


def format_job(s: JobSummary, profiles: dict[str, int]) -> list[str]:
    """The job's summary lines; `profiles`: rows of the task's samples.csv per <model>/<dataset>."""
    head = f"{s.label} on {s.profile}: {counts(s.made, s.skipped, s.failed)}"
    lines = closing_lines(head, [s], s.wall_s)
    lines.insert(-1, labelled("run folder", shown(s.run_dir)))
    lines.insert(-1, labelled("task's rows", f"{shown(s.samples_csv)} ({sum(profiles.values())} samples)"))
    lines.insert(-1, labelled("table, report", aggregate_command([s])))
    return lines + notes([s], {s.samples_csv: profiles})


def format_sweep(jobs: list[JobSummary], wall_s: float, profiles: dict[str, dict[str, int]]) -> list[str]:
    """A sweep's summary lines over its jobs; `profiles`: per samples.csv, its rows per <model>/<dataset>."""
    if not jobs:
        return [
            f"sweep done in {duration(wall_s)}: no job summary reached this process (a job that ran elsewhere "
            f"without ${SWEEP_ENV}?); each job's log ends with its own summary"
        ]
    made, skipped, failed = (sum(getattr(j, key) for j in jobs) for key in ("made", "skipped", "failed"))
    lines = closing_lines(f"sweep of {len(jobs)} jobs: {counts(made, skipped, failed)}", jobs, wall_s)
    folder = os.path.commonpath([j.run_dir for j in jobs]) if len(jobs) > 1 else jobs[0].run_dir
    lines.insert(-1, labelled("run folders", shown(folder)))
    tables = sorted({j.samples_csv for j in jobs})
    lines.insert(-1, labelled("tasks' rows" if len(tables) > 1 else "task's rows", ", ".join(map(shown, tables))))
    lines.insert(-1, labelled("table, report", aggregate_command(jobs)))
    return lines + notes(jobs, profiles)


def closing_lines(head: str, jobs: list[JobSummary], wall_s: float) -> list[str]:
    """The counts, the first failure (if any) and the time; the other lines go before the time."""
    lines = [fit(head)]
    failure = next((j for j in jobs if j.first_failure), None)
    if failure is not None:
        lines.append(fit(labelled("first failure", f"{failure.label} {failure.first_failure}")))
    generated = sum(j.generated for j in jobs)
    generation_s = sum(j.generation_s for j in jobs)
    lines.append(fit(labelled("time", timing(wall_s, generated, generation_s, sum(j.skipped for j in jobs)))))
    return lines


def notes(jobs: list[JobSummary], profiles: dict[str, dict[str, int]]) -> list[str]:
    """A line when weights are random; one when a task's samples.csv holds more than one profile."""
    lines = []
    random = next((j.random_weights for j in jobs if j.random_weights), None)
    if random is not None:
        lines.append(fit(labelled("random weights", f"{random}: {MEANINGLESS}")))
    mixed = next(((table, held) for table, held in sorted(profiles.items()) if len(held) > 1), None)
    if mixed is not None:
        listing = ", ".join(f"{name} ({n})" for name, n in sorted(mixed[1].items()))
        which = "its samples.csv" if len(profiles) == 1 else shown(mixed[0])
        lines.append(fit(labelled("mixed table", f"{which} now holds {listing}")))
    return lines


def counts(made: int, skipped: int, failed: int) -> str:
    return f"{made} made, {skipped} skipped (already done), {failed} failed"


def timing(wall_s: float, generated: int, generation_s: float, skipped: int) -> str:
    """'1 min 52 s wall; 9.6 s per sample (10 in 1 min 36 s; loading, checks 16 s)'."""
    if not generated:
        return f"{duration(wall_s)} wall; no sample to make (all {skipped} already done)"
    per_sample = generation_s / generated
    setup = max(wall_s - generation_s, 0.0)
    return (
        f"{duration(wall_s)} wall; {per_sample:.1f} s per sample ({generated} in {duration(generation_s)}; "
        f"loading, checks {duration(setup)})"
    )


def duration(seconds: float) -> str:
    """'45 s', '1 min 05 s', '2 h 03 min'."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def labelled(label: str, text: str) -> str:
    return f"  {label + ':':<16}{text}"


def fit(line: str) -> str:
    """`line` cut to WIDTH columns (for free text: a reason, a listing; never a path or a command)."""
    return line if len(line) <= WIDTH else line[: WIDTH - 3] + "..."


def shown(path: str | Path) -> str:
    """`path` relative to the current folder when inside it (as a user would type it), else absolute."""
    path = Path(path).absolute()
    here = Path.cwd()
    return str(path.relative_to(here)) if path.is_relative_to(here) else str(path)


def aggregate_command(jobs: list[JobSummary]) -> str:
    """The exact command that builds the tasks' tables and report (bench/aggregate.py's arguments)."""
    words = [python_command(), "-m", "bench.aggregate"]
    for task in sorted({j.task for j in jobs}):
        words += ["--task", task]
    results_dir, root_dir = Path(jobs[0].results_dir), Path(jobs[0].root_dir)
    if results_dir.resolve() != (REPO_ROOT / "results").resolve():  # bench.aggregate's default
        words += ["--results-dir", shown(results_dir)]
    if root_dir.resolve() != results_dir.resolve().parent:  # its default root: the results folder's parent
        words += ["--root-dir", shown(root_dir)]
    return shlex.join(words)


def python_command() -> str:
    """'python' when that is this interpreter on the PATH, else this interpreter's path (e.g. .venv/bin/python)."""
    on_path = shutil.which("python")
    if on_path is not None and Path(on_path).absolute() == Path(sys.executable).absolute():
        return "python"
    return shown(sys.executable)


def profiles_in(samples_csv: str | Path) -> dict[str, int]:
    """Rows of a samples.csv per '<model>/<dataset>' ({} when it does not exist)."""
    from bench.records import read_csv

    if not Path(samples_csv).is_file():
        return {}
    frame = read_csv(samples_csv, usecols=["model", "dataset"], dtype=str)
    return {f"{m}/{d}": int(n) for (m, d), n in frame.value_counts(["model", "dataset"], sort=False).items()}


def record_for_sweep(summary: JobSummary) -> None:
    """Inside a `-m` sweep whose launcher set $BENCH_SWEEP_SUMMARIES: leave the job's summary there."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from bench.records import atomic_write_text

    folder = os.environ.get(SWEEP_ENV)
    if not folder or not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    name = f"job-{HydraConfig.get().job.num:05d}-{os.getpid()}.json"
    atomic_write_text(Path(folder) / name, json.dumps(dataclasses.asdict(summary), indent=2) + "\n")


class SweepSummary(Callback):
    """Hydra callback (conf/hydra/default.yaml): the summary of a whole `-m` sweep, once, at its end."""

    def __init__(self) -> None:
        self.folder: Path | None = None
        self.started = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.folder = Path(config.paths.output_dir).absolute() / SWEEPS_FOLDER / f"{stamp}-{uuid.uuid4().hex[:8]}"
        self.folder.mkdir(parents=True, exist_ok=True)
        os.environ[SWEEP_ENV] = str(self.folder)  # the jobs inherit it (in this process, or launched from it)
        self.started = time.monotonic()
        atexit.register(self.remove_folder)  # a sweep that stops on an error leaves nothing behind

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.folder is None:
            return
        if config.get("dry_run") is True:  # the jobs printed their plans and made nothing
            self.remove_folder()
            return
        jobs = [JobSummary(**json.loads(p.read_text())) for p in sorted(self.folder.glob("job-*.json"))]
        profiles = {table: profiles_in(table) for table in sorted({j.samples_csv for j in jobs})}
        print("\n".join(format_sweep(jobs, time.monotonic() - self.started, profiles)), flush=True)
        self.remove_folder()

    def remove_folder(self) -> None:
        """Delete this sweep's folder of job summaries (and outputs/.sweeps/ once empty)."""
        if self.folder is None:
            return
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.folder.parent.rmdir()  # only when no other sweep is running
        os.environ.pop(SWEEP_ENV, None)
        self.folder = None
