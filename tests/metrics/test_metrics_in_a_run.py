"""A real offline run with the default metrics: every row and the table carry every metric and its provenance."""

from __future__ import annotations

from importlib.metadata import version

import pandas as pd

from bench.aggregate import options_from_environment
from bench.metrics import BG_PSNR, BG_SSIM, CLIP_SCORE, FID64_PAIR, PIXEL_MAD
from bench.reporting.aggregate import aggregate_task
from bench.task import run_benchmark
from tests.conftest import FAST, compose_cfg


def test_default_metrics_in_rows_and_table(tmp_path, converted_weights, inception, monkeypatch):
    monkeypatch.setenv("BENCH_INCEPTION_WEIGHTS", str(converted_weights))  # the session's weights, no new conversion
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    cfg = compose_cfg([*FAST, "model.image_size=32", "device=cpu", "metrics=default"], tmp_root=tmp_path)
    assert cfg.metrics.inception_weights == str(converted_weights)
    summary = run_benchmark(cfg)

    samples = pd.read_csv(summary["samples_csv"])
    assert len(samples) == 2 and (samples["status"] == "ok").all()
    for metric in (PIXEL_MAD, FID64_PAIR, CLIP_SCORE, BG_PSNR, BG_SSIM):
        assert samples[metric].notna().all(), metric
    for provenance in ("fid64_pair_provenance", "clip_score_provenance", "background_provenance"):
        assert samples[provenance].str.len().gt(20).all()
    assert samples["clip_model"].str.contains("NOT real CLIP").all()  # model=tiny: auto -> tiny_random
    assert samples["fid64_pair_provenance"].str.contains("color order bgr").all()
    # Provenance says what the code did (#15): the library version and weights fingerprint, the activation.
    fingerprint = inception.fingerprint[:12]
    assert samples["fid64_pair_provenance"].str.contains(f"torch-fidelity {version('torch-fidelity')}").all()
    assert samples["fid64_pair_provenance"].str.contains(f"fp {fingerprint}").all()
    assert samples["clip_score_provenance"].str.contains("activation GELU").all()  # tiny_random's own config
    assert (samples["bg_mask_source"] == "none (whole image)").all()  # SDEdit has no subject mask

    extracted = inception.extracted
    # the entry point reads $BENCH_INCEPTION_WEIGHTS and $BENCH_CACHE_DIR, as `python -m bench.aggregate` does
    paths = aggregate_task(tmp_path / "results", cfg.task_name, tmp_path, options_from_environment())
    table = pd.read_csv(paths["csv"])
    assert {"fid2048", "fid2048_N_gen", "fid2048_N_ref", "kid_mean", "kid_subset_size"} <= set(table.columns)
    assert table.loc[0, "fid2048_N_gen"] == 2 and table.loc[0, "fid2048_N_ref"] == 2
    assert pd.notna(table.loc[0, "fid2048"]) and pd.notna(table.loc[0, "kid_mean"])
    assert inception.extracted == extracted + 4  # two generated and two reference images, 2048-d, once each
    by_scope = pd.read_csv(paths["csv"].with_name("table1_set_level.csv"))
    assert set(by_scope["scope"]) == {"all", "category=natural"}
    markdown = paths["md"].read_text()
    for text in ("fid64_pair", "clip_score", "NOT real CLIP", "set-level", "fid2048"):
        assert text in markdown
