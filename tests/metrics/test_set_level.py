"""Set-level FID-2048 and KID: against numpy/scipy, small-N guards, caches that never lie."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.linalg

from bench.metrics.features import FeatureCache
from bench.metrics.set_level import (
    FID_IN_SPAN,
    FID_TORCH_FIDELITY,
    RefStatsCache,
    RefStatsConflict,
    SetLevelAssets,
    SetLevelOptions,
    fid_and_kid,
    fid_from_statistics,
    frechet_distance,
    set_level_metrics,
    statistics,
)
from bench.records import save_png
from tests.metrics.conftest import smooth_image

GROUP = ["model", "dataset", "label", "ablation"]


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """Textbook FID in float64 on the full D x D covariances: Tr(Sa + Sb - 2 (Sa^1/2 Sb Sa^1/2)^1/2) + ||dmu||^2."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = scipy.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = np.clip(scipy.linalg.eigvalsh(root_a @ s_b @ root_a), 0, None)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.sqrt(middle).sum())


def gram_fid(a: np.ndarray, b: np.ndarray) -> float:
    """FID through N x N Gram matrices: the non-zero eigenvalues of Sa Sb are those of (A B^T)(B A^T) / (na nb)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ca, cb = a - a.mean(0), b - b.mean(0)  # [Na, D], [Nb, D]
    na, nb = len(a) - 1, len(b) - 1
    cross = ca @ cb.T  # [Na, Nb]
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(cross @ cross.T), 0, None)).sum() / np.sqrt(na * nb)
    dmu = a.mean(0) - b.mean(0)
    return float(dmu @ dmu + (ca**2).sum() / na + (cb**2).sum() / nb - 2 * tr_covmean)


def numpy_kid(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 on the full sets (Binkowski et al. 2018)."""
    d, m = a.shape[1], len(a)
    k = lambda x, y: (x @ y.T / d + 1) ** 3  # noqa: E731
    k_aa, k_bb, k_ab = k(a, a), k(b, b), k(a, b)
    off = lambda kk: (kk.sum() - np.trace(kk)) / (m * (m - 1))  # noqa: E731
    return float(off(k_aa) + off(k_bb) - 2 * k_ab.mean())


def test_fid_formula_matches_scipy_and_is_zero_on_itself():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 16)), rng.normal(0.3, 1.5, size=(30, 16))  # N_a + N_b >= D: torch-fidelity's path
    value, how = frechet_distance(a, b)
    assert how == FID_TORCH_FIDELITY and value == pytest.approx(scipy_fid(a, b), rel=1e-6)
    assert abs(frechet_distance(a, a)[0]) < 1e-8
    small_a, small_b = np.abs(rng.normal(size=(5, 64))), np.abs(rng.normal(0.2, 1, size=(4, 64)))  # N_a + N_b < D
    value, how = frechet_distance(small_a, small_b)
    assert how == FID_IN_SPAN
    assert value == pytest.approx(scipy_fid(small_a, small_b), rel=1e-6)
    assert gram_fid(small_a, small_b) == pytest.approx(scipy_fid(small_a, small_b), rel=1e-6)  # the cheap reference
    assert value == pytest.approx(fid_from_statistics(statistics(small_a), statistics(small_b)), rel=1e-6)
    assert abs(frechet_distance(small_a, small_a)[0]) < 1e-9


def test_kid_small_n_guard_and_value():
    rng = np.random.default_rng(1)
    gen, ref = rng.normal(size=(3, 8)), rng.normal(0.5, 1, size=(5, 8))
    out = fid_and_kid(gen, {**statistics(ref), "features": ref}, SetLevelOptions(kid_subset_size=1000))
    assert out["kid_subset_size"] == 3 and out["kid_N_gen"] == 3 and out["kid_N_ref"] == 5  # capped at N, not 1000
    assert math.isfinite(out["kid_mean"])
    # subset size == N for both sets: every subset is the whole set, so KID = the full-set unbiased MMD^2.
    ref3 = ref[:3]
    full = fid_and_kid(gen, {**statistics(ref3), "features": ref3}, SetLevelOptions())
    assert full["kid_mean"] == pytest.approx(numpy_kid(gen, ref3), rel=1e-9)
    assert math.isnan(full["kid_std"]) and full["kid_std_reason"].startswith("n/a")  # not a round-off "std"
    assert math.isfinite(out["kid_std"]) and "kid_std_reason" not in out  # subsets of the larger set differ
    one = fid_and_kid(gen[:1], {**statistics(ref), "features": ref}, SetLevelOptions())
    assert math.isnan(one["fid2048"]) and math.isnan(one["kid_mean"])
    assert "N >= 2" in one["fid2048_nan_reason"] and "< 2" in one["kid_nan_reason"]


def write_samples(root, specs) -> pd.DataFrame:
    """Rows like samples.csv: (label, category, image_id, generated image, reference image)."""
    rows = []
    for i, (label, category, image_id, gen, ref) in enumerate(specs):
        gen_path, ref_path = f"outputs/t/{label}/{i}.png", f"outputs/t/references/{image_id}.png"
        save_png(root / gen_path, gen)
        save_png(root / ref_path, ref)
        key = {"model": "tiny", "dataset": "synthetic_places", "label": label, "ablation": "none", "status": "ok"}
        rows.append(
            {**key, "category": category, "image_id": image_id, "image_path": gen_path, "reference_path": ref_path}
        )
    return pd.DataFrame(rows)


def test_set_level_end_to_end_against_numpy_and_cache(tmp_path, converted_weights, inception):
    """Mixed sizes, FID-2048 vs a numpy computation on the same features, self-FID ~ 0, a cached second pass."""
    refs = {f"r{k}": smooth_image(32, 100 + k) for k in range(2)}
    gens = [smooth_image(32, 200), smooth_image(48, 201)]  # 48 px: mixed sizes in one set
    specs = [("m", "natural", f"r{k}", gens[k], refs[f"r{k}"]) for k in range(2)]
    specs += [("self", "natural", f"r{k}", refs[f"r{k}"], refs[f"r{k}"]) for k in range(2)]  # generated == reference
    samples = write_samples(tmp_path, specs)
    assets = SetLevelAssets(cache_dir=tmp_path / "cache", inception_weights=str(converted_weights))
    frame, provenance = set_level_metrics(samples, GROUP, tmp_path, assets)
    pooled = frame[frame["scope"] == "all"].set_index("label")
    assert set(frame["scope"]) == {"all", "category=natural"}
    assert "torch-fidelity" in provenance and "NOT the paper's FID" in provenance

    feats = FeatureCache(inception, inception.extractor_id, tmp_path / "cache")
    gen_f, ref_f = feats.get(gens, "2048"), feats.get(list(refs.values()), "2048")
    assert pooled.loc["m", "fid2048"] == pytest.approx(gram_fid(gen_f, ref_f), rel=1e-6)
    assert pooled.loc["m", "fid2048_N_gen"] == 2 and pooled.loc["m", "fid2048_N_ref"] == 2
    assert pooled.loc["m", "fid2048"] > 1.0
    assert abs(pooled.loc["self", "fid2048"]) < 1e-6 * pooled.loc["m", "fid2048"]
    assert pooled.loc["m", "kid_subset_size"] == 2 and np.isfinite(pooled.loc["m", "kid_mean"])

    extracted = inception.extracted
    again, _ = set_level_metrics(samples, GROUP, tmp_path, assets)  # a second metric pass on the same images
    assert inception.extracted == extracted
    pd.testing.assert_frame_equal(again, frame)


def test_small_or_unreadable_sets_give_nan_with_reasons_and_extract_nothing(tmp_path, converted_weights, inception):
    ref = smooth_image(32, 1)
    specs = [("a", "natural", "r0", ref, ref), ("b", "natural", "r0", ref, ref), ("b", "natural", "r1", ref, ref)]
    samples = write_samples(tmp_path, specs)
    samples.loc[1, "image_path"] = "outputs/t/missing.png"
    extracted = inception.extracted
    frame, _ = set_level_metrics(samples, GROUP, tmp_path, SetLevelAssets(inception_weights=str(converted_weights)))
    pooled = frame[frame["scope"] == "all"].set_index("label")
    assert "cannot read" in pooled.loc["b", "fid2048_nan_reason"]
    assert "N >= 2" in pooled.loc["a", "fid2048_nan_reason"] and "< 2" in pooled.loc["a", "kid_nan_reason"]
    assert pooled.loc["a", "fid2048_N_gen"] == 1  # N printed beside the NaN
    assert inception.extracted == extracted


def test_reference_statistics_are_never_silently_overwritten(tmp_path):
    cache = RefStatsCache(tmp_path)
    rng = np.random.default_rng(2)
    first, second = rng.normal(size=(4, 8)), rng.normal(size=(4, 8))
    stored = cache.get("places365-val-all-n4", "fingerprint-a", first, {})
    np.testing.assert_allclose(cache.get("places365-val-all-n4", "fingerprint-a", second, {})["mu"], stored["mu"])
    with pytest.raises(RefStatsConflict, match="Delete that file|--overwrite-ref-stats"):
        cache.get("places365-val-all-n4", "fingerprint-b", second, {})
    replaced = RefStatsCache(tmp_path, overwrite=True).get("places365-val-all-n4", "fingerprint-b", second, {})
    np.testing.assert_allclose(replaced["mu"], second.mean(0))


def test_changed_references_under_the_same_key_are_refused_in_the_table(tmp_path, converted_weights):
    a, b, c = smooth_image(16, 1), smooth_image(16, 2), smooth_image(16, 3)
    first = write_samples(tmp_path, [("m", "natural", "r0", a, a), ("m", "natural", "r1", b, b)])
    assets = SetLevelAssets(inception_weights=str(converted_weights))
    frame, _ = set_level_metrics(first, GROUP, tmp_path, assets)
    assert np.isfinite(frame["fid2048"]).all()
    (tmp_path / "outputs").rename(tmp_path / "old")
    changed = write_samples(tmp_path, [("m", "natural", "r0", a, a), ("m", "natural", "r1", c, c)])  # r1 changed
    frame, note = set_level_metrics(changed, GROUP, tmp_path, assets)
    assert frame["fid2048"].isna().all() and frame["fid2048_nan_reason"].str.contains("--overwrite-ref-stats").all()
    assert "WARNING" in note
    overwrite = SetLevelAssets(inception_weights=str(converted_weights), overwrite_ref_stats=True)
    frame, _ = set_level_metrics(changed, GROUP, tmp_path, overwrite)
    assert np.isfinite(frame["fid2048"]).all()
