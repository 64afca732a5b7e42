"""Tables are views of the per-sample rows, never edited by hand (`python -m bench.aggregate` runs this).

For each results/<task>/samples.csv it writes, beside it:
    <table>.csv                    per row (model, dataset, label, ablation): N, failures, per metric its count
                                   n of non-missing values, mean and median with bootstrap 95% intervals, and
                                   the set-level metrics (the full wide table)
    <table>.md, <table>_headline.md  the paper-shaped headline table first, then the harness's compact table,
                                   the set-level table, paired deltas, the attribution study's table (when its
                                   attribution.csv is in the folder), the paper comparison and the full table;
                                   the headline alone (report.html renders the same sections, with figures)
    <table>_by_category.csv        the same per category and subcategory
    <table>_by_prompt.csv          the same per prompt
    paper_comparison.csv           (Table 1, comparable profile only) our rows beside the paper's reported row
    paired_deltas.csv              (Table 1) each row's paired change against the paper's method (gradsam, none)
    ablation_deltas.csv            (ablations) each metric's paired change against ablation=none
    figures/*.png, report.html     box plots, paired deltas, sample grids, and the page that shows it all
<table> is `ablations` for tasks named ablations*, else `table1`. Unchanged rows give identical bytes.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.config import REPO_ROOT
from bench.metrics import BG_PSNR, CLIP_SCORE, FID64_PAIR, MASK_IOU, SUBJECT_OK, TRUE_BG_PSNR
from bench.metrics.set_level import SetLevelAssets, add_set_level
from bench.records import atomic_write_text, read_csv, write_csv
from bench.reporting.figures import box_plots, delta_plot, sample_grids
from bench.reporting.html import write_report
from bench.reporting.report import (
    COLLAPSED,
    DETAILS,
    HEADLINE,
    SUMMARY,
    Report,
    Section,
    markdown_body,
    render_markdown,
)
from bench.reporting.samples_table import ResultsError, read_samples
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
    delta_view,
    fmt_float,
    harness_view,
    headline_view,
    markdown_table,
    set_level_view,
    summary_view,
    text_table,
    wide_view,
)

TERMINAL_WIDTH = 100
# The metrics of the paired-delta figure: the paper's two, then background, mask and subject where present.
DELTA_METRICS = [FID64_PAIR, CLIP_SCORE, BG_PSNR, TRUE_BG_PSNR, MASK_IOU, SUBJECT_OK]
ATTRIBUTION_CSV = "attribution.csv"  # written into the task folder by the attribution study, when run
HARNESS_TITLE = "Harness metrics (means)"
__all__ = ["AggregateOptions", "aggregate_task", "markdown_table"]  # markdown_table: bench.perf.throughput


@dataclass(frozen=True)
class AggregateOptions:
    """How `aggregate_task` builds a task's files; the entry points (bench.aggregate, bench.reproduce) fill it,
    reading the environment there (nothing in bench.reporting does)."""

    set_level: bool = True  # False: FID-2048/KID NaN with that reason (a quick rebuild)
    set_level_assets: SetLevelAssets = field(default_factory=SetLevelAssets)  # weights and caches
    n_figure_samples: int = 3  # sample grids
    wandb_dir: Path | None = None  # None: no W&B run
    wandb_project: str = "gradsam-bench"


@dataclass(frozen=True, eq=False)
class TaskTables:
    """A task's numbers: its rows, the full table, paired deltas and the paper comparison."""

    samples: pd.DataFrame
    table: pd.DataFrame  # summarize + the pooled set-level columns
    set_level_note: str
    deltas: pd.DataFrame  # empty without a reference row
    reference: str  # what the deltas are taken against
    comparison: pd.DataFrame  # empty unless the profile is the paper's


def provenance_notes(samples: pd.DataFrame) -> list[str]:
    notes = set()
    for col in samples.columns:
        if col.endswith("_provenance"):
            for value in samples[col].dropna().unique():
                notes.add(f"{col[: -len('_provenance')]}: {value}")
    return sorted(notes)


def table_name_for(task: str) -> str:
    return "ablations" if task.startswith("ablations") else "table1"


def subtitle(task: str, samples: pd.DataFrame) -> str:
    ok = int((samples["status"] == "ok").sum())
    profile = ", ".join(
        f"{c}={'/'.join(sorted(samples[c].astype(str).unique()))}" for c in ("model", "dataset") if c in samples
    )
    return f"task {task}: {profile}; {len(samples)} sample rows ({ok} ok) from samples.csv"


def attribution_section(folder: Path) -> Section | None:
    """The attribution study's table and figures when it wrote them into this task folder, else None."""
    csv = folder / ATTRIBUTION_CSV
    if not csv.is_file():
        return None
    try:
        frame = summary_view(read_csv(csv))
    except (ValueError, UnicodeDecodeError, KeyError) as exc:
        raise ResultsError(
            f"{csv} cannot be read as the attribution study's table ({type(exc).__name__}: {exc}). Fix: rebuild it "
            "with `python -m bench.attribution --report-only`, or delete it."
        ) from None
    figures = tuple(sorted((folder / "figures").glob("attribution_*.png")))
    notes = (f"From {csv.name}" + (" and attribution.md." if (folder / "attribution.md").is_file() else "."),)
    return Section("Attribution", frame, notes, figures)


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
    results_dir: Path, task: str, root_dir: Path | None = None, options: AggregateOptions = AggregateOptions()
) -> dict:
    """Build every table, figure and the report of one task from its samples.csv; return the paths, and under
    "terminal" the headline and compact tables as text within TERMINAL_WIDTH columns."""
    folder = results_dir / task
    samples_csv = folder / "samples.csv"
    root_dir = root_dir or REPO_ROOT
    roots = [root_dir, results_dir.parent]  # image paths are relative to the run's paths.root_dir
    samples = read_samples(samples_csv)  # validated whole (ResultsError naming the line), before any number
    name = table_name_for(task)
    # 1. The tables (CSV files), 2. the figures, 3. one report rendered to Markdown (and the headline alone), HTML.
    tables = write_tables(samples, folder, name, roots, options)
    figures = draw_figures(tables, root_dir, folder / "figures", options.n_figure_samples)
    report = build_report(f"{name} ({task})", subtitle(task, samples), tables, figures, folder, roots)
    paths: dict = {"samples": samples_csv, "csv": folder / f"{name}.csv", "md": folder / f"{name}.md"}
    atomic_write_text(paths["md"], render_markdown(report))
    paths["headline_md"] = folder / f"{name}_headline.md"
    atomic_write_text(paths["headline_md"], "\n".join(markdown_body(report.sections[0])) + "\n")
    paths["report"] = write_report(folder, report)
    paths["figures"] = [*figures.grids, *figures.boxes, *figures.deltas]
    paths["terminal"] = terminal_summary(report, paths)
    # 4. W&B: the samples and every table and figure in one run of the task's group.
    if options.wandb_dir is not None:
        extra = {"paired deltas": tables.deltas} if len(tables.deltas) else {}
        log_to_wandb(task, options, {"samples": samples, name: tables.table, **extra}, paths["figures"])
    return paths


def write_tables(
    samples: pd.DataFrame, folder: Path, name: str, roots: list[Path], options: AggregateOptions
) -> TaskTables:
    """The full table (with the set-level FID-2048/KID, every scope also in <name>_set_level.csv), breakdowns
    per category and per prompt, paired deltas (against the paper's method, or each ablation against the full
    method) and the paper comparison, each written as CSV."""
    table = summarize(samples, GROUP, table=name)
    table, set_level_frame, set_level_note = add_set_level(
        table, samples, GROUP, roots, options.set_level_assets, enabled=options.set_level
    )
    write_csv(set_level_frame, folder / f"{name}_set_level.csv")
    write_csv(table, folder / f"{name}.csv")
    write_csv(summarize(samples, [*GROUP, "category", "subcategory"], False, name), folder / f"{name}_by_category.csv")
    write_csv(summarize(samples, [*GROUP, "subcategory", "prompt"], False, name), folder / f"{name}_by_prompt.csv")
    comparison = pd.DataFrame()
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
    if len(deltas):
        write_csv(deltas, folder / deltas_file)
    return TaskTables(samples, table, set_level_note, deltas, reference, comparison)


@dataclass(frozen=True)
class TaskFigures:
    """A task's figure files."""

    deltas: tuple[Path, ...]  # the paired-delta figure, when there are deltas
    boxes: tuple[Path, ...]  # one box plot per metric
    grids: tuple[Path, ...]  # sample grids


def draw_figures(tables: TaskTables, root_dir: Path, figures_dir: Path, n_samples: int) -> TaskFigures:
    """Box plots, the paired-delta figure and `n_samples` sample grids under `figures_dir`."""
    samples = tables.samples
    boxes = box_plots(samples, figures_dir)
    deltas: tuple[Path, ...] = ()
    if len(tables.deltas):
        metrics = [m for m in DELTA_METRICS if m in metric_columns(samples)]
        figure = delta_plot(tables.deltas, figures_dir / "paired_deltas.png", tables.reference, metrics)
        deltas = (figure,) if figure else ()
    grids = sample_grids(samples, root_dir, figures_dir, n_samples=n_samples)
    return TaskFigures(deltas, tuple(boxes), tuple(grids))


def build_report(
    title: str, subtitle: str, tables: TaskTables, figures: TaskFigures, folder: Path, roots: list[Path]
) -> Report:
    """The task's report: its sections, and for the page the data files, provenance notes and run configs."""
    sections = report_sections(tables, folder, figures)
    return Report(
        title=title,
        subtitle=subtitle,
        sections=tuple(sections),
        csv_links={p.name: p.name for p in sorted(folder.glob("*.csv"))},
        provenance=(*sections[-1].notes, *sections[0].notes),  # the full table's notes, the headline's
        configs=run_configs(samples=tables.samples, roots=roots),
    )


def report_sections(tables: TaskTables, folder: Path, figures: TaskFigures) -> list[Section]:
    """The report in reading order: headline, compact and set-level tables, the method comparison, the
    attribution study, sample grids, then the details (the paper comparison, the full table and its notes)."""
    table, samples = tables.table, tables.samples
    headline, headline_notes = headline_view(table, samples)
    sections = [Section("Headline", headline, tuple(headline_notes), place=HEADLINE)]
    compact = harness_view(table)
    if compact is not None:
        sections.append(Section(HARNESS_TITLE, compact, place=SUMMARY))
    set_view, set_notes = set_level_view(table)
    if set_view is not None:
        sections.append(Section("Set-level", set_view, tuple(set_notes), place=SUMMARY))
    if figures.deltas or figures.boxes or len(tables.deltas):
        sections.append(Section("Method comparison", figures=figures.deltas, figure_pairs=figures.boxes))
    if len(tables.deltas):
        title = f"Paired change against {tables.reference} (95% interval)"
        sections.append(Section(title, delta_view(tables.deltas), place=COLLAPSED))
    attribution = attribution_section(folder)
    sections += [attribution] if attribution is not None else []
    sections += [Section("Samples", figures=figures.grids)] if figures.grids else []
    sections.append(DETAILS)
    if len(tables.comparison):
        comparison = tables.comparison.map(fmt_float)
        sections.append(Section("Beside the paper's reported row", comparison, place=COLLAPSED))
    notes = (
        "Intervals: percentile bootstrap 95%, 1000 resamples of reference images, seeded per cell.",
        "PSNR columns count an identical region (inf in samples.csv) as 100 dB (bench.metrics.METRIC_CAPS).",
        *provenance_notes(samples),
        f"set-level: {tables.set_level_note}",
    )
    wide = wide_view(table, metric_columns(samples))
    return [*sections, Section("Full table", wide, notes, place=COLLAPSED)]


def terminal_summary(report: Report, paths: dict) -> str:
    """The headline and compact tables and the file paths, no line wider than TERMINAL_WIDTH."""
    headline, compact = report.sections[0], report.section(HARNESS_TITLE)
    out = [text_table(headline.frame, TERMINAL_WIDTH), ""]
    out += [textwrap.fill(n, TERMINAL_WIDTH, subsequent_indent="  ") for n in headline.notes]
    if compact is not None:
        out += [
            "",
            "Harness metrics (means; intervals in the files):",
            text_table(compact.frame, TERMINAL_WIDTH, False),
        ]
    out.append("")
    out += [f"{key:>8}: {paths[key]}" for key in ("csv", "md", "report") if key in paths]
    return "\n".join(out)


def log_to_wandb(task: str, options: AggregateOptions, tables: dict[str, pd.DataFrame], figures: list[Path]) -> None:
    """One `aggregate` run in the task's W&B group (offline without an API key); failures only warn."""
    from bench.tracking import WandbTracker

    tracker = WandbTracker(project=options.wandb_project, group=task, dir=str(options.wandb_dir))
    tracker.start({"task": task, "tables": sorted(tables)}, name=f"{task}/aggregate")
    try:
        for title, frame in tables.items():
            tracker.log_table(title, frame)
        tracker.log_images("figures", [str(p) for p in figures])
    finally:
        tracker.finish(0)
