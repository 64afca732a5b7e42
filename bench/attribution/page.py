"""The attribution study's page: the verdict first, then the figures, then every table folded away.

    headline    the verdict table and its sentences (bench/attribution/verdict.py)
    figures     the overview heatmap (AUROC over map x scoring step, cells at or below the centre prior hatched),
                the per-layer and per-step figures, then each later stage's figures
    tables      collapsed (<details>): the truth without mask bias (no_manipulation) first, the method's own output,
                both thresholds, per layer, the mask rules, then each later stage's tables

attribution.md renders the same sections (tables only); `terminal_summary` is what `python -m bench.attribution`
prints: the verdict table and its sentences within 100 columns, and the paths of the files.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from bench.attribution.verdict import (  # noqa: E402
    CENTRE,
    PAPER,
    UNIFORM,
    Step,
    is_layer_set,
    kinds_of,
    map_name,
    steps_of,
)
from bench.reporting.browser import PageCheck  # noqa: E402
from bench.reporting.figures import save_figure  # noqa: E402
from bench.reporting.report import COLLAPSED, DETAILS, PART, Section  # noqa: E402
from bench.reporting.views import text_table  # noqa: E402

TERMINAL_WIDTH = 100
OVERVIEW = "auroc_overview.png"


def display_order(layer_set: str) -> tuple:
    """last, all, then res<k> from the largest maps to the smallest, then anything else by name."""
    if layer_set.startswith("res") and layer_set[3:].isdigit():
        return (2, -int(layer_set[3:]), layer_set)
    return ({"-": 0, "last": 0, "all": 1}.get(layer_set, 3), 0, layer_set)


def overview_rows(control: pd.DataFrame) -> list[tuple[str, str]]:
    """(kind, layer set) of every map the overview shows: each kind's layer sets (no single layer, no own:<set>: the
    same map as its set in the no_manipulation chain), then the chance lines."""
    rows = []
    for kind in kinds_of(control):
        sets = {s for s in control[control["kind"] == kind]["layer_set"] if is_layer_set(s)}
        rows += [(kind, s) for s in sorted(sets, key=display_order)]
    return rows + [(k, "-") for k in (CENTRE, UNIFORM) if (control["kind"] == k).any()]


def overview_grid(control: pd.DataFrame, rows: list[tuple[str, str]], steps: list[Step]) -> tuple[np.ndarray, ...]:
    """AUROC means [rows, steps] and the centre prior's mean per step [steps] (NaN where missing)."""
    means = control.set_index(["kind", "layer_set", "index"])["auroc_mean"]
    means = means[~means.index.duplicated()]
    value = lambda k, s, i: float(means.get((k, s, i), np.nan))  # noqa: E731
    grid = np.array([[value(k, s, step.index) for step in steps] for k, s in rows], dtype=float).reshape(len(rows), -1)
    centre = np.array([value(CENTRE, "-", step.index) for step in steps], dtype=float)
    return grid, centre


def weak_cells(grid: np.ndarray, centre: np.ndarray, rows: list[tuple[str, str]]) -> np.ndarray:
    """bool [rows, steps]: cells at or below the centre prior's mean at their step (never the prior's own row, a
    missing value or a step without a prior)."""
    with np.errstate(invalid="ignore"):
        weak = grid <= centre[None, :]
    return weak & np.array([kind != CENTRE for kind, _ in rows])[:, None]


def overview_figure(control: pd.DataFrame) -> plt.Figure:
    """Heatmap of AUROC over map (kind x layer set, rows) and scoring step (columns): each cell's mean written in it,
    `weak_cells` hatched, missing cells grey, the paper's row named, a rule between kinds."""
    steps, rows = steps_of(control), overview_rows(control)
    grid, centre = overview_grid(control, rows, steps)
    weak = weak_cells(grid, centre, rows)
    fig, ax = plt.subplots(figsize=(1.7 + 1.05 * max(1, len(steps)), 1.2 + 0.28 * max(1, len(rows))))
    ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0.3, vmax=1.0, aspect="auto")
    ax.set_facecolor("#dddddd")
    for (r, c), value in np.ndenumerate(grid):
        if weak[r, c]:
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, hatch="///", edgecolor=(1, 1, 1, 0.55), lw=0))
        text = "n/a" if np.isnan(value) else f"{value:.2f}"
        box = {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85} if weak[r, c] else None
        colour = "#555555" if np.isnan(value) else "black" if weak[r, c] or value > 0.75 else "white"
        ax.text(c, r, text, ha="center", va="center", fontsize=7, color=colour, weight="bold", bbox=box)
    for r in range(1, len(rows)):  # a rule between kinds
        if rows[r][0] != rows[r - 1][0]:
            ax.axhline(r - 0.5, color="white", lw=2)
    ax.set_xticks(range(len(steps)), [s.header for s in steps], fontsize=8)
    ax.set_yticks(range(len(rows)), [row_name(k, s) for k, s in rows], fontsize=8)
    ax.set_title("AUROC (truth = no_manipulation)", fontsize=9)
    hatched = Patch(facecolor="#777777", hatch="///", edgecolor="white", label="at or below the centre prior")
    ax.legend(handles=[hatched], loc="upper center", bbox_to_anchor=(0.5, -0.6 / max(1, len(rows)) - 0.02), fontsize=7)
    fig.tight_layout()
    return fig


def auroc_overview(control: pd.DataFrame, folder: Path) -> Path:
    """figures/auroc_overview.png: `overview_figure` of the no_manipulation chain's main-threshold rows."""
    return save_figure(overview_figure(control), folder / OVERVIEW, dpi=100)


def row_name(kind: str, layer_set: str) -> str:
    names = {CENTRE: "centre prior", UNIFORM: "uniform", PAPER: f"{map_name(*PAPER)} (the paper)"}
    return names.get((kind, layer_set), names.get(kind, map_name(kind, layer_set)))


def arrange(verdict: Section, figures: Section, tables: list[Section], stages: list[Section]) -> list[Section]:
    """The page's order: the verdict; the study's figures, then each later stage's figure sections; then, under
    Details and folded away, the study's tables and each later stage's (a stage's summary tables too)."""
    stage_figures = [s for s in stages if s.frame is None]
    stage_tables = [s if s.place == COLLAPSED else replace(s, place=COLLAPSED) for s in stages if s.frame is not None]
    folded = [s if s.place == COLLAPSED else replace(s, place=COLLAPSED) for s in tables]
    return [verdict, replace(figures, place=PART), *stage_figures, DETAILS, *folded, *stage_tables]


def shown_path(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when under it."""
    try:
        return str(path.resolve().relative_to(Path(os.getcwd()).resolve()))
    except ValueError:
        return str(path)


def terminal_summary(verdict: Section, paths: dict[str, Path], width: int = TERMINAL_WIDTH) -> str:
    """The verdict as a terminal shows it: its table, each sentence wrapped, then the files; no line wider than
    `width` (a path longer than that stays whole)."""
    lines = [verdict.title, "", text_table(verdict.frame, width), ""]
    lines += [textwrap.fill(note, width, initial_indent="- ", subsequent_indent="  ") for note in verdict.notes]
    lines.append("")
    files = {key: path for key, path in paths.items() if isinstance(path, Path)}
    width_of_keys = max(map(len, files), default=0)
    lines += [f"{key:>{width_of_keys}}: {shown_path(path)}" for key, path in files.items()]
    return "\n".join(lines)


def page_problems(check: PageCheck) -> list[str]:
    """What the study's page must also meet at the browser's viewport, beside PageCheck.problems(): the verdict table
    and the first figure on the first screen, and no table but the verdict above that figure."""
    out = []
    if check.headline_bottom is not None and check.headline_bottom > check.viewport_height:
        out.append(f"the verdict table ends below the first screen: {check.headline_bottom:.0f} px")
    if check.first_image_top is None:
        out.append("the page has no figure")
    elif check.first_image_top >= check.viewport_height:
        out.append(f"the first figure starts below the first screen: {check.first_image_top:.0f} px")
    if check.tables_above_first_image:
        out.append(f"{check.tables_above_first_image} table(s) besides the verdict come before the first figure")
    return out
