"""The attribution study's faithfulness stage: does a better map make a better image? (docs/attribution.md)

The paper's own operator at a chosen kept area (`method.mask.rule=top_fraction`, method/masks.py): at the paper's
injection steps the sampler keeps the top k of latent cells of a map and replaces the rest with the reference's
noised latent. Sweeping k over a grid from 0 to 1 links a map to the image without a threshold:

    k = 0   every cell replaced: the map does not matter
    k = 1   nothing replaced: the no_manipulation image, bit for bit (tests/method/test_study_operators.py)
    0 < k < 1   the map decides which cells keep the chain's own content

Jobs (`run_jobs`): `python -m bench.run -m` multiruns (real subprocesses, sharded, resumable) into
task_name=attribution_faithfulness: one for the two ends, run once (kind uniform) and shared by every map
(`faith_shared_k0.0`, `faith_shared_k1.0`), and one per layer set over its kinds and the grid's interior, each
(kind, layer set, k) under its own label (`faith_<kind>_<layers>_k<k>`, `faith_<kind>_k<k>` for a layer-free kind).

Per sample and k: subject present (toy world: the oracle's `subject_ok_oracle`; elsewhere 1 - `truth_empty` of the
recorded truth) and true-background PSNR (`true_bg_psnr`; elsewhere `truth_bg_psnr`), capped at 100 dB.
Per map: the area under each curve over k (trapezoid on the grid per sample, then the mean with a bootstrap
interval over reference images), its paired difference from the centre prior, and the kept fraction at which the
mean curve reaches 90% of the full-latent subject rate, with the true-background PSNR there.
Outputs in results/attribution/: faithfulness.csv, faithfulness_auc.csv, samples_faithfulness.csv,
samples_faithfulness_auc.csv, faithfulness.md, figures/faithfulness_{subject,background,tradeoff}.png.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.config import REPO_ROOT  # noqa: E402
from bench.metrics import METRIC_CAPS, SUBJECT_OK_ORACLE, TRUE_BG_PSNR  # noqa: E402
from bench.records import atomic_write_text, read_csv, write_csv  # noqa: E402
from bench.reporting.figures import save_figure  # noqa: E402
from bench.reporting.report import COLLAPSED, SUMMARY, Report, Section, render_markdown  # noqa: E402
from bench.reporting.tables import cell_rng, cluster_bootstrap, metric_values, summarize  # noqa: E402
from bench.reporting.views import mean_interval  # noqa: E402
from method.config import LAYERED_KINDS, SCORE_KINDS  # noqa: E402

TASK = "attribution_faithfulness"
GRID = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)
ENDS = (0.0, 1.0)  # no map changes these points: run once, shared by every map
SUBJECT, BACKGROUND = "subject_present", "true_bg_psnr"
CENTRE, UNIFORM = "centre_prior", "uniform"
CHANCE_KINDS = (CENTRE, UNIFORM)
SUBJECT_LEVEL = 0.9  # "keeps the subject": the mean curve reaches 90% of its full-latent (k = 1) rate
CONTROL_LABEL = "no_manipulation"  # the study's control row (= bench.attribution.report.CONTROL_LABEL; tested)
IDENTITY = ["image_id", "prompt", "seed"]
MAP_KEYS = ["kind", "layer_set"]
AUC_METRICS = ["auc_subject", "auc_bg_psnr", "auc_subject_vs_centre", "auc_bg_psnr_vs_centre"]
NUMBER = ".3f"
FILES = {
    "points": "faithfulness.csv",
    "auc": "faithfulness_auc.csv",
    "samples": "samples_faithfulness.csv",
    "sample_auc": "samples_faithfulness_auc.csv",
    "md": "faithfulness.md",
}
FIGURES = ("faithfulness_subject.png", "faithfulness_background.png", "faithfulness_tradeoff.png")
# Every job: the paper's sampler keeping exactly the top k of cells (blur and dilation must be off with it).
TOP_FRACTION = (
    "method=gradsam",
    "method.mask.rule=top_fraction",
    "method.mask.blur.enabled=false",
    "method.mask.dilation.enabled=false",
)
# The toy world's truth metrics only (subject_ok, true_bg_psnr, mask_iou): FID64, CLIP and bg_psnr are not read here.
TOY_METRICS = (
    "metrics=toy",
    "~metrics.per_sample.fid64_pair",
    "~metrics.per_sample.clip",
    "~metrics.per_sample.background",
)


@dataclass(frozen=True)
class FaithMap:
    """A map the operator ranks cells by: a score kind and its layer set ("-" for a layer-free kind)."""

    kind: str
    layers: str = "-"

    @property
    def name(self) -> str:
        return self.kind if self.layers == "-" else f"{self.kind} {self.layers}"


def sweep(fractions) -> str:
    return "method.mask.keep_fraction=" + ",".join(repr(float(k)) for k in fractions)


def label_of(tag: str) -> str:
    """One label per (kind, layer set, k), resolved by Hydra per job, so that run folders never collide."""
    return f"method.label=faith_{tag}_k${{method.mask.keep_fraction}}"


def map_jobs(maps: tuple[FaithMap, ...], fractions: list[float]) -> list[tuple[str, list[str]]]:
    """(what, overrides) of one multirun per layer set (the layer-free kinds together) over kinds x `fractions`:
    fewer processes, the same jobs as one per (map, k)."""
    jobs = []
    for layers in dict.fromkeys(m.layers for m in maps):
        kinds = ",".join(m.kind for m in maps if m.layers == layers)
        if layers == "-":
            overrides = [f"method.score.kind={kinds}", label_of("${method.score.kind}")]
        else:
            tag = "${method.score.kind}_${method.score.layers}"
            overrides = [f"method.score.kind={kinds}", f"method.score.layers={layers}", label_of(tag)]
        jobs.append((f"maps {kinds} ({layers})", [*overrides, sweep(fractions)]))
    return jobs


def parse_map(text: str) -> FaithMap:
    """'kind:layers' (gradsam:res8) or a layer-free 'kind' (noise_diff, centre_prior, uniform)."""
    kind, _, layers = text.partition(":")
    if kind not in SCORE_KINDS:
        raise SystemExit(f"--faith-maps: {text!r}: unknown score kind {kind!r}; expected one of {list(SCORE_KINDS)}.")
    if kind in LAYERED_KINDS and not layers:
        raise SystemExit(f"--faith-maps: {text!r}: {kind} needs a layer set, e.g. {kind}:last or {kind}:res8.")
    if kind not in LAYERED_KINDS and layers:
        raise SystemExit(f"--faith-maps: {text!r}: {kind} has no layers; write it as {kind!r}.")
    return FaithMap(kind, layers or "-")


def parse_grid(text: str) -> tuple[float, ...]:
    """'0,0.1,0.5,1': strictly increasing kept fractions from 0 to 1 (the shared ends included)."""
    try:
        grid = tuple(float(k) for k in text.split(","))
    except ValueError:
        raise SystemExit(f"--faith-grid {text!r}: expected comma-separated numbers, e.g. 0,0.1,0.25,0.5,1.") from None
    if grid[0] != 0.0 or grid[-1] != 1.0 or any(b <= a for a, b in zip(grid, grid[1:], strict=False)):
        raise SystemExit(
            f"--faith-grid {text!r}: expected strictly increasing kept fractions from 0 to 1, e.g. 0,0.25,1."
        )
    return grid


@dataclass(frozen=True)
class Plan:
    """What one profile runs: its Hydra overrides, the grid of kept fractions and the maps."""

    overrides: tuple[str, ...]
    grid: tuple[float, ...]
    maps: tuple[FaithMap, ...]


# The study's maps: the paper's, the best-localising set, DAAM as published, DiffEdit's, and the two chance maps.
# Offline the best-localising set is attention_only res8 (the study: as good as Grad-SAM res8 there), because the
# exact per-layer Grad-SAM costs ~15x a sample (76 s vs 5 s measured here); add it with --faith-maps gradsam:res8,...
OFFLINE_MAPS = (
    FaithMap("gradsam", "last"),
    FaithMap("attention_only", "res8"),
    FaithMap("daam", "all"),
    FaithMap("noise_diff"),
    FaithMap(CENTRE),
    FaithMap(UNIFORM),
)
PROFILES = {
    # 10 subcategories x 2 scenes x 1 prompt = 20 toy-world samples (20 reference images; the study's first prompts)
    "offline": Plan(
        (
            "model=toy",
            "dataset=toy_world",
            *TOY_METRICS,
            "dataset.images_per_subcategory=2",
            "dataset.prompts_per_subcategory=1",
        ),
        GRID,
        OFFLINE_MAPS,
    ),
    # the smallest end-to-end run (tests): the study's smoke profile, one interior point between the shared ends
    "smoke": Plan(
        (
            "model=tiny",
            "model.image_size=32",
            "dataset=toy_world",
            *TOY_METRICS,
            "dataset.subcategories=[forest]",
            "dataset.images_per_subcategory=1",
            "dataset.prompts_per_subcategory=1",
            "sampling.num_inference_steps=10",
            "method.injection_indices=[2,4,6]",
        ),
        (0.0, 0.5, 1.0),
        (FaithMap("attention_only", "last"), FaithMap(CENTRE), FaithMap(UNIFORM)),
    ),
    # SD1.5: the study's samples; subject presence and background from the recorded truth (places365: clipseg).
    # The best-localising stand-in is attention at the 16x16 layers (OVAM's best block on SD1.5): exact Grad-SAM
    # over a layer set at 64x64 latents costs one backward pass per 8 of 16384 latent rows, each score.
    "gpu": Plan(
        (
            "model=sd15",
            "dataset=places365",
            "dataset.images_per_subcategory=1",
            "dataset.prompts_per_subcategory=4",
            "truth_record.enabled=true",
        ),
        GRID,
        (FaithMap("gradsam", "last"), FaithMap("attention_only", "res16"), *OFFLINE_MAPS[2:]),
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The stage's options on `python -m bench.attribution`."""
    parser.add_argument(
        "--faith-maps",
        type=lambda text: tuple(parse_map(m) for m in text.split(",")),
        help="faithfulness maps, comma-separated kind[:layers] (default: the profile's, e.g. gradsam:last,...,uniform)",
    )
    parser.add_argument("--faith-grid", type=parse_grid, help="kept fractions from 0 to 1 (default: the profile's)")


def plan_of(args: argparse.Namespace) -> Plan:
    """The profile's plan with the command line's maps and grid, if given."""
    plan = PROFILES[args.profile]
    maps, grid = getattr(args, "faith_maps", None), getattr(args, "faith_grid", None)
    return Plan(plan.overrides, grid or plan.grid, maps or plan.maps)


def job_commands(plan: Plan, root: Path, extra: list[str], shards: int) -> list[tuple[str, list[str]]]:
    """(what, command) of each multirun: the shared ends first, then one per layer set over the grid's interior."""
    base = [sys.executable, "-m", "bench.run", "-m", f"task_name={TASK}", f"paths.root_dir={root}", *TOP_FRACTION]
    base += [*plan.overrides, *(["cpu_threads=1"] if shards > 1 else [])]
    interior = [k for k in plan.grid if k not in ENDS]
    jobs = [
        ("k = 0 and k = 1, shared by every map", [*base, "method.score.kind=uniform", sweep(ENDS), label_of("shared")])
    ]
    jobs += [(what, [*base, *overrides]) for what, overrides in map_jobs(plan.maps, interior)] if interior else []
    return [(what, [*cmd, *extra]) for what, cmd in jobs]


def run_jobs(plan: Plan, extra: list[str], root: Path, shards: int) -> None:
    """Each multirun as `shards` processes of one CPU thread; each resumes (done samples are skipped)."""
    for what, base in job_commands(plan, root, extra, shards):
        procs = []
        for index in range(shards):
            cmd = [*base, f"shard.index={index}", f"shard.count={shards}"]
            print("+", " ".join(cmd), flush=True)
            procs.append(subprocess.Popen(cmd, cwd=REPO_ROOT, env=os.environ.copy()))
        codes = [p.wait() for p in procs]
        if any(codes):
            raise SystemExit(
                f"error: the faithfulness job ({what}) failed (exit codes {codes}); see its log above. Rerun the same "
                "command: finished samples are kept."
            )


def outcome_columns(samples: pd.DataFrame) -> tuple[pd.Series, pd.Series, str]:
    """Subject present and true-background PSNR per row (capped as tables cap it), and where each comes from."""
    if SUBJECT_OK_ORACLE in samples and samples[SUBJECT_OK_ORACLE].notna().any():
        subject, subject_source = metric_values(samples, SUBJECT_OK_ORACLE), SUBJECT_OK_ORACLE
    elif "truth_empty" in samples:
        subject, subject_source = 1.0 - metric_values(samples, "truth_empty"), "1 - truth_empty (recorded truth)"
    else:
        raise SystemExit(
            "the faithfulness samples have neither subject_ok_oracle (metrics=toy on dataset=toy_world) nor "
            "truth_empty (truth_record.enabled=true): rerun the jobs with one of them."
        )
    if TRUE_BG_PSNR in samples and samples[TRUE_BG_PSNR].notna().any():
        background, background_source = metric_values(samples, TRUE_BG_PSNR), TRUE_BG_PSNR
    else:
        background = metric_values(samples, "truth_bg_psnr").clip(upper=METRIC_CAPS[TRUE_BG_PSNR])
        background_source = "truth_bg_psnr (recorded truth)"
    return subject, background, f"subject present: {subject_source}; true-background PSNR: {background_source}"


def map_order(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """The maps (kind, layer set) of `frame`: the maps in name order, then the centre prior, then uniform."""
    maps = {tuple(m) for m in frame[MAP_KEYS].drop_duplicates().itertuples(index=False)}
    return sorted(
        maps, key=lambda m: (m[0] in CHANCE_KINDS, CHANCE_KINDS.index(m[0]) if m[0] in CHANCE_KINDS else 0, m)
    )


def faithfulness_points(samples: pd.DataFrame) -> pd.DataFrame:
    """samples.csv of the faithfulness task -> one row per (map, k, sample), the shared ends under every map.

    A row's map is its `method.score.kind` and `method.score.layers` ("-" for a layer-free kind); k is its
    `method.mask.keep_fraction`. The rows at k = 0 and k = 1 (one per sample and end, whatever kind ran them) are
    copied under every map with `shared` true: the same images.
    """
    rows = samples[samples.get("method.mask.rule", pd.Series("", index=samples.index)) == "top_fraction"]
    if rows.empty:
        raise SystemExit("no faithfulness sample (method.mask.rule=top_fraction) in the task's samples.csv.")
    subject, background, sources = outcome_columns(rows)
    kinds = rows["method.score.kind"].astype(str)
    frame = rows[[*IDENTITY, "sample_key", "status", "label", "image_path"]].copy()
    frame["kind"] = kinds
    frame["layer_set"] = np.where(kinds.isin(LAYERED_KINDS), rows["method.score.layers"].astype(str), "-")
    frame["keep_fraction"] = pd.to_numeric(rows["method.mask.keep_fraction"]).astype(float)
    frame[SUBJECT], frame[BACKGROUND], frame["outcome_source"] = subject, background, sources
    at_end = frame["keep_fraction"].isin(ENDS)
    ends = frame[at_end].sort_values("label", kind="stable").drop_duplicates([*IDENTITY, "keep_fraction"])
    inner = frame[~at_end].drop_duplicates([*MAP_KEYS, *IDENTITY, "keep_fraction"])
    if inner.empty:
        raise SystemExit("the faithfulness samples hold only k = 0 and k = 1: no map was run between them.")
    parts = []
    for rank, (kind, layer_set) in enumerate(map_order(inner)):
        own = inner[(inner["kind"] == kind) & (inner["layer_set"] == layer_set)].assign(shared=False)
        parts += [
            part.assign(map_rank=rank) for part in (own, ends.assign(kind=kind, layer_set=layer_set, shared=True))
        ]
    points = pd.concat(parts, ignore_index=True).sort_values(["map_rank", "keep_fraction", *IDENTITY], kind="stable")
    return points.drop(columns="map_rank").reset_index(drop=True)


def trapezoid(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Area under each row of `values` [n, k] over `grid` [k] (the trapezoid rule; NaN where a point is)."""
    return ((values[:, 1:] + values[:, :-1]) / 2 * np.diff(grid)).sum(axis=1)


def curve_matrix(points: pd.DataFrame, kind: str, layer_set: str, column: str, grid: np.ndarray) -> pd.DataFrame:
    """One map's per-sample curve of `column`: [samples, k] (NaN where a point failed or is missing)."""
    part = points[(points["kind"] == kind) & (points["layer_set"] == layer_set)]
    values = part[column].where(part["status"] == "ok")
    wide = values.set_axis(pd.MultiIndex.from_frame(part[[*IDENTITY, "keep_fraction"]])).unstack("keep_fraction")
    return wide.reindex(columns=grid)


def curve_reason(subject: pd.DataFrame, background: pd.DataFrame) -> list[str]:
    """Why a sample's areas are NaN: the kept fractions whose point is missing, failed or undefined."""
    reasons = []
    for (_, s), (_, b) in zip(subject.iterrows(), background.iterrows(), strict=True):
        bad = [f"{k:g}" for k in subject.columns if pd.isna(s[k]) or pd.isna(b[k])]
        reasons.append(f"no finite point at k = {', '.join(bad)}" if bad else "")
    return reasons


def grid_of(points: pd.DataFrame) -> np.ndarray:
    return np.array(sorted(set(points["keep_fraction"])), dtype=float)


def sample_curves(points: pd.DataFrame) -> pd.DataFrame:
    """Per (map, sample): the area under the subject-present and true-background-PSNR curves over the grid, and
    each minus the centre prior's for the same sample (the paired difference; NaN without a centre-prior curve)."""
    grid, parts = grid_of(points), []
    for kind, layer_set in map_order(points):
        subject = curve_matrix(points, kind, layer_set, SUBJECT, grid)
        background = curve_matrix(points, kind, layer_set, BACKGROUND, grid)
        part = subject.index.to_frame(index=False).assign(kind=kind, layer_set=layer_set, status="ok")
        part["auc_subject"] = trapezoid(subject.to_numpy(), grid)
        part["auc_bg_psnr"] = trapezoid(background.to_numpy(), grid)
        part["auc_nan_reason"] = curve_reason(subject, background)
        parts.append(part)
    curves = pd.concat(parts, ignore_index=True)
    centre = curves[curves["kind"] == CENTRE][[*IDENTITY, "auc_subject", "auc_bg_psnr"]]
    paired = curves.merge(centre, on=IDENTITY, how="left", suffixes=("", "_centre"))
    for metric in ("auc_subject", "auc_bg_psnr"):
        curves[f"{metric}_vs_centre"] = (paired[metric] - paired[f"{metric}_centre"]).to_numpy()
    return curves[[*MAP_KEYS, *IDENTITY, "status", *AUC_METRICS, "auc_nan_reason"]]


def crossing(curve: np.ndarray, grid: np.ndarray, level: float = SUBJECT_LEVEL) -> float:
    """The smallest k (linear between grid points) at which `curve` reaches `level` x its value at k = 1."""
    target = level * curve[-1]
    if not np.isfinite(target) or target <= 0:
        return np.nan  # no subject at k = 1: nothing to keep
    first = int(np.argmax(curve >= target))
    if first == 0:
        return float(grid[0])
    (k0, k1), (y0, y1) = grid[first - 1 : first + 1], curve[first - 1 : first + 1]
    return float(k0 + (target - y0) / (y1 - y0) * (k1 - k0))


KEPT_STATS = ("k_subject", "bg_psnr_at_k_subject", "k_subject_vs_centre", "bg_psnr_at_k_subject_vs_centre")


def complete_curves(points: pd.DataFrame, kind: str, layer_set: str, grid: np.ndarray) -> tuple[pd.DataFrame, ...]:
    """A map's subject and true-background curves [samples, k] of the samples with every point finite."""
    subject = curve_matrix(points, kind, layer_set, SUBJECT, grid)
    background = curve_matrix(points, kind, layer_set, BACKGROUND, grid)
    complete = subject.notna().all(axis=1) & background.notna().all(axis=1)
    return subject[complete], background[complete]


def subject_kept_at(points: pd.DataFrame, kind: str, layer_set: str) -> dict:
    """The kept fraction at which the map's mean subject curve reaches 90% of its full-latent rate and the mean
    true-background PSNR there, and each minus the centre prior's on the same samples (paired), each with a bootstrap
    95% interval over reference images (the samples whose curves are complete for the map and the centre prior)."""
    grid = grid_of(points)
    subject, background = complete_curves(points, kind, layer_set, grid)
    c_subject, c_background = complete_curves(points, CENTRE, "-", grid)
    if len(c_subject):  # pair with the centre prior: the samples complete for both
        subject, background = (
            subject[subject.index.isin(c_subject.index)],
            background[subject.index.isin(c_subject.index)],
        )
    s, b = subject.to_numpy(), background.to_numpy()  # [n, k]
    cs = c_subject.reindex(subject.index).to_numpy() if len(c_subject) else np.full_like(s, np.nan)
    cb = c_background.reindex(subject.index).to_numpy() if len(c_subject) else np.full_like(b, np.nan)

    def at(rows: np.ndarray) -> np.ndarray:
        """k and the PSNR there, for the map and minus the centre prior's, on the samples `rows`."""
        k, kc = crossing(s[rows].mean(axis=0), grid), crossing(cs[rows].mean(axis=0), grid)
        bg = np.interp(k, grid, b[rows].mean(axis=0)) if np.isfinite(k) else np.nan
        bgc = np.interp(kc, grid, cb[rows].mean(axis=0)) if np.isfinite(kc) else np.nan
        return np.array([k, bg, k - kc, bg - bgc])

    everything, clusters = np.arange(len(s)), subject.index.get_level_values("image_id").to_numpy()
    values = at(everything) if len(s) else np.full(len(KEPT_STATS), np.nan)
    out = {"k_subject_n": len(s)}
    for i, name in enumerate(KEPT_STATS):
        rng = cell_rng("faithfulness_k_subject", kind, layer_set, name)
        stat = lambda rows, i=i: at(rows.astype(int))[i]  # noqa: E731
        out[f"{name}_mean"] = values[i]
        out[f"{name}_mean_lo"], out[f"{name}_mean_hi"] = cluster_bootstrap(
            everything.astype(float), clusters, stat, rng
        )
    return out


def faithfulness_tables(points: pd.DataFrame, curves: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per (map, k): N and mean subject present and true-background PSNR with intervals; per map: the areas under
    the curves, their difference from the centre prior, and the kept fraction that keeps the subject."""
    point_table = summarize(
        points,
        [*MAP_KEYS, "keep_fraction"],
        table="faithfulness",
        metrics=[SUBJECT, BACKGROUND],
        stats=("mean",),
        sort=False,
    )
    point_table.insert(3, "shared", point_table["keep_fraction"].isin(ENDS))
    point_table["outcome_source"] = ";".join(sorted(set(points["outcome_source"])))
    auc = summarize(curves, MAP_KEYS, table="faithfulness_auc", metrics=AUC_METRICS, stats=("mean",), sort=False)
    kept = pd.DataFrame(
        [subject_kept_at(points, kind, layer_set) for kind, layer_set in auc[MAP_KEYS].itertuples(index=False)]
    )
    auc = pd.concat([auc, kept], axis=1)
    auc["grid"] = ",".join(f"{k:g}" for k in grid_of(points))
    return point_table, auc


STUDY_KINDS = {CENTRE: "chance:centre", UNIFORM: "chance:uniform"}  # the study's names of the chance maps


def study_auroc(study: pd.DataFrame | None, kind: str, layer_set: str) -> pd.DataFrame:
    """The study's mean AUROC of the same map per scoring step (timestep, auroc_mean): the control chain's maps
    against its own truth (truth = no_manipulation, main threshold), at the scoring steps only (`scoring_indices`).
    Empty without the study's table."""
    if study is None or study.empty:
        return pd.DataFrame(columns=["timestep", "auroc_mean"])
    keep = (study["truth"] == "no_manipulation") & (study["label"] == CONTROL_LABEL)
    if "truth_threshold" in study:
        keep &= study["truth_threshold"] == "main"
    control = study[keep]
    control = control[control["index"].isin(scoring_indices(control))]
    same_map = (control["kind"] == STUDY_KINDS.get(kind, kind)) & (control["layer_set"] == layer_set)
    return control[same_map].sort_values("index")[["timestep", "auroc_mean"]]


def scoring_indices(control: pd.DataFrame) -> list[int]:
    """The control chain's scoring steps: every index where a map other than DAAM and the chance maps was scored.
    DAAM's whole-chain map (its own index, `method.attribution.daam.window=full|both`) is not the map this
    stage's operator keeps (DAAM over the steps so far), and only DAAM has it: counted, it would raise DAAM's
    mean over the other maps' (all indices when no other map was recorded)."""
    others = control[~control["kind"].isin(["daam", *STUDY_KINDS.values()])]
    return sorted(set(others["index"] if len(others) else control["index"]))


def auroc_text(study: pd.DataFrame | None, kind: str, layer_set: str) -> str:
    rows = study_auroc(study, kind, layer_set)
    return " / ".join(f"{v:.3f}" for v in rows["auroc_mean"])


def cell(row: pd.Series, metric: str, spec: str = NUMBER) -> str:
    """A summary row's metric as 'mean [lo, hi]', three decimals unless `spec` says otherwise."""
    return mean_interval(row, metric, spec)


def map_name(kind: str, layer_set: str) -> str:
    return FaithMap(kind, layer_set).name


def auc_view(auc: pd.DataFrame, study: pd.DataFrame | None) -> pd.DataFrame:
    """One row per map: N; the subject AUC; the kept fraction that keeps 90% of the subjects and the true-background
    PSNR there (each beside its paired difference from the centre prior); the true-background PSNR AUC; the study's
    AUROC of the same map."""
    steps = study_auroc(study, "gradsam", "last")["timestep"]
    auroc = "study AUROC" + (f" (t = {' / '.join(str(int(t)) for t in steps)})" if len(steps) else "")
    rows = []
    for _, r in auc.iterrows():
        rows.append(
            {
                "map": map_name(r["kind"], r["layer_set"]),
                "N": int(r["N"]),
                "subject AUC": cell(r, "auc_subject"),
                "Δ subject AUC": cell(r, "auc_subject_vs_centre", "+.3f"),
                f"k keeping {SUBJECT_LEVEL:.0%} of subjects": cell(r, "k_subject"),
                "Δ k": cell(r, "k_subject_vs_centre", "+.3f"),
                "true-bg PSNR at k (dB)": cell(r, "bg_psnr_at_k_subject", ".2f"),
                "Δ PSNR at k": cell(r, "bg_psnr_at_k_subject_vs_centre", "+.2f"),
                "true-bg PSNR AUC (dB)": cell(r, "auc_bg_psnr", ".2f"),
                "Δ PSNR AUC": cell(r, "auc_bg_psnr_vs_centre", "+.2f"),
                auroc: auroc_text(study, r["kind"], r["layer_set"]),
            }
        )
    return pd.DataFrame(rows)


def points_view(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (map, k): N, mean subject present and true-background PSNR with their intervals."""
    out = pd.DataFrame({"map": [map_name(k, s) for k, s in table[MAP_KEYS].itertuples(index=False)]})
    out["k"] = [f"{k:g}" for k in table["keep_fraction"]]
    out["shared"] = np.where(table["shared"].astype(bool), "yes", "")
    out["N"] = table["N"].astype(int).to_numpy()
    out["subject present"] = [cell(r, SUBJECT) for _, r in table.iterrows()]
    out["true-bg PSNR (dB)"] = [cell(r, BACKGROUND, ".2f") for _, r in table.iterrows()]
    return out


def side(row: pd.Series, metric: str) -> str:
    """Where a paired difference's interval lies: 'above' (lo > 0), 'below' (hi < 0), 'level with' 0, or
    'undetermined' without an interval (fewer than 2 reference images)."""
    lo, hi = row[f"{metric}_mean_lo"], row[f"{metric}_mean_hi"]
    if pd.isna(lo) or pd.isna(hi):
        return "undetermined"
    return "above" if lo > 0 else "below" if hi < 0 else "level with"


def number(value: float, spec: str = NUMBER) -> str:
    return "n/a" if pd.isna(value) else format(value, spec)


def map_note(row: pd.Series, centre: pd.Series) -> str:
    """One map against the centre prior, in numbers from the table."""
    subject, background = side(row, "auc_subject_vs_centre"), side(row, "auc_bg_psnr_vs_centre")
    k, bg = "k_subject_mean", "bg_psnr_at_k_subject_mean"
    note = (
        f"{map_name(row['kind'], row['layer_set'])}: subject AUC {number(row['auc_subject_mean'])} ({subject} the "
        f"centre prior's {number(centre['auc_subject_mean'])}: {cell(row, 'auc_subject_vs_centre', '+.3f')}); "
        f"{SUBJECT_LEVEL:.0%} of the full-latent subjects from k = {number(row[k])} (centre prior: "
        f"{number(centre[k])}), true-background PSNR there {number(row[bg], '.2f')} dB (centre prior: "
        f"{number(centre[bg], '.2f')} dB; paired: {cell(row, 'bg_psnr_at_k_subject_vs_centre', '+.2f')} dB)."
    )
    if subject == "below" and background == "above":
        gain = cell(row, "auc_bg_psnr_vs_centre", "+.2f")
        note += (
            f" Its true-background PSNR AUC is above the centre prior's ({gain} dB) because it loses subjects: an "
            "image without its subject is mostly the reference's background."
        )
    return note


def best_localising(maps: pd.DataFrame, study: pd.DataFrame | None) -> tuple[pd.Series, str]:
    """The map the study ranks first (mean AUROC over its scoring steps), else the one with the best subject AUC."""
    scores = [study_auroc(study, k, s)["auroc_mean"].mean() for k, s in maps[MAP_KEYS].itertuples(index=False)]
    if np.isfinite(scores).any():
        best = int(np.nanargmax(scores))
        return maps.iloc[best], f"the best-localising map by the study's AUROC ({scores[best]:.3f}, mean over steps)"
    best = int(np.nanargmax(maps["auc_subject_mean"].to_numpy()))
    return maps.iloc[best], "the map with the best subject AUC (the study's AUROC table is absent)"


def verdict(best: pd.Series, how: str) -> str:
    """'A better map makes a better image': does the best-localising map keep the subject at smaller kept areas than
    the centre prior (subject AUC, paired), and with how much true background where it keeps 90% of the subjects?"""
    name = map_name(best["kind"], best["layer_set"])
    subject, background = side(best, "auc_subject_vs_centre"), side(best, "bg_psnr_at_k_subject_vs_centre")
    numbers = (
        f"subject AUC {cell(best, 'auc_subject_vs_centre', '+.3f')}, kept fraction for {SUBJECT_LEVEL:.0%} of subjects "
        f"{cell(best, 'k_subject_vs_centre', '+.3f')}, true-background PSNR there "
        f"{cell(best, 'bg_psnr_at_k_subject_vs_centre', '+.2f')} dB, each minus the centre prior's on the same samples"
    )
    if subject == "above":
        tail = {
            "above": "and keeps more true background there",
            "level with": "with a true-background PSNR there level with the prior's",
            "below": "but keeps less true background there",
        }.get(background, "(no interval for the background there)")
        head = "Holds for the subject, at a background cost," if background == "below" else "Holds"
        where = "keeps the subject at smaller kept areas than the centre prior"
        return f"{head} on this run: {name}, {how}, {where} {tail} ({numbers})."
    if subject == "level with":
        return f"Not shown on this run: {name}, {how}, keeps the subject no better than the centre prior ({numbers})."
    if subject == "undetermined":
        return f"Undetermined on this run: fewer than 2 reference images give no interval ({name}: {numbers})."
    return f"Does not hold on this run: {name}, {how}, keeps the subject worse than the centre prior ({numbers})."


def rank_note(auc: pd.DataFrame, study: pd.DataFrame | None) -> str | None:
    """Do the study's AUROC and the subject AUC order the maps alike? (Spearman over the maps with both.)"""
    pairs = [
        (study_auroc(study, k, s)["auroc_mean"].mean(), a)
        for k, s, a in auc[[*MAP_KEYS, "auc_subject_mean"]].itertuples(index=False)
    ]
    pairs = [p for p in pairs if np.isfinite(p).all()]
    if len(pairs) < 3:
        return None
    ranks = pd.DataFrame(pairs).rank().to_numpy()
    rho = np.corrcoef(ranks[:, 0], ranks[:, 1])[0, 1]
    return (
        f"Across the {len(pairs)} maps (chance maps included) the study's AUROC and the subject AUC order the maps "
        f"with Spearman rho = {rho:.2f}."
    )


def verdict_notes(auc: pd.DataFrame, points: pd.DataFrame, study: pd.DataFrame | None) -> list[str]:
    """The stage's answer, generated from the tables: the verdict, each map against the centre prior, the ranks."""
    if CENTRE not in set(auc["kind"]):
        return ["No centre-prior curve: the verdict needs it (add centre_prior to --faith-maps)."]
    centre = auc[auc["kind"] == CENTRE].iloc[0]
    maps = auc[~auc["kind"].isin(CHANCE_KINDS)]
    if maps.empty:
        return ["Only chance maps were run: nothing to judge."]
    full = points[points["keep_fraction"] == 1.0][f"{SUBJECT}_mean"]
    if full.empty or not full.iloc[0] > 0:
        return [
            "Cannot be judged on this run: no subject is present even at k = 1 (the no_manipulation image), so no map "
            "can keep one; the model does not draw the prompted subject."
        ]
    notes = [verdict(*best_localising(maps, study))]
    notes += [map_note(row, centre) for _, row in auc[auc["kind"] != CENTRE].iterrows()]
    rank = rank_note(auc, study)
    return notes + ([rank] if rank else [])


def reading_notes(auc: pd.DataFrame, points: pd.DataFrame) -> list[str]:
    """How the table was made and how to read it (the grid, N and the outcome sources from the tables)."""
    maps = {tuple(m) for m in auc[MAP_KEYS].itertuples(index=False)}
    notes = [
        "Operator: the paper's sampler at its injection steps keeps exactly the top k of latent cells of the map "
        "(method.mask.rule=top_fraction: every channel; no blur, dilation or threshold) and replaces the rest with the "
        "reference's noised latent. k = 0 (every cell replaced) and k = 1 (none: the no_manipulation image, bit for "
        "bit) do not depend on the map: they ran once and every map shares them.",
        f"Grid: k = {', '.join(f'{k:g}' for k in grid_of(points))}; N = {int(auc['N'].max())} samples per map; "
        f"{'; '.join(sorted(set(points['outcome_source'])))}.",
        "Subject AUC: the area under the subject-present curve over k (trapezoid per sample, then the mean): higher = "
        "the subject survives at smaller kept areas. Δ: minus the centre prior's on the same samples (paired); an "
        "interval that excludes 0 separates the map from the prior.",
        f"k keeping {SUBJECT_LEVEL:.0%} of subjects: the kept fraction at which the mean subject curve reaches "
        f"{SUBJECT_LEVEL:.0%} of its value at k = 1 (linear between grid points); true-bg PSNR at k: the mean "
        "true-background PSNR there, the background a map keeps where it keeps the subject (the verdict's measure).",
        "True-bg PSNR AUC: the area under the PSNR curve outside the subject (dB). It also rises when a map loses the "
        "subject (an image without it is mostly the reference's background): read it beside the subject AUC.",
        "Intervals: percentile bootstrap 95%, 1000 resamples of reference images, seeded per cell. Study AUROC: "
        "attribution.csv, the same map of the no_manipulation chain against its truth, per scoring step.",
    ]
    if ("attention_only", "res8") in maps and ("gradsam", "res8") not in maps:
        notes.append(
            "The best-localising layer set runs as attention_only res8 (the study: as good as Grad-SAM res8 on the toy "
            "world); exact Grad-SAM res8 costs about 15x a sample on the CPU (--faith-maps gradsam:res8,... adds it)."
        )
    return notes


def line_style(kind: str) -> dict:
    """Chance maps in grey (centre prior dashed, uniform dotted); every other map in its own colour."""
    return {CENTRE: {"color": "grey", "linestyle": "--"}, UNIFORM: {"color": "grey", "linestyle": ":"}}.get(kind, {})


def curve_figure(table: pd.DataFrame, metric: str, ylabel: str, path: Path) -> Path:
    """`metric` against the kept fraction: one line per map with its 95% intervals, the chance maps grey."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (kind, layer_set), rows in table.groupby(MAP_KEYS, sort=False):
        mean = rows[f"{metric}_mean"].to_numpy()
        errors = np.nan_to_num([mean - rows[f"{metric}_mean_lo"], rows[f"{metric}_mean_hi"] - mean])
        label = map_name(kind, layer_set)
        ax.errorbar(rows["keep_fraction"], mean, yerr=errors, marker="o", capsize=2, label=label, **line_style(kind))
    ax.set(xlabel="kept fraction k of latent cells (the map's top cells)", ylabel=ylabel, xlim=(-0.02, 1.02))
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def tradeoff_figure(table: pd.DataFrame, path: Path) -> Path:
    """True-background PSNR against subject present, one line per map through its kept fractions."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (kind, layer_set), rows in table.groupby(MAP_KEYS, sort=False):
        x, y = rows[f"{SUBJECT}_mean"], rows[f"{BACKGROUND}_mean"]
        ax.plot(x, y, marker="o", label=map_name(kind, layer_set), **line_style(kind))
    ax.set(xlabel="subject present (mean)", ylabel="true-background PSNR (dB, mean)")
    ax.set_title("trade-off over the kept fraction (k = 0 top left, k = 1 bottom right)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


AUC_TITLE = "Faithfulness: does a better map make a better image? (areas under the curves over the kept fraction)"
POINTS_TITLE = "Faithfulness curves: subject present and true-background PSNR at each kept fraction"


def faithfulness_sections(folder: Path, study: pd.DataFrame | None = None) -> list[Section]:
    """The stage's report sections from its tables in `folder` ([] when the stage has not run): the areas with the
    verdict, the figures, the points. `study`: the study's attribution table (else folder/attribution.csv if any)."""
    if not (folder / FILES["auc"]).exists() or not (folder / FILES["points"]).exists():
        return []
    auc, points = read_csv(folder / FILES["auc"]), read_csv(folder / FILES["points"])
    if study is None and (folder / "attribution.csv").exists():
        study = read_csv(folder / "attribution.csv")
    figures = tuple(p for p in (folder / "figures" / name for name in FIGURES) if p.exists())
    notes = (*verdict_notes(auc, points, study), *reading_notes(auc, points))
    point_notes = ("k = 0 and k = 1 (shared = yes) are the same images for every map.",)
    return [
        Section(AUC_TITLE, auc_view(auc, study), notes, place=SUMMARY),
        Section("Faithfulness curves", figures=figures),
        Section(POINTS_TITLE, points_view(points), point_notes, place=COLLAPSED),
    ]


def write_faithfulness(folder: Path, samples_csv: Path) -> dict[str, Path]:
    """The stage's tables, figures and faithfulness.md under `folder` (results/attribution) from its samples."""
    samples = read_csv(samples_csv)
    points = faithfulness_points(samples)
    curves = sample_curves(points)
    point_table, auc = faithfulness_tables(points, curves)
    paths = {key: folder / name for key, name in FILES.items()}
    for key, frame in (("samples", points), ("sample_auc", curves), ("points", point_table), ("auc", auc)):
        write_csv(frame, paths[key])
    figures = folder / "figures"
    curve_figure(point_table, SUBJECT, "subject present (mean)", figures / FIGURES[0])
    curve_figure(point_table, BACKGROUND, "true-background PSNR (dB, mean)", figures / FIGURES[1])
    tradeoff_figure(point_table, figures / FIGURES[2])
    report = Report(
        "Faithfulness (attribution)", "The paper's operator at each kept fraction", tuple(faithfulness_sections(folder))
    )
    atomic_write_text(paths["md"], render_markdown(report))
    return paths


def run_stage(args: argparse.Namespace, root: Path) -> dict[str, Path] | None:
    """`python -m bench.attribution --stage faithfulness|all`: the jobs (unless --report-only), then the tables.
    With --stage all and no faithfulness samples yet (--report-only), nothing is written (None)."""
    plan = plan_of(args)
    start = time.monotonic()
    if not args.report_only:
        run_jobs(plan, list(args.overrides), root, args.shards)
    jobs_s = time.monotonic() - start
    samples = root / "results" / TASK / "samples.csv"
    if not samples.exists():
        if args.stage == "faithfulness":
            raise SystemExit(f"{samples} does not exist: run the stage's jobs first (without --report-only).")
        print(f"faithfulness: no samples in {samples.parent} yet; its sections are left out.")
        return None
    paths = write_faithfulness(root / "results" / "attribution", samples)
    if args.stage == "faithfulness":
        print(paths["md"].read_text())
    print(f"faithfulness jobs: {jobs_s:.0f} s; tables: {time.monotonic() - start - jobs_s:.0f} s; {paths['auc']}")
    return paths
