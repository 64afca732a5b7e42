"""The faithfulness stage: curves of the paper's operator over the kept fraction, their areas and intervals against an
independent numpy/scipy computation, the shared ends, the verdict, and the stage end to end on the tiny model."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.integrate import trapezoid

from bench.attribution import faithfulness as faith
from bench.attribution.report import CONTROL_LABEL
from bench.config import REPO_ROOT
from tests.attribution.conftest import MapsRun
from tests.warm_cli import run_python_module

GRID = (0.0, 0.1, 0.25, 0.5, 1.0)
MAPS = [("gradsam", "last"), ("attention_only", "res8"), ("noise_diff", "-"), ("centre_prior", "-"), ("uniform", "-")]


def row(kind: str, layers: str, k: float, image: int, prompt: int, subject: float, psnr: float) -> dict:
    """One samples.csv row as bench.run writes it for the faithfulness task."""
    tag = "shared" if k in (0.0, 1.0) else (kind if layers == "-" else f"{kind}_{layers}")
    label = f"faith_{tag}_k{k!r}"
    key = f"scene{image}/00000/a_red_ball_{prompt}/s51828"
    return {
        "label": label,
        "image_id": f"scene{image}/00000",
        "prompt": f"a red ball {prompt}",
        "seed": 51828,
        "sample_key": key,
        "status": "ok",
        "image_path": f"outputs/attribution_faithfulness/toy/toy_world/{label}+none/images/{key}.png",
        "method.mask.rule": "top_fraction",
        "method.score.kind": kind,
        "method.score.layers": layers if layers != "-" else "last",
        "method.mask.keep_fraction": k,
        "subject_ok_oracle": subject,
        "true_bg_psnr": psnr,
    }


def constructed_samples(seed: int = 0, images: int = 8, prompts: int = 2) -> pd.DataFrame:
    """Random curves (each map its own subject rate and PSNR level; the prompts of a scene share its difficulty, so
    resampling scenes and resampling samples differ), the ends run once by kind uniform, and one failed point
    (gradsam last, k = 0.25, first sample)."""
    rng = np.random.default_rng(seed)
    rows = []
    for image in range(images):
        hard, level = rng.uniform(0.3, 1.0), rng.normal(18, 3)  # the scene's own subject rate and PSNR
        for prompt in range(prompts):
            for k in (0.0, 1.0):
                rows.append(row("uniform", "-", k, image, prompt, float(rng.random() < k), rng.normal(level - 4 * k)))
            for m, (kind, layers) in enumerate(MAPS):
                for k in GRID[1:-1]:
                    present = float(rng.random() < hard * min(1.0, k * (4 - m / 2)))
                    psnr = rng.normal(level - 4 * k + 1 - m / 3, 1.0)
                    rows.append(row(kind, layers, k, image, prompt, present, psnr))
    samples = pd.DataFrame(rows)
    failed = (samples["label"] == "faith_gradsam_last_k0.25") & (samples["image_id"] == "scene0/00000")
    failed &= samples["prompt"] == "a red ball 0"
    samples.loc[failed, ["status", "subject_ok_oracle", "true_bg_psnr"]] = ["failed", np.nan, np.nan]
    return samples


def independent_curves(samples: pd.DataFrame) -> dict:
    """(kind, layer set, image, prompt) -> (subject [k], psnr [k]) from the rows alone, the ends under every map."""
    ends, curves = {}, {}
    for r in samples.to_dict("records"):
        ok = r["status"] == "ok"
        point = (r["subject_ok_oracle"] if ok else np.nan, r["true_bg_psnr"] if ok else np.nan)
        if r["method.mask.keep_fraction"] in (0.0, 1.0):
            ends[(r["image_id"], r["prompt"], r["method.mask.keep_fraction"])] = point
            continue
        layers = r["method.score.layers"] if r["method.score.kind"] in ("gradsam", "attention_only", "daam") else "-"
        key = (r["method.score.kind"], layers, r["image_id"], r["prompt"])
        curves.setdefault(key, {})[r["method.mask.keep_fraction"]] = point
    out = {}
    for (kind, layers, image, prompt), points in curves.items():
        points |= {k: ends[(image, prompt, k)] for k in (0.0, 1.0)}
        out[(kind, layers, image, prompt)] = tuple(np.array([points[k][i] for k in GRID]) for i in (0, 1))
    return out


def independent_interval(values: np.ndarray, images: np.ndarray, draws: int = 20000) -> tuple[float, float]:
    """Percentile bootstrap 95% of the mean, resampling whole images: each draw's multinomial image counts weight
    the images' sums and sizes (numpy, vectorised, its own seed and many draws)."""
    names, codes = np.unique(images, return_inverse=True)
    sums, sizes = np.bincount(codes, weights=values), np.bincount(codes)
    counts = np.random.default_rng(12345).multinomial(len(names), np.full(len(names), 1 / len(names)), size=draws)
    means = (counts @ sums) / (counts @ sizes)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def tables(samples: pd.DataFrame):
    points = faith.faithfulness_points(samples)
    curves = faith.sample_curves(points)
    return (points, curves, *faith.faithfulness_tables(points, curves))


@functools.cache
def constructed_tables(seed: int = 0):
    """The tables of `constructed_samples(seed)`, built once per seed (each build bootstraps ~100 cells)."""
    return tables(constructed_samples(seed))


def test_areas_and_intervals_match_an_independent_numpy_computation():
    samples = constructed_samples()
    _, curves, _, auc = constructed_tables()
    truth = independent_curves(samples)
    for kind, layers in MAPS:
        mine = curves[(curves["kind"] == kind) & (curves["layer_set"] == layers)]
        centre = curves[curves["kind"] == "centre_prior"].set_index(["image_id", "prompt"])
        found = {"auc_subject": [], "auc_bg_psnr": [], "auc_subject_vs_centre": [], "image": []}
        for _, r in mine.iterrows():
            subject, psnr = truth[(kind, layers, r["image_id"], r["prompt"])]
            expected = trapezoid(subject, GRID), trapezoid(psnr, GRID)
            np.testing.assert_allclose([r["auc_subject"], r["auc_bg_psnr"]], expected, rtol=1e-12)
            c_subject, _ = truth[("centre_prior", "-", r["image_id"], r["prompt"])]
            delta = expected[0] - trapezoid(c_subject, GRID)
            np.testing.assert_allclose(r["auc_subject_vs_centre"], delta, rtol=1e-12, atol=1e-12)
            assert centre.loc[(r["image_id"], r["prompt"]), "auc_subject"] == trapezoid(c_subject, GRID)
            if np.isfinite(expected[0]):
                for name, value in zip(found, (*expected, delta, r["image_id"]), strict=True):
                    found[name].append(value)
        summary = auc[(auc["kind"] == kind) & (auc["layer_set"] == layers)].iloc[0]
        assert summary["N"] == 16 and summary["auc_subject_n"] == len(found["image"])
        assert summary["auc_subject_mean"] == pytest.approx(np.mean(found["auc_subject"]), rel=1e-12)
        for metric in ("auc_subject", "auc_bg_psnr", "auc_subject_vs_centre"):
            lo, hi = independent_interval(np.array(found[metric]), np.array(found["image"]))
            # 1000 resamples vs 20000: Monte Carlo error ~ 0.02 x the width; resampling samples instead of scenes
            # moves the true-background interval's ends by ~0.15 x the width here
            tolerance = 0.1 * (hi - lo) + 1e-12
            assert abs(summary[f"{metric}_mean_lo"] - lo) <= tolerance, (kind, metric)
            assert abs(summary[f"{metric}_mean_hi"] - hi) <= tolerance, (kind, metric)


def test_a_failed_point_leaves_that_samples_areas_missing_with_its_reason():
    _, curves, point_table, auc = constructed_tables()
    bad = curves[curves["auc_nan_reason"] != ""]
    assert (
        len(bad) == 1
        and bad.iloc[0]["kind"] == "gradsam"
        and bad.iloc[0]["auc_nan_reason"] == "no finite point at k = 0.25"
    )
    assert np.isnan(bad.iloc[0]["auc_subject"]) and np.isnan(bad.iloc[0]["auc_bg_psnr"])
    gradsam = auc[auc["kind"] == "gradsam"].iloc[0]
    assert gradsam["N"] == 16 and gradsam["auc_subject_n"] == 15  # counted, not averaged as a 0
    at = point_table[(point_table["kind"] == "gradsam") & (point_table["keep_fraction"] == 0.25)].iloc[0]
    assert at["N"] == 15 and at["failures"] == 1


def test_areas_do_not_depend_on_row_order_and_follow_a_shift_of_the_psnr():
    samples = constructed_samples()
    _, _, points, auc = constructed_tables()
    # shuffled rows and a PSNR 3 dB higher everywhere
    moved_samples = samples.sample(frac=1.0, random_state=7).assign(true_bg_psnr=lambda f: f["true_bg_psnr"] + 3.0)
    _, _, moved_points, moved = tables(moved_samples)
    # summarize seeds every interval by its cell and the row's values so far, its own mean included, so the intervals
    # from auc_bg_psnr on are drawn anew: their means are compared; the kept-fraction intervals are seeded by the map
    unmoved = ["kind", "layer_set", "N", "failures", "auc_subject_vs_centre_mean", "auc_bg_psnr_vs_centre_mean"]
    unmoved += [c for c in auc.columns if c.startswith(("auc_subject_mean", "auc_subject_n", "k_subject"))]
    pd.testing.assert_frame_equal(moved[unmoved], auc[unmoved], check_exact=False, rtol=1e-12, atol=1e-12)
    keys = [c for c in points.columns if not c.startswith(faith.BACKGROUND)]
    pd.testing.assert_frame_equal(moved_points[keys], points[keys], check_exact=False, rtol=1e-12)
    for column in ("auc_bg_psnr_mean", "bg_psnr_at_k_subject_mean", "bg_psnr_at_k_subject_mean_lo"):
        np.testing.assert_allclose(moved[column], auc[column] + 3.0, rtol=1e-12)


def test_the_ends_are_run_once_and_shared_by_every_map():
    points, _, point_table, _ = constructed_tables()
    for k in (0.0, 1.0):
        at = points[points["keep_fraction"] == k]
        assert at["shared"].all() and set(at["label"]) == {f"faith_shared_k{k!r}"}
        paths = at.groupby(["kind", "layer_set"])["image_path"].apply(tuple)
        assert len(paths) == len(MAPS) and paths.nunique() == 1  # every map: the same images
        assert point_table[point_table["keep_fraction"] == k][f"{faith.SUBJECT}_mean"].nunique() == 1
    inner = points[~points["keep_fraction"].isin([0.0, 1.0])]
    assert not inner["shared"].any() and inner.groupby(["kind", "layer_set"])["label"].nunique().eq(3).all()
    assert list(dict.fromkeys(zip(points["kind"], points["layer_set"], strict=True))) == [
        ("attention_only", "res8"),
        ("gradsam", "last"),
        ("noise_diff", "-"),
        ("centre_prior", "-"),
        ("uniform", "-"),
    ]  # the maps in name order, then the chance maps


def test_the_kept_fraction_that_keeps_the_subject_matches_a_dense_search():
    assert faith.crossing(np.array([0.0, 0.2, 0.6, 0.8, 0.8]), np.array(GRID)) == pytest.approx(0.25 + 0.6 * 0.25)
    assert faith.crossing(np.array([0.9, 0.9, 1.0, 1.0, 1.0]), np.array(GRID)) == 0.0
    assert np.isnan(faith.crossing(np.zeros(5), np.array(GRID)))  # no subject at k = 1: nothing to keep
    samples = constructed_samples()
    _, _, _, auc = constructed_tables()
    truth = independent_curves(samples)
    dense = np.linspace(0.0, 1.0, 1_000_001)

    def kept(kind: str, layers: str, samples_of: set) -> tuple[float, float]:
        """The first k of the dense piecewise-linear mean curve at 90% of its k = 1 value, and the PSNR there."""
        curves = [v for key, v in truth.items() if key[:2] == (kind, layers) and key[2:] in samples_of]
        subject, psnr = (np.mean([c[i] for c in curves], axis=0) for i in (0, 1))
        k = dense[np.argmax(np.interp(dense, GRID, subject) >= 0.9 * subject[-1] - 1e-12)]
        return k, np.interp(k, GRID, psnr)

    failed = {("scene0/00000", "a red ball 0")}  # gradsam's failed point: left out of its curves and their pairing
    for kind, layers in MAPS:
        both = {key[2:] for key in truth if key[:2] == (kind, layers)} - (failed if kind == "gradsam" else set())
        (k, psnr), (k_centre, psnr_centre) = kept(kind, layers, both), kept("centre_prior", "-", both)
        summary = auc[(auc["kind"] == kind) & (auc["layer_set"] == layers)].iloc[0]
        assert summary["k_subject_n"] == len(both)
        assert summary["k_subject_mean"] == pytest.approx(k, abs=2e-6)
        assert summary["bg_psnr_at_k_subject_mean"] == pytest.approx(psnr, abs=1e-4)
        assert summary["k_subject_vs_centre_mean"] == pytest.approx(k - k_centre, abs=4e-6)
        assert summary["bg_psnr_at_k_subject_vs_centre_mean"] == pytest.approx(psnr - psnr_centre, abs=2e-4)
        for name in faith.KEPT_STATS:
            assert summary[f"{name}_mean_lo"] <= summary[f"{name}_mean"] <= summary[f"{name}_mean_hi"]


def deterministic_samples(map_present_from: float, centre_present_from: float) -> pd.DataFrame:
    """gradsam last keeps every subject from k = map_present_from, the centre prior from centre_present_from; the
    PSNR is the same for both (ends: no subject at k = 0, every subject at k = 1)."""
    rows = []
    for image in range(6):
        for k in (0.0, 1.0):
            rows.append(row("uniform", "-", k, image, 0, k, 20 - 5 * k + image))
        for kind, start in (("gradsam", map_present_from), ("centre_prior", centre_present_from), ("uniform", 0.5)):
            layers = "last" if kind == "gradsam" else "-"
            rows += [row(kind, layers, k, image, 0, float(k >= start), 20 - 5 * k + image) for k in GRID[1:-1]]
    return pd.DataFrame(rows)


def study_table(auroc: dict) -> pd.DataFrame:
    """The study's attribution table as far as the stage reads it: the control's AUROC per map and step."""
    kinds = {"gradsam": ("gradsam", "last"), "centre_prior": ("chance:centre", "-"), "uniform": ("chance:uniform", "-")}
    kinds["daam"] = ("daam", "all")
    rows = []
    for kind, value in auroc.items():
        for index, t in ((5, 800), (18, 540)):
            name, layers = kinds[kind]
            rows.append({"truth": "no_manipulation", "truth_threshold": "main", "label": CONTROL_LABEL, "kind": name})
            rows[-1] |= {"layer_set": layers, "index": index, "timestep": t, "auroc_mean": value}
    return pd.DataFrame(rows)


def test_the_verdict_is_generated_from_the_tables(tmp_path: Path):
    study = study_table({"gradsam": 0.9, "centre_prior": 0.78, "uniform": 0.5})
    for start, centre, expected in ((0.1, 0.5, "Holds on this run"), (0.25, 0.25, "Not shown on this run")):
        samples_csv = tmp_path / f"{start}" / "samples.csv"
        samples_csv.parent.mkdir()
        deterministic_samples(start, centre).to_csv(samples_csv, index=False)
        folder = tmp_path / f"{start}" / "attribution"
        paths = faith.write_faithfulness(folder, samples_csv)
        assert all(paths[key].is_file() for key in faith.FILES)
        assert {p.name for p in (folder / "figures").iterdir()} == set(faith.FIGURES)
        summary, figures, points = faith.faithfulness_sections(folder, study)
        assert summary.notes[0].startswith(expected) and "gradsam last" in summary.notes[0]
        assert "by the study's AUROC (0.900" in summary.notes[0]
        assert summary.frame["study AUROC (t = 800 / 540)"].tolist() == [
            "0.900 / 0.900",
            "0.780 / 0.780",
            "0.500 / 0.500",
        ]
        assert len(figures.figures) == 3 and points.place == "collapsed"
        assert any(n.startswith("Across the 3 maps") and "Spearman rho" in n for n in summary.notes)
        assert faith.AUC_TITLE in paths["md"].read_text()
    no_subject = deterministic_samples(0.1, 0.5).assign(subject_ok_oracle=0.0)
    no_subject.to_csv(tmp_path / "none.csv", index=False)
    faith.write_faithfulness(tmp_path / "none", tmp_path / "none.csv")
    assert faith.faithfulness_sections(tmp_path / "none")[0].notes[0].startswith("Cannot be judged")
    assert faith.faithfulness_sections(tmp_path / "nothing") == []  # the stage has not run: no sections


def test_the_best_localising_map_is_ranked_on_the_scoring_steps_alone():
    """DAAM's whole-chain map (an index only DAAM has, here near perfect) is not the map the operator keeps: it must
    not raise DAAM's mean AUROC over the maps scored at the scoring steps alone."""
    study = study_table({"gradsam": 0.9, "daam": 0.88, "centre_prior": 0.78, "uniform": 0.5})
    whole_chain = {"truth": "no_manipulation", "truth_threshold": "main", "label": CONTROL_LABEL, "index": 45}
    extra = [
        whole_chain | {"kind": k, "layer_set": s, "timestep": 0, "auroc_mean": v}
        for k, s, v in (("daam", "all", 0.999), ("chance:centre", "-", 0.78), ("chance:uniform", "-", 0.5))
    ]
    study = pd.concat([study, pd.DataFrame(extra)], ignore_index=True)
    assert faith.study_auroc(study, "daam", "all")["auroc_mean"].tolist() == [0.88, 0.88]
    assert faith.study_auroc(study, "centre_prior", "-")["timestep"].tolist() == [800, 540]
    maps = pd.DataFrame({"kind": ["daam", "gradsam"], "layer_set": ["all", "last"], "auc_subject_mean": [0.9, 0.8]})
    best, how = faith.best_localising(maps, study)
    assert (best["kind"], best["layer_set"]) == ("gradsam", "last") and "(0.900, mean over steps)" in how
    only_daam = study[study["kind"] != "gradsam"]  # no other map scored: every index counts
    assert faith.study_auroc(only_daam, "daam", "all")["auroc_mean"].tolist() == [0.88, 0.88, 0.999]


def test_jobs_run_the_ends_once_and_give_every_map_and_k_its_own_label():
    plan = faith.PROFILES["offline"]
    jobs = faith.job_commands(plan, Path("/root"), ["dataset.subcategories=[forest]"], shards=2)
    sweeps = {what: next(a for a in cmd if a.startswith("method.mask.keep_fraction=")) for what, cmd in jobs}
    assert list(sweeps.values())[0] == "method.mask.keep_fraction=0.0,1.0"
    interior = [k for k in plan.grid if 0 < k < 1]
    assert plan.grid[0] == 0.0 and plan.grid[-1] == 1.0 and len(interior) >= 2
    inner = "method.mask.keep_fraction=" + ",".join(map(repr, interior))
    assert all(s == inner for s in list(sweeps.values())[1:])
    labels = set()
    for _, cmd in jobs:
        assert cmd[1:4] == ["-m", "bench.run", "-m"] and cmd[-1] == "dataset.subcategories=[forest]"
        assert {"method.mask.rule=top_fraction", "cpu_threads=1", f"task_name={faith.TASK}"} <= set(cmd)
        values = dict(a.split("=", 1) for a in cmd[4:] if "=" in a and not a.startswith("~"))
        for kind in values["method.score.kind"].split(","):
            for k in values["method.mask.keep_fraction"].split(","):
                resolved = {"method.score.kind": kind, "method.score.layers": values.get("method.score.layers", "last")}
                label = values["method.label"].replace("${method.mask.keep_fraction}", k)
                for key, value in resolved.items():
                    label = label.replace("${" + key + "}", value)
                labels.add(label)
    assert len(labels) == 2 + len(plan.maps) * len(interior)  # the two shared ends, every (map, interior k) once
    assert {"faith_shared_k0.0", "faith_gradsam_last_k0.1", "faith_noise_diff_k0.5"} <= labels


def test_bad_maps_and_grids_stop_with_one_line_naming_the_value():
    assert faith.parse_map("gradsam:res8") == faith.FaithMap("gradsam", "res8")
    assert faith.parse_map("centre_prior") == faith.FaithMap("centre_prior")
    for text, message in (
        ("gradsm:last", "unknown score kind 'gradsm'"),
        ("gradsam", "gradsam needs a layer set"),
        ("uniform:last", "uniform has no layers"),
    ):
        with pytest.raises(SystemExit, match=message):
            faith.parse_map(text)
    assert faith.parse_grid("0,0.1,1") == (0.0, 0.1, 1.0)
    for text in ("0.1,0.5,1", "0,0.5", "0,0.5,0.5,1", "0,x,1"):
        with pytest.raises(SystemExit, match=f"--faith-grid '{text}'"):
            faith.parse_grid(text)
    assert faith.CONTROL_LABEL == CONTROL_LABEL


def read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.slow  # a copy of the session's smoke maps run, the stage's three multiruns, then the page (--report-only)
def test_the_stage_runs_end_to_end_on_the_tiny_model_and_joins_the_studys_page(smoke_maps: MapsRun):
    root = smoke_maps.root  # the maps stage ran once for the session (two samples: forest and ocean)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    args = ["--profile", "smoke", "--shards", "1", "--root-dir", str(root)]
    folder = root / "results" / "attribution"
    for stage in (["--stage", "faithfulness"], ["--stage", "all", "--report-only"]):  # the stage, then the page
        proc = run_python_module("bench.attribution", [*args, *stage], root, env, 1500)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        if stage[1] == "faithfulness":  # alone: its own tables and faithfulness.md; the study's page is the maps'
            assert faith.AUC_TITLE in (folder / faith.FILES["md"]).read_text()
            assert faith.AUC_TITLE not in (folder / "attribution.md").read_text()
    for name in faith.FILES.values():
        assert (folder / name).is_file(), name
    assert set(faith.FIGURES) <= {p.name for p in (folder / "figures").iterdir()}
    samples = pd.read_csv(root / "results" / faith.TASK / "samples.csv")
    assert set(samples["status"]) == {"ok"}
    shared = {"faith_shared_k0.0", "faith_shared_k1.0"}
    inner = {"faith_attention_only_last_k0.5", "faith_centre_prior_k0.5", "faith_uniform_k0.5"}
    assert set(samples["label"]) == shared | inner  # the ends ran once, not once per map
    points = pd.read_csv(folder / "samples_faithfulness.csv")
    for k in (0.0, 1.0):
        assert points[points["keep_fraction"] == k]["image_path"].nunique() == 1  # the same image for every map
    # k = 1 is the study's no_manipulation image, bit for bit (the same sample, another task and job); the study
    # holds two samples (forest, ocean), the stage's smoke plan one (forest)
    study = pd.read_csv(root / "results" / "attribution" / "samples.csv")
    full = points[points["keep_fraction"] == 1.0]
    assert full["sample_key"].nunique() == 1 and full["sample_key"].iloc[0] in set(study["sample_key"])
    study = study[(study["label"] == CONTROL_LABEL) & (study["sample_key"] == full["sample_key"].iloc[0])]
    control, full = study["image_path"].iloc[0], full["image_path"].iloc[0]
    assert np.array_equal(read(root / full), read(root / control))
    table = pd.read_csv(folder / "faithfulness_auc.csv")
    assert list(table["kind"]) == ["attention_only", "centre_prior", "uniform"] and set(table["N"]) == {1}  # forest
    md = (folder / "attribution.md").read_text()
    assert faith.AUC_TITLE in md and faith.POINTS_TITLE in md  # the study's page gains the stage's sections
    html = (folder / "report.html").read_text()
    assert faith.AUC_TITLE in html and "figures/faithfulness_subject.png" in html
