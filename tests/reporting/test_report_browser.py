"""report.html in a real headless Chromium (Debian's `chromium` through Playwright) at 1366x900: the headline
table is fully visible without horizontal page scroll, every image loads, the console has no errors.

Skips only where chromium is truly absent outside CI; with CI=true (.ci/run installs it) it fails instead.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from bench.reporting.aggregate import aggregate_task
from bench.reporting.browser import BrowserMissing, check_page, find_chromium
from tests.reporting.test_aggregate import QUICK, profiled


def check(page, **kwargs):
    try:
        return check_page(page, **kwargs)
    except BrowserMissing as exc:
        if os.environ.get("CI") == "true" or find_chromium() is not None:
            pytest.fail(f"chromium is required here (CI, or installed without playwright): {exc}")
        pytest.skip(str(exc))


def test_report_reads_at_a_glance_in_chromium(tmp_path):
    profiled(tmp_path)
    folder = tmp_path / "results" / "table1"
    paths = aggregate_task(tmp_path / "results", "table1", tmp_path, options=QUICK)
    result = check(paths["report"], screenshot=tmp_path / "shot.png")
    assert result.problems() == []
    assert result.images == len(list((folder / "figures").glob("*.png"))) > 0
    assert result.scrolling_boxes >= 1  # the full wide table scrolls inside its box, the page does not
    assert result.sections[:2] == ["Method comparison", "Samples"]
    shot = np.asarray(Image.open(tmp_path / "shot.png"))
    assert shot.shape[:2] == (900, 1366)


def test_the_check_catches_a_wide_page_a_broken_image_and_a_console_error(tmp_path):
    """The same measurements on a page that breaks each rule (so the test above can fail)."""
    page = tmp_path / "bad.html"
    cells = "".join(f"<td style='white-space: nowrap'>{'wide cell ' * 8}</td>" for _ in range(12))
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'></head><body>"
        f"<table id='headline'><tr>{cells}</tr></table><img src='figures/missing.png'>"
        "<script>console.error('boom')</script></body></html>"
    )
    problems = check(page).problems()
    assert any(p.startswith("the page scrolls horizontally") for p in problems)
    assert any(p.startswith("the headline table is cut off") for p in problems)
    assert any("missing.png" in p and p.startswith("image does not load") for p in problems)
    assert any("boom" in p for p in problems)


def test_readme_block_and_screenshot_come_from_the_task(tmp_path):
    from bench import readme

    profiled(tmp_path, task="demo")
    aggregate_task(tmp_path / "results", "demo", tmp_path, options=QUICK)
    page = tmp_path / "README.md"
    page.write_text(f"# x\n\n{readme.BEGIN}\nold, typed by hand\n{readme.END}\n\nafter\n")
    shot = tmp_path / "shot.png"
    args = ["--results-dir", str(tmp_path / "results"), "--readme", str(page), "--screenshot", str(shot)]
    if find_chromium() is None and os.environ.get("CI") != "true":
        pytest.skip("no chromium on PATH (CI installs it)")
    readme.main(args)
    text = page.read_text()
    headline = (tmp_path / "results" / "demo" / "table1_headline.md").read_text().strip()
    assert f"{readme.BEGIN}\n{headline}\n{readme.END}" in text and "typed by hand" not in text
    assert text.endswith("\n\nafter\n")
    assert Image.open(shot).size == (1366, 900) and shot.stat().st_size < 200_000
    page.write_text("no markers\n")
    with pytest.raises(SystemExit, match="no block"):
        readme.main(args)
