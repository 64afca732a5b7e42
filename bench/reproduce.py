"""`python -m bench.reproduce {demo,table1,ablations}`: a Hydra multirun of every row, then the tables.

Profiles choose the assets; the rows, the data protocol and the seeds are the same:
    gpu:     model=sd15 dataset=places365 (a user's GPU machine)
    offline: model=toy dataset=toy_world metrics=toy (trained tiny models; these machines, CI), at 2 scenes x
             every prompt per subcategory (the toy world's own default is a first run's 1 x 1)

It ends with the wall time per row (each Hydra job: its samples, the seconds per sample, its loading and
checks), the process start-up, the tables (set-level FID/KID included), the figures and the report, and the
total, so that a slower row or step shows at once.

`--shards N` runs the multirun as N processes at once, each every row's share of the samples (`shard.index`,
`shard.count`) on one CPU thread (`cpu_threads=1`): on a CPU of N cores the rows take about 1/N of the time.
The samples and their rows are those of one process (a sample depends only on its identity), bit for bit at
equal thread counts; `make demo` runs 2 (one per core here).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
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
SHARD_KEYS = ("shard.index", "shard.count", "cpu_threads")  # what --shards sets for each of its processes


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
    shards: int = 1  # processes of the multirun, at once (`merge_shards`: one line per row over them)

    def lines(self) -> list[str]:
        """'time per row' (each job: new samples, wall, seconds per sample, loading and checks), the sweep's
        process outside its rows, the tables' parts, and the total; within 100 columns."""
        out = ["time per row (wall; per new sample; loading and checks):"]
        if self.shards > 1:
            out[0] = f"time per row ({self.shards} processes at once, one thread each; wall; per new sample; loading):"
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


def reproduce(what: str, profile: str, extra: list[str], root_dir: Path, logger: str = "none", shards: int = 1) -> dict:
    """Run the experiment's multirun in `shards` subprocesses (real Hydra sweeps), then build its task's tables;
    the paths of `aggregate_task`, and under "times" where the wall time went (`Times`)."""
    started = time.monotonic()
    if what not in TARGETS:
        raise ReproduceError(f"unknown target {what!r}; expected one of {TARGETS}.", 2)
    if profile not in PROFILES:
        raise ReproduceError(f"PROFILE={profile!r}; expected one of {sorted(PROFILES)}.", 2)
    check_shards(shards, extra)
    profile_overrides = [] if what == "demo" else PROFILES[profile]
    overrides = [f"paths.root_dir={root_dir}", f"logger={logger}", *profile_overrides, *extra]
    task = resolve_task_name(what, overrides)
    cmd = [sys.executable, "-m", "bench.run", "-m", f"experiment={what}", *overrides]
    multirun_s, record = run_multirun(cmd, what, task, shards)
    from bench.aggregate import options_from_environment  # noqa: PLC0415 (imported while the jobs ran)
    from bench.records import StorageError  # noqa: PLC0415
    from bench.reporting.aggregate import aggregate_task  # noqa: PLC0415

    options = options_from_environment(wandb_dir=root_dir / "outputs" / "wandb" if logger == "wandb" else None)
    try:
        paths = aggregate_task(root_dir / "results", task, root_dir, options)
    except (FileNotFoundError, ValueError, StorageError) as exc:  # ValueError: ResultsError, a table refused
        raise ReproduceError(f"building the tables of task {task!r} failed: {exc}") from exc
    sweep_s, rows = record if record is not None else (None, [])
    paths["times"] = Times(rows, multirun_s, sweep_s, paths["seconds"], time.monotonic() - started, shards)
    return paths


def check_shards(shards: int, extra: list[str]) -> None:
    """--shards is a count >= 1; above 1 it sets each process's shard and thread count, so the overrides may not."""
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ReproduceError(f"--shards {shards!r}; expected an integer >= 1 (processes at once; 2 on 2 cores).", 2)
    clash = [o for o in extra if o.lstrip("+~").split("=", 1)[0] in SHARD_KEYS]
    if shards > 1 and clash:
        raise ReproduceError(
            f"--shards {shards} sets {', '.join(SHARD_KEYS)} for each of its processes; drop {clash} "
            "or run with --shards 1.",
            2,
        )


def shard_overrides(index: int, shards: int) -> list[str]:
    """Process `index` of `shards`: its share of every row's samples, on one CPU thread (none for one process)."""
    return [] if shards == 1 else [f"shard.index={index}", f"shard.count={shards}", "cpu_threads=1"]


def merge_shards(records: list[tuple[float, list[JobSummary]] | None]) -> tuple[float, list[JobSummary]] | None:
    """The shards' sweep records as one: the slowest sweep, and one job per row (`merged_job`) in launch order;
    None when any shard left no record."""
    if any(record is None for record in records):
        return None
    by_label: dict[str, list[JobSummary]] = {}
    for _, jobs in records:
        for job in jobs:
            by_label.setdefault(job.label, []).append(job)
    return max(sweep_s for sweep_s, _ in records), [merged_job(parts) for parts in by_label.values()]


def merged_job(parts: list[JobSummary]) -> JobSummary:
    """One row's shards as one job: counts summed; the slowest shard's wall time and the longest loading, so
    that the seconds per sample are the row's wall time per sample with its shards at work together."""
    if len(parts) == 1:
        return parts[0]
    wall_s = max(p.wall_s for p in parts)
    loading_s = max(p.wall_s - p.generation_s for p in parts)
    return replace(
        parts[0],
        made=sum(p.made for p in parts),
        skipped=sum(p.skipped for p in parts),
        failed=sum(p.failed for p in parts),
        first_failure=next((p.first_failure for p in parts if p.first_failure), None),
        wall_s=wall_s,
        generation_s=max(wall_s - loading_s, 0.0),
    )


def run_multirun(
    cmd: list[str], what: str, task: str, shards: int = 1
) -> tuple[float, tuple[float, list[JobSummary]] | None]:
    """Run `cmd` (the `bench.run -m` sweep) as `shards` processes at once; its wall seconds and the sweeps'
    record (`merge_shards`; None if one left none). Every process runs to its end, even when another fails."""
    for index in range(shards):
        print("+", " ".join([*cmd, *shard_overrides(index, shards)]), flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-reproduce-") as folder:
        record_files = [Path(folder) / f"sweep-{index}.json" for index in range(shards)]
        jobs = [
            subprocess.Popen(
                [*cmd, *shard_overrides(index, shards)],
                cwd=REPO_ROOT,
                env={**os.environ, SWEEP_RECORD_ENV: str(record_file)},
            )
            for index, record_file in enumerate(record_files)
        ]
        try:  # the tables' imports (torch, the metrics) while the jobs run, not after them
            import bench.aggregate  # noqa: F401, PLC0415
        finally:
            codes = [job.wait() for job in jobs]
        record = merge_shards([read_sweep_record(f) for f in record_files])
    failed = [(index, code) for index, code in enumerate(codes) if code != 0]
    if failed:
        which = "" if shards == 1 else f" (shard {', '.join(str(i) for i, _ in failed)} of {shards})"
        raise ReproduceError(
            f"the {what} multirun (task_name={task}){which} failed with exit status {failed[0][1]}: its message is "
            "above; fix it and rerun the same command (finished samples are kept).",
            failed[0][1],
        )
    return time.monotonic() - started, record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=TARGETS)
    parser.add_argument("--profile", default="gpu", help=f"one of {sorted(PROFILES)}")
    parser.add_argument("--logger", default="none", choices=["none", "wandb"], help="W&B for every job and the tables")
    parser.add_argument("--root-dir", type=Path, default=REPO_ROOT, help="outputs/ and results/ go under it")
    parser.add_argument(
        "--shards", type=int, default=1, help="processes at once, one CPU thread each (2 on a 2-core CPU; default 1)"
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. dataset.images_per_subcategory=2")
    args = parser.parse_intermixed_args(argv)
    if args.root_dir.exists() and not args.root_dir.is_dir():
        exit_with(f"--root-dir {args.root_dir} is not a folder. Fix: give the folder outputs/ and results/ go under.")
    try:
        paths = reproduce(args.what, args.profile, args.overrides, args.root_dir.resolve(), args.logger, args.shards)
    except ReproduceError as exc:
        exit_with(str(exc), exc.code)
    print()
    print(paths["terminal"])
    print()
    print("\n".join(paths["times"].lines()))


if __name__ == "__main__":
    main()
