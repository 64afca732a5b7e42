"""report.html: a researcher's page, one static file with relative links (no script, font or style from outside).

`render_html` draws a bench.reporting.report.Report: its sections in order, each where its `place` puts it,
then, collapsed, the data files, provenance and the run configs. Wide tables scroll inside their own box,
never the page. `referenced_files` lists every link so a test can check that each exists.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pandas as pd

from bench.reporting.report import COLLAPSED, HEADLINE, PART, SUMMARY, Report, Section

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


def section_html(folder: Path, section: Section, headline: bool = False) -> str:
    """One section where its `place` puts it: no heading, h3, h2 or collapsed. `headline`: its table is the
    page's headline (id='headline', the paper's row marked)."""
    body = []
    if section.frame is not None:
        methods = section.frame.get("method", []) if headline else []
        paper_rows = {i for i, m in enumerate(methods) if str(m).endswith("(paper)")}
        body.append(frame_html(section.frame, paper_rows, table_id="headline" if headline else ""))
    if section.notes:
        body.append(notes_html(list(section.notes)))
    for text, href in section.links:
        body.append(f"<p class='note'><a href='{html.escape(href)}'>{html.escape(text)}</a></p>")
    if section.figures:
        body.append(figures_html(folder, list(section.figures)))
    if section.figure_pairs:
        body.append(figures_html(folder, list(section.figure_pairs), pairs=True))
    title = html.escape(section.title)
    if section.place == COLLAPSED:
        return collapsed(section.title, "".join(body))
    heading = {HEADLINE: "", SUMMARY: f"<h3>{title}</h3>", PART: f"<h2>{title}</h2>"}[section.place]
    return "\n".join([heading, *body]) if heading else "\n".join(body)


def render_html(folder: Path, report: Report) -> str:
    """The page: the title, every section in order (the first table is the headline), then collapsed data files,
    provenance and configs."""
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(report.title)}</h1><p class='sub'>{html.escape(report.subtitle)}</p>",
    ]
    first_table = next((i for i, section in enumerate(report.sections) if section.frame is not None), None)
    parts += [section_html(folder, section, i == first_table) for i, section in enumerate(report.sections)]
    links = "".join(f"<li><a href='{html.escape(h)}'>{html.escape(n)}</a></li>" for n, h in report.csv_links.items())
    parts.append(collapsed("Data files", f"<ul>{links}</ul>"))
    if report.provenance:
        parts.append(collapsed("Provenance", notes_html(list(report.provenance))))
    for name, text in report.configs.items():
        parts.append(collapsed(f"Config: {name}", f"<pre>{html.escape(text)}</pre>"))
    parts += [PRINT_SCRIPT, "</body></html>\n"]
    return "\n".join(parts)


def write_report(folder: Path, report: Report, name: str = "report.html") -> Path:
    """Write folder/<name> (report.html)."""
    from bench.records import atomic_write_text

    path = folder / name
    atomic_write_text(path, render_html(folder, report))
    return path


def referenced_files(report: Path) -> list[str]:
    """Every href/src of a report (relative paths)."""
    return re.findall(r"(?:href|src)='([^']+)'", report.read_text())
