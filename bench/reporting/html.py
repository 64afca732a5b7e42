"""report.html: a researcher's page, one static file with relative links (no script, font or style from outside).

Order: the headline table (the paper's Table 1 shape), the harness's compact table and set-level values;
the method comparison figures (box plots, paired deltas against the paper's method); the attribution
section (when the task has one); the sample grids; then, collapsed, the full wide table, every other
table, the data files, provenance and the run configs. Wide tables scroll inside their own box, never
the page. `referenced_files` lists every link so a test can check that each exists.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

STYLE = """
:root { --ink: #1d1d1f; --mute: #5f6368; --rule: #d0d4d9; --head: #f3f4f6; --bad: #b3261e; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       margin: 0 auto; padding: 1.2em 1.5em 3em; max-width: 1280px; line-height: 1.4; }
h1 { font-size: 1.45em; margin: 0.2em 0; } h2 { font-size: 1.15em; margin: 1.6em 0 0.4em;
  border-bottom: 1px solid var(--rule); padding-bottom: 0.2em; } h3 { font-size: 1em; margin: 1em 0 0.3em; }
.sub { color: var(--mute); margin: 0 0 1em; }
.scroll { max-width: 100%; overflow-x: auto; margin: 0.4em 0 0.6em; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--rule); padding: 3px 7px; text-align: right; white-space: nowrap; }
th { background: var(--head); position: sticky; top: 0; }
td:first-child, th:first-child { text-align: left; }
tr.paper td { background: #fff8e1; font-style: italic; }
.ci { color: var(--mute); font-size: 11px; }
.few { color: var(--bad); font-size: 11px; font-weight: 600; }
.note { color: var(--mute); font-size: 13px; margin: 0.2em 0; }
.warn { color: var(--bad); }
.figs { display: flex; flex-wrap: wrap; gap: 10px; }
.figs figure { margin: 0; flex: 0 1 auto; max-width: 100%; }
.figs.pairs figure { max-width: calc(50% - 5px); }
img { max-width: 100%; height: auto; border: 1px solid #e3e3e3; }
figcaption { color: var(--mute); font-size: 12px; }
details { margin: 0.6em 0; } summary { cursor: pointer; font-weight: 600; }
pre { background: #f7f7f9; padding: 0.6em; overflow-x: auto; font-size: 12px; max-width: 100%; }
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  .scroll, pre { overflow: visible; }
  pre { white-space: pre-wrap; word-break: break-all; }
  table { font-size: 8px; } th { position: static; }
  th, td { white-space: normal; overflow-wrap: anywhere; padding: 1px 3px; }
  h2 { break-after: avoid; } figure, tr { break-inside: avoid; }
}
"""
# Printing opens every collapsed section (inline, nothing fetched).
PRINT_SCRIPT = (
    "<script>addEventListener('beforeprint', () => "
    "document.querySelectorAll('details').forEach(d => d.open = true));</script>"
)
FEW_TITLE = "the mean rests on n values, fewer than N: the others are missing (see the *_nan_reason columns)"


@dataclass
class Report:
    """Everything report.html shows; figures and csv links lie inside the report's folder."""

    title: str
    subtitle: str
    headline: pd.DataFrame
    headline_notes: list[str]
    compact: list[tuple[str, pd.DataFrame, list[str]]] = field(default_factory=list)  # (title, frame, notes)
    comparison_figures: list[Path] = field(default_factory=list)  # the paired-delta figure
    box_figures: list[Path] = field(default_factory=list)
    comparison_tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    attribution: tuple[pd.DataFrame, list[Path], list[str]] | None = None  # (table, figures, notes)
    grids: list[Path] = field(default_factory=list)
    wide: pd.DataFrame | None = None
    more_tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    csv_links: dict[str, str] = field(default_factory=dict)
    provenance: list[str] = field(default_factory=list)
    configs: dict[str, str] = field(default_factory=dict)  # name -> the resolved config.yaml text


def cell_html(value: object) -> str:
    """Escape a view cell; its interval and its '(n=k)' marker get their own style."""
    if isinstance(value, float):
        return "" if pd.isna(value) else f"{value:.4g}"
    text = html.escape(str(value))
    text = re.sub(r" \[([^\]]*)\]", r" <span class='ci'>[\1]</span>", text)
    return re.sub(r"\(n=(\d+)\)", rf"<span class='few' title='{FEW_TITLE}'>n=\1</span>", text)


def frame_html(frame: pd.DataFrame, paper_rows: set[int] | None = None, table_id: str = "") -> str:
    """A table in its own horizontally scrolling box."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for i, row in enumerate(frame.itertuples(index=False)):
        cls = " class='paper'" if paper_rows and i in paper_rows else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{cell_html(v)}</td>" for v in row) + "</tr>")
    ident = f" id='{table_id}'" if table_id else ""
    body = "".join(rows)
    return f"<div class='scroll'><table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def notes_html(notes: list[str]) -> str:
    return "".join(f"<p class='note{' warn' if n.startswith('WARNING') else ''}'>{html.escape(n)}</p>" for n in notes)


def figures_html(folder: Path, figures: list[Path], pairs: bool = False) -> str:
    """Figures side by side, wrapping; `pairs`: at most two a line (box plots)."""
    items = []
    for fig in figures:
        rel = html.escape(fig.relative_to(folder).as_posix())
        items.append(
            f"<figure><img src='{rel}' alt='{html.escape(fig.stem)}' loading='eager'>"
            f"<figcaption>{html.escape(fig.stem)}</figcaption></figure>"
        )
    return f"<div class='figs{' pairs' if pairs else ''}'>{''.join(items)}</div>"


def collapsed(summary: str, body: str) -> str:
    return f"<details><summary>{html.escape(summary)}</summary>{body}</details>"


def report_html(folder: Path, r: Report) -> str:
    """The page, in the order of the module docstring."""
    methods = r.headline.get("method", [])
    paper_rows = {i for i, m in enumerate(methods) if str(m).endswith("(paper)")}
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(r.title)}</title>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(r.title)}</h1><p class='sub'>{html.escape(r.subtitle)}</p>",
        frame_html(r.headline, paper_rows, table_id="headline"),
        notes_html(r.headline_notes),
    ]
    for title, frame, notes in r.compact:
        parts += [f"<h3>{html.escape(title)}</h3>", frame_html(frame), notes_html(notes)]
    if r.comparison_figures or r.box_figures or r.comparison_tables:
        parts.append("<h2>Method comparison</h2>")
        parts.append(figures_html(folder, r.comparison_figures))
        parts.append(figures_html(folder, r.box_figures, pairs=True))
        parts += [collapsed(t, frame_html(f)) for t, f in r.comparison_tables]
    if r.attribution is not None:
        frame, figures, notes = r.attribution
        parts += ["<h2>Attribution</h2>", frame_html(frame), notes_html(notes), figures_html(folder, figures)]
    if r.grids:
        parts += ["<h2>Samples</h2>", figures_html(folder, r.grids)]
    parts.append("<h2>Details</h2>")
    if r.wide is not None:
        parts.append(collapsed("Full table (every metric, mean and median)", frame_html(r.wide)))
    parts += [collapsed(t, frame_html(f)) for t, f in r.more_tables]
    links = "".join(f"<li><a href='{html.escape(h)}'>{html.escape(n)}</a></li>" for n, h in r.csv_links.items())
    parts.append(collapsed("Data files", f"<ul>{links}</ul>"))
    parts.append(collapsed("Provenance", notes_html(r.provenance)))
    for name, text in r.configs.items():
        parts.append(collapsed(f"Config: {name}", f"<pre>{html.escape(text)}</pre>"))
    parts += [PRINT_SCRIPT, "</body></html>\n"]
    return "\n".join(parts)


def write_report(folder: Path, report: Report) -> Path:
    """Write folder/report.html."""
    from bench.records import atomic_write_text

    path = folder / "report.html"
    atomic_write_text(path, report_html(folder, report))
    return path


def referenced_files(report: Path) -> list[str]:
    """Every href/src of a report (relative paths)."""
    return re.findall(r"(?:href|src)='([^']+)'", report.read_text())
