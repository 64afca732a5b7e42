"""Tables from a hand-made samples.csv: N, mean, median, intervals, paired deltas, byte-stable files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.metrics import PIXEL_MAD, PSNR_CAP_DB
from bench.records import write_csv
from bench.reporting.aggregate import AggregateOptions, aggregate_task
from bench.reporting.figures import mask_order
from bench.reporting.html import referenced_files
from bench.reporting.tables import cluster_bootstrap, deltas_against, paired_deltas, summarize
from tests.conftest import printout_width

QUICK = AggregateOptions(set_level=False)  # no FID-2048/KID: the tables these tests read


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


def loop_bootstrap(values, clusters, stat, rng, n_boot=1000) -> tuple[float, float]:
    """cluster_bootstrap written as one resample at a time (the definition its matrix path must equal)."""
    codes, inverse = np.unique(clusters, return_inverse=True)
    members = [np.flatnonzero(inverse == c) for c in range(len(codes))]
    stats = np.empty(n_boot)
    for b in range(n_boot):
        stats[b] = stat(values[np.concatenate([members[c] for c in rng.integers(0, len(codes), len(codes))])])
    return float(np.quantile(stats, 0.025)), float(np.quantile(stats, 0.975))


def test_the_bootstrap_of_equal_clusters_is_the_one_resample_at_a_time_loop_bit_for_bit():
    meta = np.random.default_rng(5)
    for case in range(24):  # clusters of one size (the matrix path), then of mixed sizes (the loop), shuffled
        n_codes, size = int(meta.integers(2, 12)), int(meta.integers(1, 5))
        sizes = np.full(n_codes, size) if case < 16 else meta.integers(1, 5, n_codes)
        clusters = meta.permutation(np.repeat([f"scene{i}/00000" for i in range(n_codes)], sizes))
        values = [meta.normal(size=len(clusters)) * 1e3, np.round(meta.random(len(clusters)), 1)][case % 2]
        for stat in (np.mean, np.median, lambda v: float(np.max(v))):  # the last: any statistic, by the loop
            seed = int(meta.integers(0, 2**32))
            ours, theirs = np.random.default_rng(seed), np.random.default_rng(seed)
            expected = loop_bootstrap(values, clusters, stat, theirs)
            assert cluster_bootstrap(values, clusters, stat, ours) == expected, (case, sizes, stat)
            assert ours.bit_generator.state == theirs.bit_generator.state  # the same draws, no more


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


def profiled(tmp_path, model="toy", dataset="toy_world", clip="toy (trained here)", task="table1") -> pd.DataFrame:
    """hand_made rows as Table 1 rows (gradsam and a long-named baseline) with the headline and harness metrics;
    bg_psnr is NaN on some samples (a mask covering the image) and inf on one (an identical background)."""
    frame = hand_made(tmp_path, task=task)
    frame["label"] = frame["label"].map({"alpha": "gradsam", "beta": "a_baseline_with_a_long_name_0.6"})
    frame["model"], frame["dataset"], frame["clip_model"] = model, dataset, clip
    rng = np.random.default_rng(3)
    frame["fid64_pair"] = rng.uniform(0.5, 3.0, len(frame))
    frame["clip_score"] = rng.uniform(20, 35, len(frame))
    frame["mask_iou"] = np.where(frame["label"] == "gradsam", rng.uniform(0, 1, len(frame)), np.nan)
    frame["mask_iou_random"] = np.where(frame["label"] == "gradsam", 0.1, np.nan)
    frame["bg_psnr"] = np.where(np.arange(len(frame)) % 4 == 1, np.nan, rng.uniform(15, 30, len(frame)))
    frame.loc[2, "bg_psnr"] = np.inf
    write_csv(frame, tmp_path / "results" / task / "samples.csv")
    return frame


def test_n_per_metric_marker_and_psnr_cap(tmp_path):
    samples = profiled(tmp_path)
    paths = aggregate_task(tmp_path / "results", "table1", tmp_path, options=QUICK)
    table = pd.read_csv(paths["csv"]).set_index("label")
    ok = samples[(samples["label"] == "gradsam") & (samples["status"] == "ok")]
    expected = ok["bg_psnr"].replace(np.inf, PSNR_CAP_DB).dropna()
    assert table.loc["gradsam", "bg_psnr_n"] == len(expected) < table.loc["gradsam", "N"]
    assert table.loc["gradsam", "bg_psnr_mean"] == pytest.approx(expected.mean(), rel=1e-5)  # inf = 100 dB
    assert table.loc["gradsam", "fid64_pair_n"] == table.loc["gradsam", "N"]
    md = paths["md"].read_text()
    assert f"(n={len(expected)})" in md and "| inf" not in md and " inf [" not in md
    report = paths["report"].read_text()
    assert "class='few'" in report and f">n={len(expected)}<" in report


def test_headline_has_the_paper_row_only_where_comparable(tmp_path):
    toy = tmp_path / "toy"
    profiled(toy)
    paths = aggregate_task(toy / "results", "table1", toy, options=QUICK)
    headline = paths["headline_md"].read_text()
    assert headline.splitlines()[0] == "| method | N | failures | FID64 mean | FID64 median | CLIP mean | CLIP median |"
    assert "(paper)" not in headline and "row is absent" in headline and "model=toy" in headline
    assert not (paths["md"].parent / "paper_comparison.csv").exists()

    real = tmp_path / "real"
    profiled(real, model="sd15", dataset="places365", clip="open_clip ViT-L-14/openai")
    paths = aggregate_task(real / "results", "table1", real, options=QUICK)
    rows = [r for r in paths["headline_md"].read_text().splitlines() if "(paper)" in r]
    assert rows == ["| Abs-Grad-SAM (paper) | ? | ? | 6.89 | 5.32 | 27.98 | 28.24 |"]
    assert len(pd.read_csv(paths["md"].parent / "paper_comparison.csv")) == 4 * 2  # 2 rows x 4 numbers
    assert "<tr class='paper'>" in paths["report"].read_text()


def test_terminal_summary_fits_100_columns_and_names_the_files(tmp_path):
    profiled(tmp_path)
    paths = aggregate_task(tmp_path / "results", "table1", tmp_path, options=QUICK)
    text = paths["terminal"]
    assert printout_width(text, tmp_path) <= 100
    assert "FID64 mean" in text and "mask IoU" in text and "IoU random" in text
    for key in ("csv", "md", "report"):
        assert str(paths[key]) in text
    assert "pixel_mad" not in text  # the wide table stays in its files


def test_paired_deltas_against_the_papers_method(tmp_path):
    shift = {"gradsam": 0.0, "a_baseline_with_a_long_name_0.6": 2.5}
    samples = profiled(tmp_path)
    samples[PIXEL_MAD] = samples["image_id"].str[-1].astype(float) + samples["label"].map(shift)
    deltas = deltas_against(samples).set_index("label")
    assert list(deltas.index) == ["a_baseline_with_a_long_name_0.6"]
    assert deltas.iloc[0]["N_paired"] == 11  # gradsam's failed sample has no pair
    assert deltas.iloc[0][f"{PIXEL_MAD}_delta"] == pytest.approx(2.5)
    assert deltas.iloc[0]["mask_iou_delta_n"] == 0  # the baseline has no mask


def test_masks_in_timestep_order():
    names = ["subject_mask.png", "mask_i28.png", "mask_i5.png", "mask_i18.png"]
    assert [p.name for p in sorted(map(Path, names), key=mask_order)] == [
        "mask_i5.png",
        "mask_i18.png",
        "mask_i28.png",
        "subject_mask.png",
    ]


def test_report_order_and_the_attribution_section(tmp_path):
    profiled(tmp_path)
    folder = tmp_path / "results" / "table1"
    report = aggregate_task(tmp_path / "results", "table1", tmp_path, options=QUICK)["report"].read_text()
    assert "<h2>Attribution</h2>" not in report
    study = {"kind": ["gradsam"], "N": [4], "failures": [0], "auroc_mean": [0.71], "auroc_mean_lo": [0.6]}
    study |= {"auroc_mean_hi": [0.8], "auroc_n": [3]}  # the study's summary: the Table 1 scheme
    pd.DataFrame(study).to_csv(folder / "attribution.csv", index=False)
    (folder / "figures").mkdir(exist_ok=True)
    Image.new("RGB", (8, 8)).save(folder / "figures" / "attribution_auroc_by_layer.png")
    paths = aggregate_task(tmp_path / "results", "table1", tmp_path, options=QUICK)
    report = paths["report"].read_text()
    order = ["id='headline'", "<h2>Method comparison</h2>", "<summary>Paired change", "<h2>Attribution</h2>"]
    order += ["<h2>Samples</h2>", "<summary>Full table", "<summary>Provenance"]
    assert [report.index(s) for s in order] == sorted(report.index(s) for s in order)
    assert "figures/attribution_auroc_by_layer.png" in report and ">0.71 <span class='ci'>[0.6, 0.8]</span>" in report
    md = paths["md"].read_text()  # the same section in the Markdown, between the deltas and the full table
    assert md.index("## Paired change") < md.index("## Attribution") < md.index("## Full table")
    assert "| gradsam | 4 | 0 | 0.71 [0.6, 0.8] (n=3) |" in md and "attribution_auroc_by_layer.png" not in md
    assert "http" not in report.replace("http-equiv", "")  # no CDN, no remote font: one static file


def test_aggregate_command_prints_the_tables_and_fails_in_one_line(tmp_path, capsys):
    from bench.aggregate import main

    profiled(tmp_path)
    main(["--results-dir", str(tmp_path / "results"), "--task", "table1", "--no-set-level"])
    out = capsys.readouterr().out
    assert "FID64 mean" in out and "report: " in out and printout_width(out, tmp_path) <= 100
    with pytest.raises(SystemExit, match=r"^error: .*nope/samples.csv does not exist") as exc:
        main(["--results-dir", str(tmp_path / "results"), "--task", "nope"])
    assert "\n" not in str(exc.value)


def test_further_chance_lines_and_the_attribution_headline_join_the_compact_table(tmp_path):
    samples = profiled(tmp_path)
    gradsam = samples["label"] == "gradsam"
    samples["mask_iou_centre"] = np.where(gradsam, 0.3, np.nan)  # e.g. a centre prior, written by another study
    samples["attr_auroc"] = np.where(gradsam, 0.8, np.nan)
    samples.loc[3, "attr_auroc"] = np.nan
    write_csv(samples, tmp_path / "results" / "table1" / "samples.csv")
    paths = aggregate_task(tmp_path / "results", "table1", tmp_path, options=QUICK)
    table = pd.read_csv(paths["csv"]).set_index("label")
    assert table.loc["gradsam", "mask_iou_centre_mean"] == pytest.approx(0.3)
    assert table.loc["gradsam", "attr_auroc_n"] == table.loc["gradsam", "N"] - 1
    assert "mask_iou_provenance_mean" not in table.columns
    harness = paths["md"].read_text().split("## Harness metrics")[1].split("##")[0]
    header = next(line for line in harness.splitlines() if line.startswith("| method"))
    assert header.index("mask IoU") < header.index("IoU centre") and "IoU random" in header and "attr AUROC" in header
    assert f"0.8 [0.8, 0.8] (n={int(table.loc['gradsam', 'N']) - 1})" in harness
    assert printout_width(paths["terminal"], tmp_path) <= 100
