"""report.html: the tables, the figures and links to the CSVs, in one folder that can be copied.

Every link is relative to the report's folder; `referenced_files` lists them so a test can check
that each exists.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pandas as pd

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1400px; }
table { border-collapse: collapse; font-size: 12px; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
th { background: #f0f0f0; }
img { max-width: 100%; border: 1px solid #ddd; margin: 4px 0; }
.note { color: #555; font-size: 13px; }
"""


def frame_html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0)


def write_report(
    folder: Path,
    title: str,
    tables: dict[str, pd.DataFrame],
    csv_links: dict[str, str],
    figures: list[Path],
    notes: list[str],
) -> Path:
    """Write folder/report.html; `csv_links` and `figures` must lie inside `folder`."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
    ]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]
    parts.append("<h2>Data</h2><ul>")
    parts += [f"<li><a href='{html.escape(href)}'>{html.escape(name)}</a></li>" for name, href in csv_links.items()]
    parts.append("</ul>")
    for name, frame in tables.items():
        parts.append(f"<h2>{html.escape(name)}</h2>{frame_html(frame)}")
    if figures:
        parts.append("<h2>Figures</h2>")
        for fig in figures:
            rel = fig.relative_to(folder).as_posix()
            parts.append(
                f"<figure><img src='{html.escape(rel)}' alt='{html.escape(fig.stem)}'>"
                f"<figcaption class='note'>{html.escape(fig.stem)}</figcaption></figure>"
            )
    parts.append("</body></html>\n")
    path = folder / "report.html"
    from bench.records import atomic_write_text

    atomic_write_text(path, "\n".join(parts))
    return path


def referenced_files(report: Path) -> list[str]:
    """Every href/src of a report (relative paths)."""
    return re.findall(r"(?:href|src)='([^']+)'", report.read_text())
