"""Tables are views of the per-sample rows, never edited by hand (`python -m bench.aggregate` runs this).

For each results/<task>/samples.csv it writes, beside it:
    <table>.csv / <table>.md       per row (model, dataset, label, ablation): N, failures, mean and
                                   median of every metric with bootstrap 95% intervals, set-level metrics
    <table>_by_category.csv        the same per category and subcategory
    <table>_by_prompt.csv          the same per prompt
    paper_comparison.csv           (Table 1) our rows beside the paper's reported row
    ablation_deltas.csv            (ablations) each metric's paired change against ablation=none
    figures/*.png, report.html     sample grids, box plots, and a page that shows it all
<table> is `ablations` for tasks named ablations*, else `table1`. Unchanged rows give identical bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.config import REPO_ROOT, env_path
from bench.metrics import PER_SAMPLE_METRICS
from bench.metrics.set_level import add_set_level
from bench.records import atomic_write_text, write_csv
from bench.reporting.figures import make_figures
from bench.reporting.html import write_report
from bench.reporting.tables import GROUP, PAPER_TABLE1, paired_deltas, paper_comparison, summarize


def fmt(value: float) -> str:
    return "" if pd.isna(value) else f"{value:.4g}"


def with_interval(row: pd.Series, col: str) -> str:
    """'value [lo, hi]' when the interval exists."""
    value = fmt(row.get(col, np.nan))
    lo, hi = row.get(f"{col}_lo", np.nan), row.get(f"{col}_hi", np.nan)
    return value if pd.isna(lo) else f"{value} [{fmt(lo)}, {fmt(hi)}]"


def markdown_table(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def compact_view(table: pd.DataFrame) -> pd.DataFrame:
    """The Markdown view: one column per (metric, statistic), each 'value [95% interval]'."""
    view = table[[c for c in GROUP + ["N", "failures"] if c in table.columns]].copy()
    for metric in PER_SAMPLE_METRICS:
        for stat in ("mean", "median"):
            col = f"{metric}_{stat}"
            if col in table.columns:
                view[col] = [with_interval(row, col) for _, row in table.iterrows()]
    for col in table.columns:
        if col.startswith(("fid2048", "kid")) and not col.endswith(("_reason", "_N")):
            view[col] = table[col].map(fmt)
    return view


def provenance_notes(samples: pd.DataFrame) -> list[str]:
    notes = set()
    for col in samples.columns:
        if col.endswith("_provenance"):
            for value in samples[col].dropna().unique():
                notes.add(f"{col[: -len('_provenance')]}: {value}")
    return sorted(notes)


def table_name_for(task: str) -> str:
    return "ablations" if task.startswith("ablations") else "table1"


def aggregate_task(
    results_dir: Path,
    task: str,
    root_dir: Path | None = None,
    n_figure_samples: int = 3,
    overwrite_ref_stats: bool = False,
    wandb_dir: Path | None = None,
    set_level: bool = True,
    cache_dir: Path | None = None,
    inception_weights: Path | None = None,
    weights_cache_dir: Path | None = None,
) -> dict:
    """Build every table, figure and the report of one task from its samples.csv; return the paths.

    The feature cache, the Inception weights file and the converted-weights cache default to
    $BENCH_CACHE_DIR (else <root_dir>/.cache), $BENCH_INCEPTION_WEIGHTS and $BENCH_WEIGHTS_DIR, as a run's config.
    """
    folder = results_dir / task
    samples_csv = folder / "samples.csv"
    if not samples_csv.exists():
        raise FileNotFoundError(f"{samples_csv} does not exist: run `python -m bench.run task_name={task}` first.")
    root_dir = root_dir or REPO_ROOT
    samples = pd.read_csv(samples_csv, keep_default_na=False, na_values=[""])
    name = table_name_for(task)
    paths = {"samples": samples_csv}

    # 1. The main table (with the set-level FID-2048/KID, all scopes also in <table>_set_level.csv),
    #    and breakdowns per category and per prompt.
    table = summarize(samples, GROUP, table=name)
    roots = [root_dir, results_dir.parent]  # image paths are relative to the run's paths.root_dir
    table, set_level, set_level_note = add_set_level(
        table,
        samples,
        GROUP,
        enabled=set_level,
        root_dir=roots,
        overwrite_ref_stats=overwrite_ref_stats,
        cache_dir=cache_dir or env_path("BENCH_CACHE_DIR", root_dir / ".cache"),
        inception_weights=inception_weights or env_path("BENCH_INCEPTION_WEIGHTS", None),
        weights_cache_dir=weights_cache_dir or env_path("BENCH_WEIGHTS_DIR", None),
    )
    write_csv(set_level, folder / f"{name}_set_level.csv")
    paths["csv"] = folder / f"{name}.csv"
    write_csv(table, paths["csv"])
    by_category = summarize(samples, [*GROUP, "category", "subcategory"], intervals=False, table=name)
    by_prompt = summarize(samples, [*GROUP, "subcategory", "prompt"], intervals=False, table=name)
    write_csv(by_category, folder / f"{name}_by_category.csv")
    write_csv(by_prompt, folder / f"{name}_by_prompt.csv")
    extra: dict[str, pd.DataFrame] = {}
    if name == "table1":
        extra["Beside the paper's reported row"] = paper_comparison(table)
        write_csv(extra["Beside the paper's reported row"], folder / "paper_comparison.csv")
    else:
        extra["Change against the full method (paired, 95% interval)"] = paired_deltas(samples)
        write_csv(extra["Change against the full method (paired, 95% interval)"], folder / "ablation_deltas.csv")

    # 2. The Markdown view.
    notes = [
        f"{len(samples)} sample rows from {samples_csv.name}; N = successful samples, failures counted apart.",
        "Intervals: percentile bootstrap 95%, 1000 resamples of reference images, seeded per cell.",
        *provenance_notes(samples),
        f"set-level: {set_level_note}",
    ]
    if name == "table1":
        notes.append(
            f"Paper ({PAPER_TABLE1['label']}): fid64_pair mean {PAPER_TABLE1['fid64_pair']['mean']}, median "
            f"{PAPER_TABLE1['fid64_pair']['median']}; CLIP mean {PAPER_TABLE1['clip_score']['mean']}, median "
            f"{PAPER_TABLE1['clip_score']['median']} (SD1.5, Places365; comparable only with model=sd15, "
            "dataset=places365 and the openai ViT-L-14 CLIP)."
        )
    md = [f"# {name} ({task})", "", markdown_table(compact_view(table)), ""]
    for title, frame in extra.items():
        md += [f"## {title}", "", markdown_table(frame.map(lambda v: fmt(v) if isinstance(v, float) else v)), ""]
    md += [f"- {n}" for n in notes]
    paths["md"] = folder / f"{name}.md"
    atomic_write_text(paths["md"], "\n".join(md) + "\n")

    # 3. Figures and the report.
    figures = make_figures(samples, root_dir, folder / "figures", n_samples=n_figure_samples)
    csv_links = {p.name: p.name for p in sorted(folder.glob("*.csv"))}
    tables = {name: compact_view(table), **extra}
    paths["report"] = write_report(folder, f"{name} ({task})", tables, csv_links, figures, notes)
    paths["figures"] = figures

    # 4. W&B: the samples and every table and figure in one run of the task's group.
    if wandb_dir is not None:
        log_to_wandb(task, wandb_dir, {"samples": samples, name: table, **extra}, figures)
    return paths


def log_to_wandb(task: str, wandb_dir: Path, tables: dict[str, pd.DataFrame], figures: list[Path]) -> None:
    """One `aggregate` run in the task's W&B group (offline without an API key); failures only warn."""
    import os

    from bench.tracking import WandbTracker

    tracker = WandbTracker(project=os.environ.get("WANDB_PROJECT", "gradsam-bench"), group=task, dir=str(wandb_dir))
    tracker.start({"task": task, "tables": sorted(tables)}, name=f"{task}/aggregate")
    try:
        for title, frame in tables.items():
            tracker.log_table(title, frame)
        tracker.log_images("figures", [str(p) for p in figures])
    finally:
        tracker.finish(0)
