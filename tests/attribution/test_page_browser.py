"""The study's page in a real headless Chromium (Debian's `chromium` through Playwright) at 1366x900: no horizontal
page scroll, the verdict table and the first figure on the first screen with no other table above that figure, every
image loading, no console errors; and the README's screenshot of it (bench.readme --only study).

Skips only where chromium is truly absent outside CI; with CI=true (.ci/run installs it) it fails instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.attribution.page import page_problems
from bench.attribution.report import write_page
from bench.reporting.browser import PageCheck, find_chromium
from tests.attribution.constructed import mask_table, study_table
from tests.attribution.test_page import study_folder  # noqa: F401  (the fixture: the study's and faithfulness tables)
from tests.reporting.test_report_browser import check


def test_the_studys_page_reads_at_a_glance_in_chromium(study_folder: Path, tmp_path: Path):  # noqa: F811
    paths = write_page(study_folder, study_table(), mask_table(), ["a study note"])
    result = check(paths["report"], screenshot=tmp_path / "shot.png")
    assert result.problems() == [] and page_problems(result) == []
    figures = {p.name for p in (study_folder / "figures").glob("*.png")}
    assert result.images == len(figures) == 6  # the study's three, the faithfulness stage's three: every one loads
    assert result.headline_bottom < result.first_image_top < result.viewport_height == 900
    assert result.tables_above_first_image == 0 and result.sections[:2] == ["Figures", "Faithfulness curves"]
    assert np.asarray(Image.open(tmp_path / "shot.png")).shape[:2] == (900, 1366)


def test_the_check_catches_a_table_before_the_figure_and_a_verdict_below_the_first_screen(tmp_path: Path):
    """The same measurements on a page that breaks each rule (so the test above can fail)."""
    page = tmp_path / "bad.html"
    Image.new("RGB", (40, 40)).save(tmp_path / "fig.png")
    rows = "".join(f"<tr><td>{i}</td></tr>" for i in range(60))
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'></head><body>"
        f"<table id='headline'>{rows}</table><table>{rows}</table><img src='fig.png'></body></html>"
    )
    problems = page_problems(check(page))
    assert any(p.startswith("the verdict table ends below the first screen") for p in problems)
    assert any(p.startswith("the first figure starts below the first screen") for p in problems)
    assert "1 table(s) besides the verdict come before the first figure" in problems
    nothing = PageCheck(1366, 1366, 10.0, False, 0, [], 0, [], viewport_height=900, headline_bottom=10.0)
    assert page_problems(nothing) == ["the page has no figure"]


def test_the_readme_block_and_screenshot_of_the_studys_page(study_folder: Path, tmp_path: Path, capsys):  # noqa: F811
    from bench import readme

    if find_chromium() is None and os.environ.get("CI") != "true":
        pytest.skip("no chromium on PATH (CI installs it)")
    shot, page = tmp_path / "study.png", tmp_path / "README.md"
    page.write_text(f"# x\n\n{readme.STUDY_BEGIN}\nold numbers, typed by hand\n{readme.STUDY_END}\n\nafter\n")
    args = ["--only", "study", "--results-dir", str(study_folder.parent), "--readme", str(page)]
    args += ["--study-screenshot", str(shot)]
    with pytest.raises(SystemExit, match="verdict.md does not exist: run `make attribution PROFILE=offline`"):
        readme.main(args)
    paths = write_page(study_folder, study_table(), mask_table(), [])
    readme.main(args)
    block = paths["verdict"].read_text().strip()
    assert block.startswith("| map | N | t = 800 |") and "- Which layers find the subject? gradsam res8" in block
    assert page.read_text() == f"# x\n\n{readme.STUDY_BEGIN}\n{block}\n{readme.STUDY_END}\n\nafter\n"
    assert Image.open(shot).size == (1366, 900) and shot.stat().st_size < 200_000
    assert f"{shot}: {study_folder / 'report.html'} at 1366x900, 6 images" in capsys.readouterr().out
    page.write_text("no markers\n")
    with pytest.raises(SystemExit, match="no block <!-- attribution:begin"):
        readme.main(args)
