"""`python -m bench.merge [--task NAME ...]`: rebuild results/<task>/samples.csv from every shard's rows.

Each shard already does this when it ends (under a file lock), so the last shard to finish leaves the
complete table. Run it by hand after a sweep whose shards ran on a filesystem without working locks,
or after deleting or copying rows. Then `python -m bench.aggregate` builds the tables.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.config import REPO_ROOT
from bench.records import merge_samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "outputs", help="paths.output_dir of the runs")
    parser.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results", help="paths.results_dir")
    parser.add_argument("--task", action="append", help="task name(s); default: every task folder with rows")
    args = parser.parse_args(argv)
    # Rows live in <output_dir>/<task>/<model>/<dataset>/<label>+<ablation>/rows/.
    found = sorted({p.relative_to(args.output_dir).parts[0] for p in args.output_dir.glob("*/*/*/*/rows")})
    tasks = args.task or found
    if not tasks or set(tasks) - set(found):
        raise SystemExit(
            f"error: no rows for task(s) {sorted(set(tasks) - set(found)) or tasks} under "
            f"{args.output_dir}; tasks with rows: {found}. Run `python -m bench.run` first."
        )
    for task in tasks:
        samples_csv = args.results_dir / task / "samples.csv"
        frame = merge_samples(args.output_dir / task, samples_csv)
        print(f"{task}: {len(frame)} rows -> {samples_csv}")


if __name__ == "__main__":
    main()
