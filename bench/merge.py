"""`python -m bench.merge [--task NAME ...]`: rebuild results/<task>/samples.csv from every shard's rows.

Each shard already does this when it ends (under a file lock), so the last shard to finish leaves the
complete table. Run it by hand after a sweep whose shards ran on a filesystem without working locks,
or after deleting or copying rows. A damaged row is left out with a warning that names it (damaged means
not done: rerun its job to redo that sample). Then `python -m bench.aggregate` builds the tables.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from bench.cli_checks import exit_with
from bench.config import REPO_ROOT, is_safe_name
from bench.records import StorageError, merge_samples, writing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "outputs", help="paths.output_dir of the runs")
    parser.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results", help="paths.results_dir")
    parser.add_argument("--task", action="append", help="task name(s); default: every task folder with rows")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")  # damaged rows, named
    tasks = check_arguments(args)
    for task in tasks:
        samples_csv = args.results_dir / task / "samples.csv"
        try:
            with writing(samples_csv):
                frame = merge_samples(args.output_dir / task, samples_csv)
        except StorageError as exc:
            exit_with(str(exc), 1)
        print(f"{task}: {len(frame)} rows -> {samples_csv}")


def check_arguments(args: argparse.Namespace) -> list[str]:
    """The tasks to merge; exits in one line (status 2) on a folder that is not one, an unsafe task name (its
    table would be written outside the results folder) or a task without rows."""
    if not args.output_dir.is_dir():
        exit_with(f"--output-dir {args.output_dir} is not a folder. Fix: give the runs' paths.output_dir (outputs/).")
    if args.results_dir.exists() and not args.results_dir.is_dir():
        exit_with(f"--results-dir {args.results_dir} is not a folder. Fix: give the runs' paths.results_dir.")
    unsafe = [t for t in args.task or [] if not is_safe_name(t)]
    if unsafe:
        exit_with(
            f"--task {unsafe[0]!r} is not a task name (1-100 letters, digits and . _ + = -, starting with a letter or "
            "digit; no '/' or '..'): its table would be written outside the results folder. Fix: give the run's "
            "task_name."
        )
    # Rows live in <output_dir>/<task>/<model>/<dataset>/<label>+<ablation>/rows/.
    found = sorted({p.relative_to(args.output_dir).parts[0] for p in args.output_dir.glob("*/*/*/*/rows")})
    found = [t for t in found if is_safe_name(t)]
    tasks = args.task or found
    if not tasks or set(tasks) - set(found):
        exit_with(
            f"no rows for task(s) {sorted(set(tasks) - set(found)) or tasks} under {args.output_dir}; tasks with rows: "
            f"{found}. Run `python -m bench.run` first."
        )
    return tasks


if __name__ == "__main__":
    main()
