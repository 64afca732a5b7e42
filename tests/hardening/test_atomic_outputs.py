"""Attack suite #23, class 6: files written in place.

A kill during bench.aggregate (or the attribution study) leaves every figure, table, Markdown file and
report.html either whole as before or whole as new, never cut short under its final name: each is
rendered in memory and written through a temporary file and an atomic rename.

A kill is simulated where it hurts most: inside matplotlib's own write of the PNG bytes, after half of
them, and inside the rename of the report and the tables.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure

from bench.records import png_problem
from bench.reporting.aggregate import aggregate_task
from tests.reporting.test_aggregate import QUICK, hand_made


class Killed(BaseException):
    """A SIGKILL stand-in: no handler catches it (a BaseException, like KeyboardInterrupt)."""


def outputs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def aggregated(tmp_path) -> Path:
    hand_made(tmp_path)
    aggregate_task(tmp_path / "results", "table1", tmp_path, options=QUICK)
    return tmp_path / "results" / "table1"


def half_written_savefig(monkeypatch) -> None:
    """Every savefig writes half of its PNG bytes into its target, then the process 'dies'."""
    real = Figure.savefig

    def dying(self, target, *args, **kwargs):
        import io

        buffer = io.BytesIO()
        real(self, buffer, *args, **{**kwargs, "format": "png"})
        data = buffer.getvalue()
        if hasattr(target, "write"):
            target.write(data[: len(data) // 2])
        else:
            Path(target).write_bytes(data[: len(data) // 2])
        raise Killed

    monkeypatch.setattr(Figure, "savefig", dying)


def test_a_kill_inside_a_figure_write_leaves_every_figure_whole(aggregated, tmp_path, monkeypatch):
    before = outputs(aggregated)
    figures = sorted(aggregated.glob("figures/*.png"))
    assert figures and all(png_problem(p) == "" for p in figures)
    half_written_savefig(monkeypatch)
    with pytest.raises(Killed):
        aggregate_task(tmp_path / "results", "table1", tmp_path, options=QUICK)
    after = outputs(aggregated)
    assert all(png_problem(p) == "" for p in aggregated.glob("figures/*.png"))
    assert after == before  # nothing cut short, and the temporary file of the killed write is gone


def test_a_kill_during_the_reports_rename_leaves_the_old_report(aggregated, tmp_path, monkeypatch):
    before = outputs(aggregated)
    real = os.replace

    def dying(src, dst):
        if str(dst).endswith(("report.html", ".md")):
            raise Killed
        return real(src, dst)

    monkeypatch.setattr(os, "replace", dying)
    with pytest.raises(Killed):
        aggregate_task(tmp_path / "results", "table1", tmp_path, options=QUICK)
    assert outputs(aggregated) == before and not list(aggregated.rglob("*.tmp"))


def test_a_first_aggregation_killed_in_a_figure_leaves_no_figure_under_its_name(tmp_path, monkeypatch):
    hand_made(tmp_path)
    half_written_savefig(monkeypatch)
    with pytest.raises(Killed):
        aggregate_task(tmp_path / "results", "table1", tmp_path, options=QUICK)
    assert not list((tmp_path / "results/table1").rglob("*.png"))  # not half a PNG: none
    assert not list((tmp_path / "results/table1").rglob("*.tmp"))


def test_the_attribution_studys_figures_are_written_atomically(tmp_path, monkeypatch):
    from bench.attribution.report import save

    fig, ax = plt.subplots()
    ax.set_title("AUROC by layer ($ in a label stays text)")
    path = save(fig, tmp_path / "figures" / "attribution_auroc_by_layer.png")
    whole = path.read_bytes()
    assert png_problem(path) == ""
    half_written_savefig(monkeypatch)
    fig, _ = plt.subplots()
    with pytest.raises(Killed):
        save(fig, path)
    assert path.read_bytes() == whole and not list(path.parent.glob("*.tmp"))


def test_the_readme_screenshot_is_rewritten_atomically(tmp_path, monkeypatch):
    from bench import readme

    page = tmp_path / "README.md"
    shot = tmp_path / "shot.png"
    fig, _ = plt.subplots()
    fig.savefig(shot)
    plt.close(fig)
    whole = shot.read_bytes()
    real = os.replace

    def dying(src, dst):
        if Path(dst) in (shot, page):
            raise Killed
        return real(src, dst)

    monkeypatch.setattr(os, "replace", dying)
    with pytest.raises(Killed):
        readme.small_png(shot)
    assert shot.read_bytes() == whole and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_an_atomic_write_gets_the_mode_a_plain_open_would(tmp_path, umask):
    """mkstemp creates its file 0o600; the renamed result must carry the mode `open()` gives under the user's umask,
    or a group sharing a results folder could not read the tables."""
    from bench.records import atomic_write_text

    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "atomic.csv", "a,b\n")
        (tmp_path / "plain.csv").write_text("a,b\n")
    finally:
        os.umask(previous)
    mode = (tmp_path / "atomic.csv").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain.csv").stat().st_mode & 0o777 == 0o666 & ~umask
