"""Tables are views of the per-sample rows, never edited by hand (`python -m bench.aggregate` runs this).

For each results/<task>/samples.csv it writes, beside it:
    <table>.csv                    per row (model, dataset, label, ablation): N, failures, per metric its count
                                   n of non-missing values, mean and median with bootstrap 95% intervals, and
                                   the set-level metrics (the full wide table)
    <table>.md, <table>_headline.md  the paper-shaped headline table first, then the harness's compact table,
                                   the set-level table, paired deltas and the full table; the headline alone
    <table>_by_category.csv        the same per category and subcategory
    <table>_by_prompt.csv          the same per prompt
    paper_comparison.csv           (Table 1, comparable profile only) our rows beside the paper's reported row
    paired_deltas.csv              (Table 1) each row's paired change against the paper's method (gradsam, none)
    ablation_deltas.csv            (ablations) each metric's paired change against ablation=none
    figures/*.png, report.html     box plots, paired deltas, sample grids, and the page that shows it all
<table> is `ablations` for tasks named ablations*, else `table1`. Unchanged rows give identical bytes.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.config import REPO_ROOT, env_path
from bench.metrics.set_level import add_set_level
from bench.records import atomic_write_text, write_csv
from bench.reporting.figures import box_plots, delta_plot, sample_grids
from bench.reporting.html import Report, write_report
from bench.reporting.tables import (
    GROUP,
    PAPER_METHOD,
    deltas_against,
    metric_columns,
    paired_deltas,
    paper_comparison,
    summarize,
)
from bench.reporting.views import (
    fmt,
    harness_view,
    headline_view,
    markdown_table,
    set_level_view,
    text_table,
    wide_view,
)

TERMINAL_WIDTH = 100
# The metrics of the paired-delta figure: the paper's two, then background, mask and subject where present.
DELTA_METRICS = ["fid64_pair", "clip_score", "bg_psnr", "true_bg_psnr", "mask_iou", "subject_ok"]
ATTRIBUTION_CSV = "attribution.csv"  # written into the task folder by the attribution study, when run


def provenance_notes(samples: pd.DataFrame) -> list[str]:
    notes = set()
    for col in samples.columns:
        if col.endswith("_provenance"):
            for value in samples[col].dropna().unique():
                notes.add(f"{col[: -len('_provenance')]}: {value}")
    return sorted(notes)


def table_name_for(task: str) -> str:
    return "ablations" if task.startswith("ablations") else "table1"


def delta_view(deltas: pd.DataFrame) -> pd.DataFrame:
    """Paired deltas as 'mean [lo, hi] (n=k)' per metric, k = pairs where both values exist."""
    view = deltas[[c for c in [*GROUP, "N_paired"] if c in deltas]].copy()
    for col in deltas.columns:
        if col.endswith("_delta"):
            view[col] = [
                fmt(r[col])
                + (f" [{fmt(r[f'{col}_lo'])}, {fmt(r[f'{col}_hi'])}]" if pd.notna(r[f"{col}_lo"]) else "")
                + (f" (n={int(r[f'{col}_n'])})" if r[f"{col}_n"] < r["N_paired"] else "")
                if pd.notna(r[col])
                else ""
                for _, r in deltas.iterrows()
            ]
    return view


def subtitle(task: str, samples: pd.DataFrame) -> str:
    ok = int((samples["status"] == "ok").sum())
    profile = ", ".join(
        f"{c}={'/'.join(sorted(samples[c].astype(str).unique()))}" for c in ("model", "dataset") if c in samples
    )
    return f"task {task}: {profile}; {len(samples)} sample rows ({ok} ok) from samples.csv"


def attribution_section(folder: Path) -> tuple[pd.DataFrame, list[Path], list[str]] | None:
    """The attribution study's table and figures when it wrote them into this task folder, else None."""
    csv = folder / ATTRIBUTION_CSV
    if not csv.is_file():
        return None
    frame = pd.read_csv(csv, keep_default_na=False, na_values=[""]).map(lambda v: fmt(v) if isinstance(v, float) else v)
    figures = sorted((folder / "figures").glob("attribution_*.png"))
    notes = [f"From {csv.name}" + (" and attribution.md." if (folder / "attribution.md").is_file() else ".")]
    return frame, figures, notes


def run_configs(samples: pd.DataFrame, roots: list[Path]) -> dict[str, str]:
    """The resolved config.yaml of every run folder behind the rows (found above each image), by folder."""
    configs: dict[str, str] = {}
    for image in sorted(samples["image_path"].dropna().astype(str).unique()):
        for root in roots:
            path = root / image
            for parent in path.parents:
                if parent == root or root not in parent.parents:
                    break
                if (parent / "config.yaml").is_file():
                    configs.setdefault(parent.relative_to(root).as_posix(), (parent / "config.yaml").read_text())
                    break
            else:
                continue
            break
    return dict(sorted(configs.items()))


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
    """Build every table, figure and the report of one task from its samples.csv; return the paths, and under
    "terminal" the headline and compact tables as text within TERMINAL_WIDTH columns.

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
    paths: dict = {"samples": samples_csv}

    # 1. The full table (with the set-level FID-2048/KID, all scopes also in <table>_set_level.csv),
    #    and breakdowns per category and per prompt.
    table = summarize(samples, GROUP, table=name)
    roots = [root_dir, results_dir.parent]  # image paths are relative to the run's paths.root_dir
    table, set_level_frame, set_level_note = add_set_level(
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
    write_csv(set_level_frame, folder / f"{name}_set_level.csv")
    paths["csv"] = folder / f"{name}.csv"
    write_csv(table, paths["csv"])
    by_category = summarize(samples, [*GROUP, "category", "subcategory"], intervals=False, table=name)
    by_prompt = summarize(samples, [*GROUP, "subcategory", "prompt"], intervals=False, table=name)
    write_csv(by_category, folder / f"{name}_by_category.csv")
    write_csv(by_prompt, folder / f"{name}_by_prompt.csv")

    # 2. Paired deltas (against the paper's method, or each ablation against the full method), the paper.
    if name == "table1":
        deltas, deltas_file = deltas_against(samples, PAPER_METHOD), "paired_deltas.csv"
        reference = "+".join(PAPER_METHOD)
        comparison = paper_comparison(table, samples)
        stale = folder / "paper_comparison.csv"
        if len(comparison):
            write_csv(comparison, stale)
        elif stale.exists():
            stale.unlink()  # an earlier aggregation's rows: these are not comparable
    else:
        deltas, deltas_file, reference = paired_deltas(samples), "ablation_deltas.csv", "ablation=none"
        comparison = pd.DataFrame()
    if len(deltas):
        write_csv(deltas, folder / deltas_file)

    # 3. The views: headline (the paper's shape), the harness's compact table, set-level; the Markdown.
    headline, headline_notes = headline_view(table, samples)
    compact = harness_view(table)
    set_view, set_notes = set_level_view(table)
    notes = [
        "Intervals: percentile bootstrap 95%, 1000 resamples of reference images, seeded per cell.",
        "PSNR columns count an identical region (inf in samples.csv) as 100 dB (bench.metrics.METRIC_CAPS).",
        *provenance_notes(samples),
        f"set-level: {set_level_note}",
    ]
    wide = wide_view(table, metric_columns(samples))
    head_md = [markdown_table(headline), "", *[f"- {n}" for n in headline_notes]]
    md = [f"# {name} ({task})", "", subtitle(task, samples), "", "## Headline", "", *head_md, ""]
    if compact is not None:
        md += ["## Harness metrics (means)", "", markdown_table(compact), ""]
    if set_view is not None:
        md += ["## Set-level", "", markdown_table(set_view), "", *[f"- {n}" for n in set_notes], ""]
    if len(deltas):
        md += [f"## Paired change against {reference} (95% interval)", "", markdown_table(delta_view(deltas)), ""]
    if len(comparison):
        md += ["## Beside the paper's reported row", "", markdown_table(comparison.map(_fmt_float)), ""]
    md += ["## Full table", "", markdown_table(wide), "", *[f"- {n}" for n in notes]]
    paths["md"] = folder / f"{name}.md"
    atomic_write_text(paths["md"], "\n".join(md) + "\n")
    paths["headline_md"] = folder / f"{name}_headline.md"
    atomic_write_text(paths["headline_md"], "\n".join(head_md) + "\n")

    # 4. Figures and the report.
    figures_dir = folder / "figures"
    boxes = box_plots(samples, figures_dir)
    metrics = [m for m in DELTA_METRICS if m in metric_columns(samples)]
    delta_fig = delta_plot(deltas, figures_dir / "paired_deltas.png", reference, metrics) if len(deltas) else None
    grids = sample_grids(samples, root_dir, figures_dir, n_samples=n_figure_samples)
    compact_sections = [("Harness metrics (means)", compact, [])] if compact is not None else []
    if set_view is not None:
        compact_sections.append(("Set-level (FID-2048, KID)", set_view, set_notes))
    report = Report(
        title=f"{name} ({task})",
        subtitle=subtitle(task, samples),
        headline=headline,
        headline_notes=headline_notes,
        compact=compact_sections,
        comparison_figures=[delta_fig] if delta_fig else [],
        box_figures=boxes,
        comparison_tables=[(f"Paired change against {reference}", delta_view(deltas))] if len(deltas) else [],
        attribution=attribution_section(folder),
        grids=grids,
        wide=wide,
        more_tables=[("Beside the paper's reported row", comparison.map(_fmt_float))] if len(comparison) else [],
        csv_links={p.name: p.name for p in sorted(folder.glob("*.csv"))},
        provenance=[*notes, *headline_notes],
        configs=run_configs(samples, roots),
    )
    paths["report"] = write_report(folder, report)
    paths["figures"] = [*grids, *boxes, *([delta_fig] if delta_fig else [])]
    paths["terminal"] = terminal_summary(headline, headline_notes, compact, paths)

    # 5. W&B: the samples and every table and figure in one run of the task's group.
    if wandb_dir is not None:
        extra = {"paired deltas": deltas} if len(deltas) else {}
        log_to_wandb(task, wandb_dir, {"samples": samples, name: table, **extra}, paths["figures"])
    return paths


def _fmt_float(value: object) -> object:
    return fmt(value) if isinstance(value, float) else value


def terminal_summary(headline: pd.DataFrame, notes: list[str], compact: pd.DataFrame | None, paths: dict) -> str:
    """The headline and compact tables and the file paths, no line wider than TERMINAL_WIDTH."""
    import textwrap

    out = [text_table(headline, TERMINAL_WIDTH), ""]
    out += [textwrap.fill(n, TERMINAL_WIDTH, subsequent_indent="  ") for n in notes]
    if compact is not None:
        out += ["", "Harness metrics (means; intervals in the files):", text_table(compact, TERMINAL_WIDTH, False)]
    out.append("")
    out += [f"{key:>8}: {paths[key]}" for key in ("csv", "md", "report") if key in paths]
    return "\n".join(out)


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
