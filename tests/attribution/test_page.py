"""The study's page from hand-built tables: the verdict first, the figures next (the overview heatmap hatching the
cells at or below the centre prior, measured in its pixels), every table folded away in the issue's order, the
Markdown in the same order, and a printout within 100 columns."""

from __future__ import annotations

import shlex
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from bench.attribution import page
from bench.attribution.__main__ import command_text
from bench.attribution.report import write_page
from bench.attribution.verdict import StudyTables, steps_of, verdict_section
from bench.reporting.report import COLLAPSED, DETAILS, HEADLINE, PART, SUMMARY, Section
from tests.attribution.constructed import mask_table, study_table, summary_row


def test_weak_cells_are_those_at_or_below_the_centre_prior_by_brute_force():
    rng = np.random.default_rng(0)
    rows = [("gradsam", "all"), ("chance:centre", "-"), ("daam", "res8"), ("chance:uniform", "-")]
    for _ in range(50):
        grid = rng.choice([0.4, 0.6, 0.784, 0.9, np.nan], size=(len(rows), 3))
        centre = rng.choice([0.784, 0.6, np.nan], size=3)
        weak = page.weak_cells(grid, centre, rows)
        for (r, c), value in np.ndenumerate(grid):
            expected = rows[r][0] != "chance:centre" and not np.isnan(centre[c]) and value <= centre[c]
            assert weak[r, c] == expected  # equal to the prior counts as weak; NaN never does


def two_step_control(value: float = 0.8) -> pd.DataFrame:
    """One map at `value` at two scoring steps whose centre priors lie above (0.9) and below (0.5) it."""
    rows = []
    keys = {"truth": "no_manipulation", "truth_threshold": "main", "truth_source": "oracle", "label": "no_manipulation"}
    for (index, t), centre in (((5, 800), 0.9), ((18, 540), 0.5)):
        for kind, layer_set, mean in (("gradsam", "res8", value), ("chance:centre", "-", centre)):
            rows.append(
                summary_row({**keys, "kind": kind, "layer_set": layer_set, "index": index, "timestep": t}, mean)
            )
    return pd.DataFrame(rows)


def off_colour_fraction(pixels: np.ndarray, ax, column: int, row: int, base: np.ndarray) -> float:
    """The fraction of pixels of a cell's top-left quarter (away from its number) that differ from `base`."""
    height = pixels.shape[0]
    (x0, y0), (x1, y1) = ax.transData.transform([(column - 0.45, row - 0.45), (column - 0.15, row - 0.2)])
    top, bottom = sorted((int(height - y0), int(height - y1)))
    patch = pixels[top:bottom, int(min(x0, x1)) : int(max(x0, x1)), :3].astype(int)
    return float((np.abs(patch - base).sum(axis=-1) > 40).mean())


def test_the_overview_hatches_a_cell_at_or_below_the_prior_and_leaves_the_same_colour_above_it_plain():
    control = two_step_control()
    figure = page.overview_figure(control)
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())
    ax = figure.axes[0]
    rows = page.overview_rows(control)
    assert rows == [("gradsam", "res8"), ("chance:centre", "-")]
    plain = pixels[int(pixels.shape[0] - ax.transData.transform((1, 0))[1]), int(ax.transData.transform((1.3, 0))[0])]
    base = plain[:3].astype(int)  # the map's colour at 0.8, unhatched (t = 540: prior 0.5)
    assert off_colour_fraction(pixels, ax, 1, 0, base) < 0.02
    assert off_colour_fraction(pixels, ax, 0, 0, base) > 0.15  # the same colour at t = 800 (prior 0.9): hatched
    assert [t.get_text() for t in ax.get_xticklabels()] == ["t = 800", "t = 540"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["gradsam res8", "centre prior"]
    plt.close(figure)


def test_arrange_puts_the_verdict_then_every_figure_then_every_table_folded():
    verdict = Section("Verdict", pd.DataFrame({"a": [1]}), place=HEADLINE)
    figures = Section("Figures", figures=(Path("figures/a.png"),), place=SUMMARY)
    tables = [Section(f"study {i}", pd.DataFrame({"a": [i]}), place=SUMMARY) for i in range(3)]
    stages = [
        Section("stage summary", pd.DataFrame({"a": [9]}), ("its note",), place=SUMMARY),
        Section("stage figures", figures=(Path("figures/b.png"),)),
        Section("stage full", pd.DataFrame({"a": [8]}), place=COLLAPSED),
    ]
    out = page.arrange(verdict, figures, tables, stages)
    assert [s.title for s in out] == [
        "Verdict",
        "Figures",
        "stage figures",
        "Details",
        "study 0",
        "study 1",
        "study 2",
        "stage summary",
        "stage full",
    ]
    assert out[0].place == HEADLINE and out[1].place == PART and out[3] is DETAILS
    assert all(s.place == COLLAPSED for s in out[4:]) and out[7].notes == ("its note",)


def test_the_printout_is_the_verdict_within_100_columns():
    section = verdict_section(StudyTables(study_table(), mask_table()))
    paths = {"report": Path("results/attribution/report.html"), "md": Path("results/attribution/attribution.md")}
    text = page.terminal_summary(section, paths)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 100 and len(lines) < 60
    assert lines[0] == section.title and "gradsam res8 (best)" in text and "[0.959, 0.999]" in text
    unwrapped = " ".join(line.strip() for line in lines)
    assert all(note in unwrapped for note in section.notes)
    assert "report: results/attribution/report.html" in lines and "    md: results/attribution/attribution.md" in lines


def test_a_printed_command_fits_100_columns_and_is_the_same_command_to_a_shell():
    commands = [
        ["/very/long/path/to/python", "-m", "bench.run", *(f"key{i}=value_{'x' * (i % 13)}" for i in range(40))],
        ["python", "-m", "bench.run", "a b", "it's", "x=[1,2,3]", "y" * 130, "z"],
    ]
    for cmd in commands:
        text = command_text(cmd)
        assert text.startswith("+ ")
        for line in text.splitlines():  # a line is within 100 columns, or holds one word longer than that
            assert len(line) <= 100 or len(shlex.split(line.removesuffix(" \\").lstrip("+ "))) == 1, line
        assert shlex.split(text[2:].replace(" \\\n", " ")) == cmd


@pytest.fixture
def study_folder(tmp_path: Path) -> Path:
    """results/attribution with the study's tables (hand-built) and the faithfulness stage's (from its samples)."""
    from bench.attribution import faithfulness as faith
    from tests.attribution.test_faithfulness import constructed_samples

    folder = tmp_path / "results" / "attribution"
    folder.mkdir(parents=True)
    constructed_samples().to_csv(tmp_path / "faith_samples.csv", index=False)
    faith.write_faithfulness(folder, tmp_path / "faith_samples.csv")
    return folder


def test_the_page_and_markdown_open_with_the_verdict_and_fold_every_table(study_folder: Path):
    paths = write_page(study_folder, study_table(), mask_table(), ["a study note"])
    html, md = paths["report"].read_text(), paths["md"].read_text()
    order = ["id='headline'", "Which layers find the subject?", "<h2>Figures</h2>", "figures/auroc_overview.png"]
    order += ["figures/auroc_by_step.png", "figures/auroc_by_layer.png", "<h2>Faithfulness curves</h2>"]
    order += ["<h2>Details</h2>", "<summary>truth = no_manipulation", "<summary>truth = method_output"]
    order += ["<summary>AUROC under two truth thresholds", "<summary>Per layer", "<summary>Mask rules"]
    order += ["<summary>Faithfulness: does a better map", "<summary>Faithfulness curves: subject present"]
    assert [html.index(s) for s in order] == sorted(html.index(s) for s in order)
    assert html.count("<table") == 1 + html[html.index("<h2>Details</h2>") :].count("<table")  # one visible table
    assert "<h3>" not in html  # no table outside the verdict is shown unfolded
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    assert headings[0].startswith("## Verdict") and headings[1].startswith("## truth = no_manipulation")
    assert headings[2].startswith("## truth = method_output") and "Does a better map make a better image?" in md
    assert {p.name for p in paths["figures"]} == {"auroc_overview.png", "auroc_by_step.png", "auroc_by_layer.png"}
    assert all(p.is_file() for p in paths["figures"]) and paths["faithfulness_auc"].is_file()
    printed = [line for line in paths["terminal"].splitlines() if str(study_folder) not in line]  # paths stay whole
    assert max(map(len, printed)) <= 100 and "faithfulness_auc: " in paths["terminal"]


def test_a_later_stage_joins_the_page_through_one_entry(study_folder: Path, monkeypatch):
    from bench.attribution import report

    extra = [
        Section("Sanity: summary", pd.DataFrame({"a": ["1"]}), ("how to read it",), place=SUMMARY),
        Section("Sanity figures", figures=(study_folder / "figures" / "faithfulness_subject.png",)),
    ]
    monkeypatch.setattr(report, "later_stages", lambda: (lambda folder, table: extra, report.faithfulness_sections))
    html = write_page(study_folder, study_table(), mask_table(), [])["report"].read_text()
    order = ["<h2>Figures</h2>", "<h2>Sanity figures</h2>", "<h2>Faithfulness curves</h2>", "<h2>Details</h2>"]
    order += ["<summary>Mask rules", "<summary>Sanity: summary", "<summary>Faithfulness: does a better map"]
    assert [html.index(s) for s in order] == sorted(html.index(s) for s in order)


def test_steps_of_the_smoke_like_table_put_the_whole_chain_last():
    control = StudyTables(study_table()).control.sample(frac=1.0, random_state=0)
    assert [s.header for s in steps_of(control)] == ["t = 800", "t = 540", "t = 340", "whole chain"]


def test_aggregating_the_studys_rows_never_overwrites_its_page_and_links_it(study_folder: Path):
    from bench.reporting.aggregate import aggregate_task
    from bench.reporting.html import referenced_files
    from tests.reporting.test_aggregate import QUICK, profiled

    root = study_folder.parent.parent
    paths = write_page(study_folder, study_table(), mask_table(), [])
    study_table().to_csv(study_folder / "attribution.csv", index=False)
    profiled(root, task="attribution")  # the study's task folder holds rows of its own (samples.csv)
    before = paths["report"].read_bytes()
    out = aggregate_task(root / "results", "attribution", root, options=QUICK)
    assert out["report"] == study_folder / "table1.html" and paths["report"].read_bytes() == before
    html = out["report"].read_text()
    assert "<a href='report.html'>The attribution study&#x27;s page" in html
    assert html.index("<h2>Attribution</h2>") < html.index("href='report.html'") < html.index("<summary>Attribution:")
    assert all((study_folder / link).exists() for link in referenced_files(out["report"]))
    rebuilt = write_page(study_folder, study_table(), mask_table(), [])["report"].read_text()
    assert "href='table1.html'" in rebuilt  # and the study's page lists the task's page among its data files
    # a task folder without the study's page keeps report.html and shows the study's table as before
    (study_folder / "attribution.md").unlink()
    assert aggregate_task(root / "results", "attribution", root, options=QUICK)["report"].name == "report.html"
