"""Set-level FID-2048 and KID of each method's generated set against the reference set (not the paper's numbers).

For every table row (model, dataset, method label, ablation) and scope (all samples pooled, then each
category), the generated set is the row's successful images and the reference set is the distinct
reference images they were made from. Both go through torch-fidelity's InceptionV3 (2048-d pool
features; each image resized to 299 by torch-fidelity's TF-1.x bilinear, after an optional common
PIL-bicubic resize), with features cached per image content (bench.metrics.features). Then:

* fid2048 = ||mu_g - mu_r||^2 + Tr(S_g + S_r - 2 (S_g S_r)^(1/2)) in float64 (S unbiased, as np.cov):
  torch-fidelity's fid_statistics_to_metric when N_gen + N_ref >= 2048; below that, the same formula
  evaluated exactly in the span of the centred features (`set_fid_method` says which). Below N = 2048
  the covariances are rank-deficient and the estimate is biased upwards (docs/paper.md §4, ANCHORS §3.4):
  compare values at equal N only. NaN when a set has N < 2.
* kid = torch-fidelity's kid_features_to_metric: unbiased MMD^2 with the cubic polynomial kernel
  k(x, y) = (x.y / d + 1)^3, mean and std over `kid_subsets` random subsets of size
  min(kid_subset_size, N_gen, N_ref) (torch-fidelity refuses a subset larger than a set). NaN when < 2;
  kid_std is NaN ("n/a", kid_std_reason) when the subset is the whole of both sets.

N is printed beside every value. Reference statistics are cached under a key naming dataset, split,
scope, N, the reference ids, their size, the resize, the extractor, its weights and torch-fidelity's
version; an existing key is never overwritten with a different image set (that cell is NaN, its
reason says how to rebuild, and the table notes carry a warning).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from bench.metrics import FID2048, KID_MEAN
from bench.metrics.features import FeatureCache, image_digest
from bench.metrics.inception import InceptionFeatures, MissingWeightsError, load_inception
from bench.metrics.paper_io import as_rgb_array
from bench.records import StorageError, atomic_write_bytes, read_npz
from bench.sd.errors import ConfigError

log = logging.getLogger(__name__)
LAYER = "2048"
ALL = "all"
FID_IN_SPAN = "exact in the span (N_gen + N_ref < 2048)"
FID_TORCH_FIDELITY = "torch-fidelity fid_statistics_to_metric"


class RefStatsConflict(ConfigError):
    """A reference-statistics key that already holds a different image set."""


@dataclass(frozen=True)
class SetLevelOptions:
    kid_subset_size: int = 1000  # torch-fidelity's default; capped at the smaller set's N
    kid_subsets: int = 100
    rng_seed: int = 2020  # torch-fidelity's default KID subset seed
    resize: int | None = None  # None: each image as stored; k: PIL bicubic to k x k first (mixed sizes)
    chunk: int = 32  # images read per feature-extraction chunk (bounds memory)


@dataclass(frozen=True)
class SetLevelAssets:
    """Where the set-level metrics find their weights and keep their caches (None: the default beside it).

    The entry points fill it (bench.aggregate reads $BENCH_CACHE_DIR, $BENCH_INCEPTION_WEIGHTS, $BENCH_WEIGHTS_DIR);
    nothing below them reads the environment.
    """

    cache_dir: str | Path | None = None  # features and reference statistics; None: <first root>/.cache
    inception_weights: str | Path | None = None  # torch-fidelity state dict; None: bench.metrics.inception's search
    weights_cache_dir: str | Path | None = None  # converted weights; None: bench.metrics.inception's default
    overwrite_ref_stats: bool = False  # replace cached reference statistics whose images changed
    device: str = "cpu"


def statistics(features: np.ndarray) -> dict[str, np.ndarray]:
    """{'mu': [D], 'sigma': [D, D]} of features [N, D] (torch-fidelity, float64)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    return fid_features_to_statistics(torch.from_numpy(np.asarray(features, dtype=np.float64)))


def fid_from_statistics(stats_a: dict, stats_b: dict) -> float:
    """torch-fidelity's Frechet distance between two sets of statistics."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    a = {"mu": stats_a["mu"], "sigma": stats_a["sigma"]}
    b = {"mu": stats_b["mu"], "sigma": stats_b["sigma"]}
    return float(fid_statistics_to_metric(a, b, False)[KEY_METRIC_FID])


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues below 0 from round-off set to 0)."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def fid_in_span(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Exact FID when N_a + N_b < D, evaluated in an orthonormal basis of the span of the centred features.

    Both covariances vanish outside that span, so every term of the formula (traces, eigenvalues of
    S_a S_b) is the same on the k x k restriction (k <= N_a + N_b): exact in exact arithmetic, O(N^2 D)
    instead of a 2048 x 2048 non-symmetric eigen-decomposition, which at small N is dominated by round-off.
    """
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)  # [D]
    basis, _ = np.linalg.qr(np.concatenate([a - mu_a, b - mu_b]).T)  # [D, k]
    a_k, b_k = (a - mu_a) @ basis, (b - mu_b) @ basis  # [N_a, k], [N_b, k]
    s_a, s_b = a_k.T @ a_k / (len(a) - 1), b_k.T @ b_k / (len(b) - 1)  # [k, k], unbiased as np.cov
    root_a = psd_sqrt(s_a)
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ s_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_covmean)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> tuple[float, str]:
    """(FID, how) between feature sets [N, D], N >= 2 each: in the span if N_a + N_b < D, else torch-fidelity's."""
    if len(features_a) + len(features_b) < np.shape(features_a)[1]:
        return fid_in_span(features_a, features_b), FID_IN_SPAN
    return fid_from_statistics(statistics(features_a), statistics(features_b)), FID_TORCH_FIDELITY


def kernel_inception_distance(
    features_a: np.ndarray, features_b: np.ndarray, subset_size: int, subsets: int, seed: int
) -> tuple[float, float]:
    """(mean, std) of torch-fidelity's KID over `subsets` subsets of `subset_size` from each set."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    out = kid_features_to_metric(
        torch.from_numpy(np.asarray(features_a, np.float64)),
        torch.from_numpy(np.asarray(features_b, np.float64)),
        kid_subsets=subsets,
        kid_subset_size=subset_size,
        rng_seed=seed,
        verbose=False,
    )
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])


def fid_and_kid(gen: np.ndarray, ref: dict, options: SetLevelOptions) -> dict:
    """The metric columns for one (generated features, reference statistics) pair, NaN with reasons if too small."""
    n_gen, n_ref = len(gen), len(ref["features"])
    row = {"fid2048_N_gen": n_gen, "fid2048_N_ref": n_ref, "kid_N_gen": n_gen, "kid_N_ref": n_ref}
    if min(n_gen, n_ref) < 2:
        row.update({FID2048: math.nan, "fid2048_nan_reason": f"N_gen={n_gen}, N_ref={n_ref}: FID needs N >= 2"})
    elif n_gen + n_ref < gen.shape[1]:
        row[FID2048], row["set_fid_method"] = fid_in_span(gen, ref["features"]), FID_IN_SPAN
    else:
        ref_stats = ref if "sigma" in ref else statistics(ref["features"])
        row[FID2048], row["set_fid_method"] = fid_from_statistics(statistics(gen), ref_stats), FID_TORCH_FIDELITY
    subset = min(options.kid_subset_size, n_gen, n_ref)
    row.update(kid_subset_size=subset, kid_subsets=options.kid_subsets)
    if subset < 2:
        reason = f"subset size {subset} = min({options.kid_subset_size}, N_gen={n_gen}, N_ref={n_ref}) < 2"
        row.update({KID_MEAN: math.nan, "kid_std": math.nan, "kid_nan_reason": reason})
    else:
        row[KID_MEAN], row["kid_std"] = kernel_inception_distance(
            gen, ref["features"], subset, options.kid_subsets, options.rng_seed
        )
        if subset >= max(n_gen, n_ref):  # every subset is the whole of both sets: the spread is round-off
            row["kid_std"] = math.nan
            row["kid_std_reason"] = f"n/a: subset size {subset} = N_gen = N_ref, every subset is the whole set"
    return row


class ImageSetFeatures:
    """2048-d features of image files (relative to root_dir), through the content-keyed cache."""

    def __init__(self, net: InceptionFeatures, roots: list[Path], cache_dir: Path, resize: int | None, chunk: int):
        self.cache = FeatureCache(net, net.extractor_id, cache_dir)
        self.roots, self.resize, self.chunk = roots, resize, chunk
        self.by_path: dict[str, tuple[np.ndarray, str, tuple]] = {}  # path -> (feature, digest, shape)

    def locate(self, rel_path: str) -> Path:
        """The file, relative to the first root that has it (absolute paths as they are)."""
        candidates = [Path(rel_path)] if Path(rel_path).is_absolute() else [r / rel_path for r in self.roots]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{rel_path} not found under {[str(r) for r in self.roots]}; pass --root-dir")
        return found

    def read(self, rel_path: str) -> np.ndarray:
        with Image.open(self.locate(rel_path)) as image:
            if self.resize and image.size != (self.resize, self.resize):
                image = image.resize((self.resize, self.resize), Image.BICUBIC)
            return as_rgb_array(image)

    def features(self, paths: list[str]) -> np.ndarray:
        """[N, 2048] for the given files, in order."""
        todo = [p for p in dict.fromkeys(paths) if p not in self.by_path]
        for start in range(0, len(todo), self.chunk):
            chunk = todo[start : start + self.chunk]
            images = [self.read(p) for p in chunk]
            for p, img, feat in zip(chunk, images, self.cache.get(images, LAYER), strict=True):
                self.by_path[p] = (feat, image_digest(img), img.shape)
        return np.stack([self.by_path[p][0] for p in paths]) if paths else np.zeros((0, 2048), np.float32)

    def fingerprint(self, paths: list[str]) -> str:
        """sha256 of the sorted content digests of the images (what the statistics were computed from)."""
        return hashlib.sha256("\n".join(sorted(self.by_path[p][1] for p in paths)).encode()).hexdigest()

    def size_label(self, paths: list[str]) -> str:
        """'64x64px' if every image (as fed) has that size, else 'mixed'."""
        shapes = {self.by_path[p][2][:2] for p in paths}
        if len(shapes) != 1:
            return "mixed"
        height, width = shapes.pop()
        return f"{height}x{width}px"


class RefStatsCache:
    """Reference statistics under <cache_dir>/ref_stats/<key>.npz; never silently replaced.

    Stored: mu, the features (KID needs them) and, when N >= D, sigma (below that the features imply it).
    """

    def __init__(self, cache_dir: Path, overwrite: bool = False):
        self.root = Path(cache_dir) / "ref_stats"
        self.overwrite = overwrite

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npz"

    @staticmethod
    def read(path: Path) -> dict | None:
        """The stored arrays, or None when there are none: absent, or damaged (then recomputed, with a warning)."""
        if not path.is_file():
            return None
        try:
            stored = read_npz(path)
        except StorageError as exc:
            log.warning("reference statistics %s are damaged; recomputing them (%s)", path, exc)
            return None
        return stored if "fingerprint" in stored else None

    def get(self, key: str, fingerprint: str, features: np.ndarray, meta: dict) -> dict:
        """The stored statistics of `key` if they were built from the same images (fingerprint), else store these."""
        path = self.path(key)
        stored = self.read(path)
        if stored is not None:
            if str(stored["fingerprint"]) == fingerprint:
                return {k: stored[k] for k in ("mu", "sigma", "features") if k in stored}
            old = str(stored["fingerprint"])
            if not self.overwrite:
                raise RefStatsConflict(
                    f"reference statistics {path} were built from a different image set than now (content "
                    f"fingerprint {old[:12]} vs {fingerprint[:12]}): the references changed under the same key. "
                    "Not overwriting. Delete that file, or rebuild with `python -m bench.aggregate "
                    "--overwrite-ref-stats`."
                )
        stats = {"mu": np.asarray(features, np.float64).mean(0), "features": np.asarray(features, np.float32)}
        if len(features) >= features.shape[1]:  # below that, sigma is implied by the stored features
            stats["sigma"] = statistics(features)["sigma"]
        buf = io.BytesIO()
        np.savez(buf, fingerprint=np.array(fingerprint), meta=np.array(json.dumps(meta, sort_keys=True)), **stats)
        atomic_write_bytes(path, buf.getvalue())
        return stats


def ref_stats_key(dataset: str, split: str, scope: str, ids: list[str], size: str, resize: int | None, net) -> str:
    ids_hash = hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:8]
    resize_label = f"resize{resize or 'none'}"
    parts = [dataset, split, scope, f"n{len(ids)}", f"ids{ids_hash}", size, resize_label, net.extractor_id]
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", "-".join(parts))


def set_level_provenance(net: InceptionFeatures | None, options: SetLevelOptions) -> str:
    extractor = net.provenance if net is not None else "InceptionV3 (not loaded)"
    resize = f"PIL bicubic to {options.resize}px, then " if options.resize else ""
    return (
        f"fid2048/kid: generated set vs its distinct references; {extractor}; 2048-d pool features, "
        f"{resize}TF1 bilinear to 299; FID in float64 = torch-fidelity fid_statistics_to_metric, or the same formula "
        "exactly in the span of the features when N_gen + N_ref < 2048 (column set_fid_method); KID = torch-fidelity "
        f"kid_features_to_metric, poly kernel (x.y/d+1)^3, {options.kid_subsets} subsets, seed {options.rng_seed}, "
        "subset size = min(kid_subset_size, N_gen, N_ref); NOT the paper's FID (that is fid64_pair)"
    )


def set_level_metrics(
    samples: pd.DataFrame,
    group_cols: list[str],
    root_dir: str | Path | list[str | Path],
    assets: SetLevelAssets = SetLevelAssets(),
    options: SetLevelOptions = SetLevelOptions(),
) -> tuple[pd.DataFrame, str]:
    """One row per (group, scope): FID-2048, KID and their N; and the provenance note for the table.

    Image paths in `samples` are relative to `root_dir` (or to the first of several roots that has them).
    Features and reference statistics go to `assets.cache_dir` (default: <root_dir>/.cache).
    """
    ok = samples[samples["status"] == "ok"] if "status" in samples.columns else samples.iloc[0:0]
    if ok.empty or "reference_path" not in ok.columns:
        reason = "no successful samples" if ok.empty else "rows have no reference_path (made before it existed)"
        return _all_nan(samples, group_cols, reason), set_level_provenance(None, options)
    try:
        net = load_inception(assets.inception_weights, assets.weights_cache_dir, device=assets.device)
    except MissingWeightsError as exc:
        log.warning("set-level FID/KID skipped: %s", exc)
        return _all_nan(samples, group_cols, f"Inception weights missing: {exc}"), set_level_provenance(None, options)
    roots = [Path(r) for r in (root_dir if isinstance(root_dir, list | tuple) else [root_dir])]
    cache_dir = Path(assets.cache_dir) if assets.cache_dir else roots[0] / ".cache"  # as a run's paths.cache_dir
    images = ImageSetFeatures(net, roots, cache_dir, options.resize, options.chunk)
    ref_cache = RefStatsCache(cache_dir, assets.overwrite_ref_stats)
    out = []
    for keys, group in ok.groupby(group_cols, sort=True, dropna=False):
        base = dict(zip(group_cols, keys if isinstance(keys, tuple) else (keys,), strict=True))
        by_category = group.groupby("category", sort=True) if "category" in group.columns else []
        scopes = [(ALL, group)] + [(f"category={c}", g) for c, g in by_category]
        for scope, rows in scopes:
            out.append({**base, "scope": scope, **score_scope(rows, scope, images, ref_cache, options)})
    frame, note = pd.DataFrame(out), set_level_provenance(net, options)
    reasons = frame.get("fid2048_nan_reason", pd.Series(dtype=object)).dropna().astype(str)
    conflicts = int(reasons.str.contains("Not overwriting").sum())
    if conflicts:
        note += f"; WARNING: {conflicts} cell(s) NaN: cached reference statistics of different images (see "
        note += "fid2048_nan_reason; delete the file or pass --overwrite-ref-stats)"
    return frame, note


def score_scope(rows: pd.DataFrame, scope: str, images: ImageSetFeatures, ref_cache, options) -> dict:
    gen_paths = list(rows["image_path"])
    ref_rows = rows.drop_duplicates("reference_path")
    ref_paths = list(ref_rows["reference_path"])
    if min(len(gen_paths), len(ref_paths)) < 2:  # too small for either metric: say so, extract nothing
        return fid_and_kid(np.zeros((len(gen_paths), 2048)), {"features": np.zeros((len(ref_paths), 2048))}, options)
    try:
        gen = images.features(gen_paths)
        ref_feats = images.features(ref_paths)
    except OSError as exc:
        reason = f"cannot read an image: {exc}"
        return {FID2048: math.nan, KID_MEAN: math.nan, "fid2048_nan_reason": reason, "kid_nan_reason": reason}
    split = str(rows["split"].iloc[0]) if "split" in rows.columns else "na"
    size = images.size_label(ref_paths)
    dataset, ids = str(rows["dataset"].iloc[0]), list(ref_rows["image_id"])
    key = ref_stats_key(dataset, split, scope, ids, size, options.resize, images.cache.extractor)
    meta = {"key": key, "ids": sorted(ref_rows["image_id"]), "options": asdict(options)}
    try:
        ref = ref_cache.get(key, images.fingerprint(ref_paths), ref_feats, meta)
    except RefStatsConflict as exc:  # refused, said in the row and the table notes; the other cells go on
        log.error("%s", exc)
        reason = str(exc)
        return {FID2048: math.nan, KID_MEAN: math.nan, "fid2048_nan_reason": reason, "kid_nan_reason": reason}
    return {**fid_and_kid(gen, ref, options), "ref_stats_key": key}


def _all_nan(samples: pd.DataFrame, group_cols: list[str], reason: str) -> pd.DataFrame:
    if samples.empty:
        return pd.DataFrame(columns=[*group_cols, "scope", FID2048, KID_MEAN])
    groups = samples[group_cols].drop_duplicates().to_dict("records")
    nan = {"scope": ALL, FID2048: math.nan, KID_MEAN: math.nan, "fid2048_nan_reason": reason, "kid_nan_reason": reason}
    return pd.DataFrame([{**g, **nan} for g in groups])


def add_set_level(
    table: pd.DataFrame,
    samples: pd.DataFrame,
    group_cols: list[str],
    root_dir: str | Path | list[str | Path],
    assets: SetLevelAssets = SetLevelAssets(),
    enabled: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """The table with the pooled (scope=all) set-level columns merged in; the long per-scope frame; provenance.

    enabled=False skips them (NaN with that reason): for quick table rebuilds that need no FID-2048
    (`python -m bench.aggregate --no-set-level`).
    """
    if not enabled:
        reason = "skipped (bench.aggregate --no-set-level)"
        by_scope, provenance = _all_nan(samples, group_cols, reason), reason
    else:
        by_scope, provenance = set_level_metrics(samples, group_cols, root_dir, assets)
    pooled = by_scope[by_scope["scope"] == ALL].drop(columns=["scope", "ref_stats_key"], errors="ignore")
    merged = table.merge(pooled, on=group_cols, how="left") if len(table) else table
    return merged, by_scope, provenance
