"""Tables from a hand-made samples.csv: N, mean, median, intervals, paired deltas, byte-stable files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.metrics import PIXEL_MAD
from bench.records import write_csv
from bench.reporting.aggregate import aggregate_task
from bench.reporting.html import referenced_files
from bench.reporting.tables import cluster_bootstrap, paired_deltas, summarize


def hand_made(tmp_path, task="table1", ablations=("none",), values=None) -> pd.DataFrame:
    """Two labels x 6 images x 2 prompts, with images on disk so figures can be drawn."""
    rng = np.random.default_rng(0)
    rows = []
    for label in ("alpha", "beta"):
        for ablation in ablations:
            for i in range(6):
                for prompt in ("Deer roaming", "Bear roaming"):
                    key = f"{label}/{ablation}/img{i}/{prompt.split()[0]}"
                    path = tmp_path / "outputs" / f"{key}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
                    value = values(label, ablation, i, prompt) if values else float(rng.normal(10, 2))
                    rows.append(
                        {
                            "task": task,
                            "model": "tiny",
                            "dataset": "synthetic_places",
                            "label": label,
                            "ablation": ablation,
                            "image_id": f"forest/{i:05d}",
                            "prompt": prompt,
                            "seed": 1,
                            "method": label,
                            "category": "natural",
                            "subcategory": "forest",
                            "subject": prompt.split()[0],
                            "status": "ok",
                            "failure": "",
                            "image_path": f"outputs/{key}.png",
                            "reference_path": f"outputs/{key}.png",
                            PIXEL_MAD: value,
                            f"{PIXEL_MAD}_provenance": "hand-made",
                        }
                    )
    rows[0].update(status="failed", failure="non-finite latent", **{PIXEL_MAD: np.nan})
    frame = pd.DataFrame(rows)
    write_csv(frame, tmp_path / "results" / task / "samples.csv")
    return frame


def test_summary_counts_mean_median_against_numpy(tmp_path):
    samples = hand_made(tmp_path)
    table = summarize(samples).set_index("label")
    for label in ("alpha", "beta"):
        ok = samples[(samples["label"] == label) & (samples["status"] == "ok")]
        assert table.loc[label, "N"] == len(ok)
        assert table.loc[label, f"{PIXEL_MAD}_mean"] == pytest.approx(np.mean(ok[PIXEL_MAD]))
        assert table.loc[label, f"{PIXEL_MAD}_median"] == pytest.approx(np.median(ok[PIXEL_MAD]))
        lo, hi = table.loc[label, f"{PIXEL_MAD}_mean_lo"], table.loc[label, f"{PIXEL_MAD}_mean_hi"]
        assert lo < table.loc[label, f"{PIXEL_MAD}_mean"] < hi
    assert table.loc["alpha", "failures"] == 1 and table.loc["beta", "failures"] == 0


def test_interval_is_seeded_and_matches_normal_theory():
    rng = np.random.default_rng(1)
    values = rng.normal(0.0, 1.0, 400)
    clusters = np.arange(400)  # one sample per cluster: the plain bootstrap of the mean
    a = cluster_bootstrap(values, clusters, np.mean, np.random.default_rng(7), n_boot=2000)
    b = cluster_bootstrap(values, clusters, np.mean, np.random.default_rng(7), n_boot=2000)
    assert a == b
    half_width = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    assert (a[1] - a[0]) / 2 == pytest.approx(half_width, rel=0.15)
    assert a[0] < values.mean() < a[1]
    const = cluster_bootstrap(np.full(10, 3.0), np.arange(10), np.median, np.random.default_rng(0))
    assert const == (3.0, 3.0)


def test_clusters_move_together():
    # Two images, each with 50 identical values: resampling images can only give 0, 0.5 or 1 as means.
    values = np.r_[np.zeros(50), np.ones(50)]
    clusters = np.r_[np.zeros(50), np.ones(50)]
    lo, hi = cluster_bootstrap(values, clusters, np.mean, np.random.default_rng(0), n_boot=500)
    assert (lo, hi) == (0.0, 1.0)


def test_paired_deltas_of_a_constant_shift(tmp_path):
    samples = hand_made(
        tmp_path, ablations=("none", "no_blur"), values=lambda label, abl, i, p: i + (1.5 if abl == "no_blur" else 0.0)
    )
    deltas = paired_deltas(samples).set_index("label")
    assert deltas.loc["alpha", "N_paired"] == 11 and deltas.loc["beta", "N_paired"] == 12
    for label in ("alpha", "beta"):
        assert deltas.loc[label, f"{PIXEL_MAD}_delta"] == pytest.approx(1.5)
        assert deltas.loc[label, f"{PIXEL_MAD}_delta_lo"] == pytest.approx(1.5)


@pytest.mark.parametrize("task", ["table1", "ablations"])
def test_aggregate_writes_every_file_byte_identically(tmp_path, task):
    hand_made(tmp_path, task=task, ablations=("none", "no_blur") if task == "ablations" else ("none",))
    paths = aggregate_task(tmp_path / "results", task, tmp_path)
    folder = tmp_path / "results" / task
    name = "ablations" if task == "ablations" else "table1"
    expected = {f"{name}.csv", f"{name}.md", f"{name}_by_category.csv", f"{name}_by_prompt.csv", "report.html"}
    expected |= {f"{name}_headline.md"} | ({"ablation_deltas.csv"} if task == "ablations" else set())
    assert expected <= {p.name for p in folder.iterdir()}
    assert not (folder / "paper_comparison.csv").exists()  # model=tiny: nothing to compare with the paper
    assert paths["figures"] and all(p.exists() for p in paths["figures"])
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    aggregate_task(tmp_path / "results", task, tmp_path)
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert before == after
    links = referenced_files(paths["report"])
    assert links and all((folder / link).is_file() for link in links)
    assert not any(link.startswith("/") for link in links)
