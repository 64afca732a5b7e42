"""`python -m bench.aggregate`: tables are views of the per-sample rows, never edited by hand.

Reads results/<task>/samples.csv and writes results/<task>/<table>.csv and .md: per row of the
table (model, dataset, method label, ablation), the number of samples N, the failures, and the mean
and median of every per-sample metric. Unchanged rows give byte-identical tables.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from bench.config import REPO_ROOT
from bench.metrics import PER_SAMPLE_METRICS
from bench.records import atomic_write_text, write_csv

GROUP = ["model", "dataset", "label", "ablation"]


def summarize(samples: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, dataset, label, ablation): N, failures, mean and median of each metric."""
    metrics = [m for m in PER_SAMPLE_METRICS if m in samples.columns]
    out = []
    for keys, group in samples.groupby(GROUP, sort=True, dropna=False):
        ok = group[group["status"] == "ok"]
        row = dict(zip(GROUP, keys, strict=False))
        row["N"] = len(ok)
        row["failures"] = int((group["status"] != "ok").sum())
        for m in metrics:
            values = pd.to_numeric(ok[m], errors="coerce").dropna().to_numpy()
            row[f"{m}_mean"] = float(np.mean(values)) if len(values) else np.nan
            row[f"{m}_median"] = float(np.median(values)) if len(values) else np.nan
        out.append(row)
    return pd.DataFrame(out)


def to_markdown(table: pd.DataFrame, title: str, notes: list[str] | None = None) -> str:
    """A GitHub Markdown table (no extra dependency), with a title and notes."""
    cols = list(table.columns)
    fmt = lambda v: "" if pd.isna(v) else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = [f"# {title}", "", "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in table.itertuples(index=False)]
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def aggregate_task(results_dir: Path, task: str, table_name: str | None = None) -> dict[str, Path]:
    """Build the task's table files from its samples.csv; return their paths."""
    samples_csv = results_dir / task / "samples.csv"
    if not samples_csv.exists():
        raise FileNotFoundError(f"{samples_csv} does not exist: run `python -m bench.run task_name={task}` first.")
    samples = pd.read_csv(samples_csv, keep_default_na=False, na_values=[""])
    table_name = table_name or ("ablations" if task.startswith("ablations") else "table1")
    table = summarize(samples)
    csv_path = results_dir / task / f"{table_name}.csv"
    md_path = results_dir / task / f"{table_name}.md"
    write_csv(table, csv_path)
    provenance = sorted(
        {
            f"{c[: -len('_provenance')]}: {v}"
            for c in samples.columns
            if c.endswith("_provenance")
            for v in samples[c].dropna().unique()
        }
    )
    notes = [
        f"from {len(samples)} sample rows in {samples_csv.name}; N counts successful samples",
        *provenance,
    ]
    atomic_write_text(md_path, to_markdown(table, f"{table_name} ({task})", notes))
    return {"samples": samples_csv, "csv": csv_path, "md": md_path}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    parser.add_argument("--task", action="append", help="task name(s); default: every results/<task>/samples.csv")
    args = parser.parse_args(argv)
    tasks = args.task or sorted(p.parent.name for p in args.results_dir.glob("*/samples.csv"))
    for task in tasks:
        paths = aggregate_task(args.results_dir, task)
        print(f"{task}: {paths['csv']} {paths['md']}")


if __name__ == "__main__":
    main()
