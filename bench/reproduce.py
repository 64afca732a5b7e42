"""`python -m bench.reproduce {demo,table1,ablations}`: a Hydra multirun of every row, then the tables.

Profiles choose the assets; the rows, the data protocol and the seeds are the same:
    gpu:     model=sd15 dataset=places365 (a user's GPU machine)
    offline: model=toy dataset=toy_world metrics=toy (trained tiny models; these machines, CI), at 2 scenes x
             every prompt per subcategory (the toy world's own default is a first run's 1 x 1)

It ends with the wall time per row (each Hydra job: its samples, the seconds per sample, its loading and
checks), the process start-up, the tables (set-level FID/KID included), the figures and the report, and the
total, so that a slower row or step shows at once.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# OpenMP threads sleep instead of spinning while idle, as `make` and bench.run set it: the tables' Inception
# features ran 3.6x slower with spinning threads on a shared 2-core machine (load 4). Before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench.cli_checks import exit_with  # noqa: E402
from bench.config import REPO_ROOT  # noqa: E402
from bench.summary import SWEEP_RECORD_ENV, JobSummary, duration, read_sweep_record

PROFILES = {
    "gpu": ["model=sd15", "dataset=places365"],
    "offline": [
        "model=toy",
        "dataset=toy_world",
        "metrics=toy",
        "dataset.images_per_subcategory=2",
        "dataset.prompts_per_subcategory=null",
    ],
}
TARGETS = ("demo", "table1", "ablations")


class ReproduceError(RuntimeError):
    """A failure the command line reports as one line (exit status in `code`)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def resolve_task_name(what: str, overrides: list[str]) -> str:
    """The task_name the multirun writes to: the experiment's, or the user's `task_name=...` (composed by Hydra,
    so `+`/`++` forms and interpolations count). A misspelt override fails here, before any job starts."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from bench.cli_checks import explain_override_error
    from bench.config import CONF_DIR

    parsed = OverridesParser.create().parse_overrides(overrides)
    swept = [o.input_line for o in parsed if o.is_sweep_override()]
    if any(o.key_or_group.lstrip("+~") == "task_name" for o in parsed if o.is_sweep_override()):
        raise ReproduceError(f"{swept}: task_name must be one value (the results folder the tables are built in).", 2)
    plain = [f"experiment={what}", *(o.input_line for o in parsed if not o.is_sweep_override())]
    message = explain_override_error(plain)
    if message:
        raise ReproduceError(message, 2)
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return str(compose("bench", overrides=plain).task_name)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ReproduceError(str(exc).replace("\n", " "), 2) from exc


@dataclass(frozen=True)
class Times:
    """Where a reproduction's wall time went (seconds)."""

    rows: list[JobSummary]  # one per Hydra job (a row), in launch order; empty when the sweep left no record
    multirun_s: float  # the `bench.run -m` process, start to exit
    sweep_s: float | None  # the sweep inside it, first job's start to last job's end (None: no record)
    parts: dict[str, float]  # the tables' parts (bench.reporting.aggregate.aggregate_task's "seconds")
    total_s: float

    def lines(self) -> list[str]:
        """'time per row' (each job: new samples, wall, seconds per sample, loading and checks), the sweep's
        process outside its rows, the tables' parts, and the total; within 100 columns."""
        out = ["time per row (wall; per new sample; loading and checks):"]
        width = max([len(j.label) for j in self.rows] + [10])
        for job in self.rows:
            new = f"{job.generated} new" + (f", {job.skipped} done" if job.skipped else "")
            per_sample = f"{job.generation_s / job.generated:5.1f} s a sample" if job.generated else "no new sample"
            loading = duration(max(job.wall_s - job.generation_s, 0.0))
            out.append(f"  {job.label:{width}s}  {new:>14s}  {duration(job.wall_s):>9s}  {per_sample}  {loading}")
        if self.sweep_s is None:
            out.append(f"  the multirun {duration(self.multirun_s)} (it left no record of its rows)")
        else:
            rows_s = sum(j.wall_s for j in self.rows)
            start_up, between = (duration(max(s, 0.0)) for s in (self.multirun_s - self.sweep_s, self.sweep_s - rows_s))
            out.append(f"  rows {duration(rows_s)} (the first one's loading includes the imports); process start-up")
            out.append(f"  {start_up}; Hydra between the rows {between}")
        out.append("  " + "; ".join(f"{name} {duration(s)}" for name, s in self.parts.items()))
        out.append(f"total: {duration(self.total_s)} wall")
        return out


def reproduce(what: str, profile: str, extra: list[str], root_dir: Path, logger: str = "none") -> dict:
    """Run the experiment's multirun in a subprocess (a real Hydra sweep), then build its task's tables; the paths
    of `aggregate_task`, and under "times" where the wall time went (`Times`)."""
    started = time.monotonic()
    if what not in TARGETS:
        raise ReproduceError(f"unknown target {what!r}; expected one of {TARGETS}.", 2)
    if profile not in PROFILES:
        raise ReproduceError(f"PROFILE={profile!r}; expected one of {sorted(PROFILES)}.", 2)
    profile_overrides = [] if what == "demo" else PROFILES[profile]
    overrides = [f"paths.root_dir={root_dir}", f"logger={logger}", *profile_overrides, *extra]
    task = resolve_task_name(what, overrides)
    cmd = [sys.executable, "-m", "bench.run", "-m", f"experiment={what}", *overrides]
    multirun_s, record = run_multirun(cmd, what, task)
    from bench.aggregate import options_from_environment  # noqa: PLC0415 (imported while the jobs ran)
    from bench.records import StorageError  # noqa: PLC0415
    from bench.reporting.aggregate import aggregate_task  # noqa: PLC0415

    options = options_from_environment(wandb_dir=root_dir / "outputs" / "wandb" if logger == "wandb" else None)
    try:
        paths = aggregate_task(root_dir / "results", task, root_dir, options)
    except (FileNotFoundError, ValueError, StorageError) as exc:  # ValueError: ResultsError, a table refused
        raise ReproduceError(f"building the tables of task {task!r} failed: {exc}") from exc
    sweep_s, rows = record if record is not None else (None, [])
    paths["times"] = Times(rows, multirun_s, sweep_s, paths["seconds"], time.monotonic() - started)
    return paths


def run_multirun(cmd: list[str], what: str, task: str) -> tuple[float, tuple[float, list[JobSummary]] | None]:
    """Run `cmd` (the `bench.run -m` sweep); its wall seconds and the sweep's record (None if it left none)."""
    print("+", " ".join(cmd), flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-reproduce-") as folder:
        record_file = Path(folder) / "sweep.json"
        jobs = subprocess.Popen(cmd, cwd=REPO_ROOT, env={**os.environ, SWEEP_RECORD_ENV: str(record_file)})
        try:  # the tables' imports (torch, the metrics) while the jobs run, not after them
            import bench.aggregate  # noqa: F401, PLC0415
        finally:
            returncode = jobs.wait()
        record = read_sweep_record(record_file)
    if returncode != 0:
        raise ReproduceError(
            f"the {what} multirun (task_name={task}) failed with exit status {returncode}: its message is "
            "above; fix it and rerun the same command (finished samples are kept).",
            returncode,
        )
    return time.monotonic() - started, record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=TARGETS)
    parser.add_argument("--profile", default="gpu", help=f"one of {sorted(PROFILES)}")
    parser.add_argument("--logger", default="none", choices=["none", "wandb"], help="W&B for every job and the tables")
    parser.add_argument("--root-dir", type=Path, default=REPO_ROOT, help="outputs/ and results/ go under it")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. dataset.images_per_subcategory=2")
    args = parser.parse_intermixed_args(argv)
    if args.root_dir.exists() and not args.root_dir.is_dir():
        exit_with(f"--root-dir {args.root_dir} is not a folder. Fix: give the folder outputs/ and results/ go under.")
    try:
        paths = reproduce(args.what, args.profile, args.overrides, args.root_dir.resolve(), args.logger)
    except ReproduceError as exc:
        exit_with(str(exc), exc.code)
    print()
    print(paths["terminal"])
    print()
    print("\n".join(paths["times"].lines()))


if __name__ == "__main__":
    main()
