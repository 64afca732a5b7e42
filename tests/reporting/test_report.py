"""One report rendered twice: the same sections in Markdown and HTML; one cell format; one summary scheme."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.config import REPO_ROOT
from bench.reporting.html import render_html
from bench.reporting.report import COLLAPSED, DETAILS, HEADLINE, SUMMARY, Report, Section, render_markdown
from bench.reporting.tables import summarize
from bench.reporting.views import interval_cell, summary_view


def a_report(folder: Path) -> Report:
    """A section of every place, a figure-only part and the details heading."""
    folder.mkdir(parents=True, exist_ok=True)
    figure = folder / "figures" / "a.png"
    figure.parent.mkdir()
    Image.new("RGB", (4, 4)).save(figure)
    frame = lambda name: pd.DataFrame({"method": [f"{name} row", "x (paper)"], "value": ["1 [0, 2]", "3"]})  # noqa: E731
    sections = (
        Section("Headline", frame("head"), ("a headline note",), place=HEADLINE),
        Section("Compact", frame("compact"), place=SUMMARY),
        Section("Figures only", figures=(figure,)),
        Section("Folded", frame("folded"), ("a folded note",), place=COLLAPSED),
        DETAILS,
        Section("Full", frame("full"), ("a closing note",), place=COLLAPSED),
    )
    return Report("title", "subtitle", sections, csv_links={"t.csv": "t.csv"}, provenance=("where it came from",))


def test_markdown_and_html_render_the_same_sections_in_the_same_order(tmp_path):
    report = a_report(tmp_path)
    md, page = render_markdown(report), render_html(tmp_path, report)
    assert md.startswith("# title\n\nsubtitle\n\n## Headline\n\n| method | value |\n|---|---|\n| head row | 1 [0, 2] |")
    assert md.endswith("\n- a closing note\n") and "\n\n\n" not in md
    tables = ["head row", "compact row", "folded row", "full row"]
    assert [md.index(t) for t in tables] == sorted(md.index(t) for t in tables)
    assert [page.index(t) for t in tables] == sorted(page.index(t) for t in tables)
    assert re.findall(r"^## (.*)$", md, re.M) == ["Headline", "Compact", "Folded", "Full"]  # tables only
    assert "Figures only" not in md and "figures/a.png" not in md and "Details" not in md
    assert "<h3>Compact</h3>" in page and "<h2>Figures only</h2>" in page and "<h2>Details</h2>" in page
    assert "<h2>Headline</h2>" not in page and "<h3>Headline</h3>" not in page  # under the page title
    assert "<details><summary>Folded</summary>" in page and "<details><summary>Full</summary>" in page
    assert page.count("id='headline'") == 1 and page.index("id='headline'") < page.index("head row")
    assert page.count("<tr class='paper'>") == 1  # the paper's row is marked in the headline only
    for note in ("a headline note", "a folded note", "a closing note"):
        assert f"- {note}" in md and f">{note}</p>" in page
    assert "src='figures/a.png'" in page and "<summary>Provenance</summary>" in page and "href='t.csv'" in page


def test_a_section_place_is_checked():
    with pytest.raises(ValueError, match=r"place='aside'; expected one of"):
        Section("x", place="aside")


def test_the_one_interval_cell():
    assert interval_cell(1.23456, 1.0, 1.5) == "1.235 [1, 1.5]"
    assert interval_cell(1.23456, 1.0, 1.5, n=3, total=4) == "1.235 [1, 1.5] (n=3)"
    assert interval_cell(1.23456, n=4, total=4) == "1.235"  # every value present, no interval
    assert interval_cell(0.5, 0.25, 0.75, spec=".3f") == "0.500 [0.250, 0.750]"
    assert interval_cell(np.nan, 0.0, 1.0, n=0, total=4) == ""


def study_like(rng: np.random.Generator) -> pd.DataFrame:
    """Per-sample rows of two kinds on six images, with missing values; no status column."""
    rows = []
    for kind in ("z_kind", "a_kind"):  # not in sorted order
        for image in range(6):
            for _prompt in range(2):  # two samples per image
                rows.append({"kind": kind, "image_id": f"img{image}", "auroc": rng.uniform(), "ap": rng.uniform()})
    frame = pd.DataFrame(rows)
    frame.loc[[0, 5], "auroc"] = np.nan
    return frame


def test_one_summary_scheme_for_the_study_and_table1():
    frame = study_like(np.random.default_rng(0))
    table = summarize(frame, ["kind"], table="study", metrics=["auroc", "ap"], stats=("mean",), sort=False)
    assert list(table["kind"]) == ["z_kind", "a_kind"]  # order of appearance
    schema = ["kind", "N", "failures"]
    schema += [f"{m}_{s}" for m in ("auroc", "ap") for s in ("mean", "mean_lo", "mean_hi", "n")]
    assert list(table.columns) == schema
    first = frame[frame["kind"] == "z_kind"]
    assert table.loc[0, "N"] == len(first) and table.loc[0, "failures"] == 0
    assert table.loc[0, "auroc_n"] == first["auroc"].notna().sum() == len(first) - 2
    assert table.loc[0, "auroc_mean"] == pytest.approx(first["auroc"].mean())
    assert table.loc[0, "auroc_mean_lo"] < table.loc[0, "auroc_mean"] < table.loc[0, "auroc_mean_hi"]
    again = summarize(frame, ["kind"], table="study", metrics=["auroc", "ap"], stats=("mean",), sort=False)
    pd.testing.assert_frame_equal(table, again)  # seeded per cell
    text = summary_view(table)
    assert list(text.columns) == ["kind", "N", "failures", "auroc", "ap"]
    assert text.loc[0, "auroc"].endswith(f"(n={len(first) - 2})") and "(n=" not in text.loc[0, "ap"]


def test_nothing_in_bench_reporting_reads_the_environment():
    """The entry points read $BENCH_* and $WANDB_PROJECT and pass values in (browser.py: $CHROMIUM, a test tool)."""
    readers = {}
    for path in sorted((REPO_ROOT / "bench" / "reporting").glob("*.py")):
        names = {
            n.attr if isinstance(n, ast.Attribute) else n.id
            for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.Attribute | ast.Name)
        }
        found = names & {"environ", "getenv", "env_path"}
        if found and path.name != "browser.py":
            readers[path.name] = sorted(found)
    assert readers == {}


def test_the_entry_points_read_the_environment(monkeypatch, tmp_path):
    from bench.aggregate import options_from_environment

    for name in ("BENCH_CACHE_DIR", "BENCH_INCEPTION_WEIGHTS", "BENCH_WEIGHTS_DIR", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    plain = options_from_environment()
    assets = plain.set_level_assets
    assert (assets.cache_dir, assets.inception_weights, assets.weights_cache_dir) == (None, None, None)
    assert plain.wandb_project == "gradsam-bench"
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("BENCH_INCEPTION_WEIGHTS", str(tmp_path / "w.pth"))
    monkeypatch.setenv("BENCH_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("WANDB_PROJECT", "elsewhere")
    options = options_from_environment(set_level=False, overwrite_ref_stats=True)
    assets = options.set_level_assets
    assert (assets.cache_dir, assets.inception_weights) == (tmp_path / "cache", tmp_path / "w.pth")
    assert assets.weights_cache_dir == tmp_path / "weights" and assets.overwrite_ref_stats
    assert options.wandb_project == "elsewhere" and not options.set_level
