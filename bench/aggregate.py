"""`python -m bench.aggregate`: rebuild every table, figure and report from results/<task>/samples.csv.

What it writes: bench/reporting/aggregate.py. Unchanged rows give identical bytes. It prints each task's
headline table (the paper's Table 1 shape), the harness's compact table and the paths, within 100 columns.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bench.cli_checks import exit_with
from bench.config import REPO_ROOT, ConfigError, env_path, is_safe_name
from bench.metrics.set_level import SetLevelAssets
from bench.records import StorageError
from bench.reporting.aggregate import AggregateOptions, aggregate_task
from bench.reporting.samples_table import ResultsError


def options_from_environment(
    set_level: bool = True, overwrite_ref_stats: bool = False, wandb_dir: Path | None = None
) -> AggregateOptions:
    """AggregateOptions whose weights, caches and W&B project come from the environment, as a run's config reads
    them: $BENCH_CACHE_DIR (else <root-dir>/.cache), $BENCH_INCEPTION_WEIGHTS, $BENCH_WEIGHTS_DIR, $WANDB_PROJECT."""
    assets = SetLevelAssets(
        cache_dir=env_path("BENCH_CACHE_DIR", None),
        inception_weights=env_path("BENCH_INCEPTION_WEIGHTS", None),
        weights_cache_dir=env_path("BENCH_WEIGHTS_DIR", None),
        overwrite_ref_stats=overwrite_ref_stats,
    )
    project = os.environ.get("WANDB_PROJECT", "gradsam-bench")
    return AggregateOptions(set_level, assets, wandb_dir=wandb_dir, wandb_project=project)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    parser.add_argument(
        "--root-dir", type=Path, default=None, help="folder the image paths are relative to (default: results/..)"
    )
    parser.add_argument("--task", action="append", help="task name(s); default: every results/<task>/samples.csv")
    parser.add_argument(
        "--overwrite-ref-stats", action="store_true", help="replace cached reference statistics whose images changed"
    )
    parser.add_argument("--wandb", action="store_true", help="also log the tables and figures to W&B")
    parser.add_argument(
        "--no-set-level", action="store_true", help="skip FID-2048/KID (NaN with that reason): a quick table rebuild"
    )
    args = parser.parse_args(argv)
    tasks = check_arguments(args)
    options = options_from_environment(
        set_level=not args.no_set_level,
        overwrite_ref_stats=args.overwrite_ref_stats,
        wandb_dir=args.root_dir / "outputs" / "wandb" if args.wandb else None,
    )
    for task in tasks:
        try:
            paths = aggregate_task(args.results_dir, task, args.root_dir, options)
        except (FileNotFoundError, ResultsError, ConfigError) as exc:
            exit_with(str(exc))
        except StorageError as exc:
            exit_with(str(exc), 1)
        print(f"== {task}")
        print(paths["terminal"])


def check_arguments(args: argparse.Namespace) -> list[str]:
    """The tasks to aggregate; exits in one line (status 2) on a folder that is not one or an unsafe task name
    (`--task ../x` would write outside the results folder)."""
    if not args.results_dir.is_dir():
        exit_with(f"--results-dir {args.results_dir} is not a folder. Fix: give the results folder (default results/).")
    args.root_dir = args.root_dir or args.results_dir.resolve().parent
    if not args.root_dir.is_dir():
        exit_with(
            f"--root-dir {args.root_dir} is not a folder. Fix: give the runs' paths.root_dir (default: results/..)."
        )
    unsafe = [t for t in args.task or [] if not is_safe_name(t)]
    if unsafe:
        exit_with(
            f"--task {unsafe[0]!r} is not a task name (1-100 letters, digits and . _ + = -, starting with a letter or "
            "digit; no '/' or '..'): its tables would be written outside the results folder. Fix: give the run's "
            "task_name."
        )
    tasks = args.task or sorted(
        p.parent.name for p in args.results_dir.glob("*/samples.csv") if is_safe_name(p.parent.name)
    )
    if not tasks:
        exit_with(f"no results/<task>/samples.csv under {args.results_dir}: run `python -m bench.run` first.")
    return tasks


if __name__ == "__main__":
    main()
