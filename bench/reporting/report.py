"""One report, rendered twice: a list of sections, each a titled table (or figures) with notes.

`render_markdown` writes every section that holds a table (the figures live in the HTML);
bench.reporting.html.render_html writes the page from the same list. Where a section sits on the page
is its `place`:

    HEADLINE   directly under the page title, with no heading of its own
    SUMMARY    a table with a small heading (h3)
    PART       a part of the page (h2): figures, or a table with its notes and figures
    COLLAPSED  a table folded away where it stands (<details>)

The page's first table is its headline (id='headline'). In Markdown every section with a table is a
`## title` with its table and its notes as bullets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.reporting.views import markdown_table

HEADLINE, SUMMARY, PART, COLLAPSED = "headline", "summary", "part", "collapsed"
PLACES = (HEADLINE, SUMMARY, PART, COLLAPSED)


@dataclass(frozen=True, eq=False)
class Section:
    """A titled table and/or figures with notes; `place` says where the page puts it (module docstring)."""

    title: str
    frame: pd.DataFrame | None = None  # a view: one string (or number) per cell
    notes: tuple[str, ...] = ()
    figures: tuple[Path, ...] = ()  # side by side, wrapping
    figure_pairs: tuple[Path, ...] = ()  # at most two a line (box plots)
    place: str = PART
    links: tuple[tuple[str, str], ...] = ()  # (text, relative href) under the notes: another page, a file

    def __post_init__(self) -> None:
        if self.place not in PLACES:
            raise ValueError(f"Section {self.title!r}: place={self.place!r}; expected one of {PLACES}.")


DETAILS = Section("Details")  # the heading above the collapsed tables and the page's data files, provenance, configs


@dataclass(frozen=True, eq=False)
class Report:
    """A report's sections, and what only the HTML page adds: data-file links, provenance notes, run configs."""

    title: str
    subtitle: str
    sections: tuple[Section, ...]
    csv_links: dict[str, str] = field(default_factory=dict)  # shown name -> relative link
    provenance: tuple[str, ...] = ()
    configs: dict[str, str] = field(default_factory=dict)  # run folder -> its resolved config.yaml text

    def section(self, title: str) -> Section | None:
        """The section called `title`, or None."""
        return next((s for s in self.sections if s.title == title), None)


def markdown_body(section: Section) -> list[str]:
    """A section's table and its notes as bullets (no heading), as lines."""
    lines = [markdown_table(section.frame), ""]
    return lines + [f"- {note}" for note in section.notes] + [f"- [{text}]({href})" for text, href in section.links]


def render_markdown(report: Report) -> str:
    """The report as Markdown: title, subtitle, then every section that holds a table."""
    lines = [f"# {report.title}", ""] + ([report.subtitle, ""] if report.subtitle else [])
    for section in report.sections:
        if section.frame is not None:
            lines += [f"## {section.title}", "", *markdown_body(section), *([""] if section.notes else [])]
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"
