"""Table 1 and ablation tables from per-sample rows: means, medians and bootstrap intervals.

Intervals are percentile bootstrap 95% intervals that resample *reference images* (all samples of an
image move together, since prompts on one scene are not independent), seeded per table cell so a
cell's interval does not depend on the other rows. Ablation deltas are paired: the same
(image, prompt, seed) under the ablation and under the full method.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from bench.metrics import ATTR_AUROC, CLIP_SCORE, FID64_PAIR, MASK_IOU, METRIC_CAPS, PER_SAMPLE_METRICS

GROUP = ["model", "dataset", "label", "ablation"]
SAMPLE_ID = ["image_id", "prompt", "seed"]
N_BOOT = 1000
ALPHA = 0.05

# The proposed method's row of the paper's Table 1 (docs/paper.md §5; the baseline rows were not recoverable).
# fid64_pair is the paper's per-pair 64-d "FID"; CLIP is assumed to be 100*max(cos, 0) with ViT-L/14.
PAPER_TABLE1 = {
    "label": "Abs-Grad-SAM (paper)",
    FID64_PAIR: {"mean": 6.89, "median": 5.32},
    CLIP_SCORE: {"mean": 27.98, "median": 28.24},
}
# The only profile whose numbers the paper's row can stand beside: SD1.5, Places365, the openai ViT-L/14 CLIP.
PAPER_PROFILE = {"model": "sd15", "dataset": "places365", "clip_model": "open_clip ViT-L-14/openai"}
PAPER_METHOD = ("gradsam", "none")  # (label, ablation) of the paper's method: paired deltas are taken against it


def cell_rng(*key: object) -> np.random.Generator:
    """A generator seeded by the cell's identity alone (table, group, metric)."""
    digest = hashlib.sha256("\x1f".join(map(str, key)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


# Statistics cluster_bootstrap takes over all resamples at once (axis=1), when the clusters have one size.
ROW_STATISTICS = (np.mean, np.median)


def cluster_bootstrap(
    values: np.ndarray,
    clusters: np.ndarray,
    stat: Callable[[np.ndarray], float],
    rng: np.random.Generator,
    n_boot: int = N_BOOT,
) -> tuple[float, float]:
    """Percentile (1-ALPHA) interval of `stat` when whole clusters are resampled with replacement."""
    if len(values) < 2:
        return (np.nan, np.nan)
    codes, inverse = np.unique(clusters, return_inverse=True)
    if len(codes) < 2:
        return (np.nan, np.nan)
    members = [np.flatnonzero(inverse == c) for c in range(len(codes))]
    if stat in ROW_STATISTICS and len({len(m) for m in members}) == 1:
        # Clusters of one size (e.g. one row per image): every resample has the same length, so all of them form
        # one matrix, from the same draws in the same order as the loop below, and each row's statistic is the
        # loop's, bit for bit (tests/reporting/test_aggregate.py); about 40x faster on two clusters.
        picked = rng.integers(0, len(codes), (n_boot, len(codes)))
        stats = stat(values[np.stack(members)[picked].reshape(n_boot, -1)], axis=1)
    else:
        stats = np.empty(n_boot)
        for b in range(n_boot):
            picked = rng.integers(0, len(codes), len(codes))
            stats[b] = stat(values[np.concatenate([members[c] for c in picked])])
    return float(np.quantile(stats, ALPHA / 2)), float(np.quantile(stats, 1 - ALPHA / 2))


# Numeric per-sample columns that tables aggregate besides PER_SAMPLE_METRICS, when a run wrote them: further
# mask IoU chance lines (mask_iou_<baseline>) and the attribution study's headline (attr_auroc); higher is better.
EXTRA_METRIC_PREFIXES = (f"{MASK_IOU}_", ATTR_AUROC)


def metric_columns(samples: pd.DataFrame) -> list[str]:
    """PER_SAMPLE_METRICS in their order, then any numeric EXTRA_METRIC_PREFIXES column the rows hold."""
    known = [m for m in PER_SAMPLE_METRICS if m in samples.columns]
    extra = [
        c
        for c in samples.columns
        if c.startswith(EXTRA_METRIC_PREFIXES)
        and c not in known
        and not c.endswith(("_provenance", "_reason"))
        and pd.api.types.is_numeric_dtype(samples[c])
    ]
    return known + sorted(extra)


def higher_is_better(metric: str) -> bool:
    return PER_SAMPLE_METRICS.get(metric, True)


def metric_values(frame: pd.DataFrame, metric: str) -> pd.Series:
    """A metric's values as tables use them: numeric, capped (METRIC_CAPS: a PSNR of identical pixels, inf in
    samples.csv, counts as 100 dB), and every other non-finite value missing (NaN). The one place this is done."""
    values = pd.to_numeric(frame[metric], errors="coerce").astype(float)
    if metric in METRIC_CAPS:
        values = values.clip(upper=METRIC_CAPS[metric])
    return values.where(np.isfinite(values))


def full_method_first(table: pd.DataFrame, by: Sequence[str] = GROUP) -> pd.DataFrame:
    """Rows sorted by `by`, except that each label's full method (ablation none) comes before its ablations."""
    if table.empty or "ablation" not in by:
        return table
    order = list(by)
    order.insert(order.index("ablation"), "_ablated")
    key = table.assign(_ablated=table["ablation"] != "none")
    return key.sort_values(order, kind="stable").drop(columns="_ablated").reset_index(drop=True)


STATISTICS = {"mean": np.mean, "median": np.median}


def summarize(
    samples: pd.DataFrame,
    by: Sequence[str] = GROUP,
    intervals: bool = True,
    table: str = "table1",
    metrics: Sequence[str] | None = None,
    stats: Sequence[str] = ("mean", "median"),
    sort: bool = True,
) -> pd.DataFrame:
    """The one summary of per-sample rows (Table 1, ablations, breakdowns, the attribution study).

    Per group of `by` (sorted, or in order of appearance): N (successful samples: status "ok", every row where
    there is no status column), failures, and per metric (default: `metric_columns`) `<m>_<stat>` for each of
    `stats` with its 95% interval `<m>_<stat>_lo`, `<m>_<stat>_hi` (when `intervals`), then `<m>_n`, the count
    of non-missing values behind it (< N when some are NaN). Each interval is seeded by its cell (`cell_rng`:
    the table, the row so far, the metric and the statistic).
    """
    grouped = samples.groupby(list(by), sort=sort, dropna=False)
    metrics = metric_columns(samples) if metrics is None else list(metrics)
    # Each metric's values and each row's status are taken once for all rows, and each group picks its rows by
    # position: `ngroup` numbers the groups in the order the loop sees them, and a stable argsort keeps each
    # group's rows in their order, so every cell sees the values it would see from its own group's frame.
    numbers = grouped.ngroup().to_numpy()
    rows_of = np.split(np.argsort(numbers, kind="stable"), np.cumsum(np.bincount(numbers))[:-1]) if len(numbers) else []
    ok_rows = (samples["status"] == "ok").to_numpy() if "status" in samples else np.ones(len(samples), dtype=bool)
    columns = {m: metric_values(samples, m).to_numpy() for m in metrics} if len(samples) else {}
    images = samples["image_id"].to_numpy() if metrics and len(samples) else None
    out = []
    for (keys, _), rows in zip(grouped, rows_of, strict=True):
        ok = rows[ok_rows[rows]]
        row = dict(zip(by, keys if isinstance(keys, tuple) else (keys,), strict=True))
        row["N"] = len(ok)
        row["failures"] = len(rows) - len(ok)
        for m in metrics:
            all_values = columns[m][ok]
            keep = ~np.isnan(all_values)
            values = all_values[keep]
            clusters = images[ok][keep]
            for name in stats:
                row[f"{m}_{name}"] = float(STATISTICS[name](values)) if len(values) else np.nan
                if intervals:
                    rng = cell_rng(table, *row.values(), m, name)
                    row[f"{m}_{name}_lo"], row[f"{m}_{name}_hi"] = cluster_bootstrap(
                        values, clusters, STATISTICS[name], rng
                    )
            row[f"{m}_n"] = int(len(values))
        out.append(row)
    return full_method_first(pd.DataFrame(out), by)


def paper_incomparable(samples: pd.DataFrame) -> str:
    """Why rows made from `samples` cannot stand beside the paper's row; "" when they can (PAPER_PROFILE)."""
    clip = samples["clip_model"].dropna().unique() if "clip_model" in samples else []
    found = {
        "model": sorted(samples["model"].astype(str).unique()),
        "dataset": sorted(samples["dataset"].astype(str).unique()),
        "clip_model": sorted(map(str, clip)) or ["none"],
    }
    wrong = [
        f"{key}={','.join(values)}"
        for key, values in found.items()
        if not all(v.startswith(PAPER_PROFILE[key]) for v in values)
    ]
    if not wrong:
        return ""
    want = ", ".join(f"{k}={v}" for k, v in PAPER_PROFILE.items())
    return f"row is absent: it is comparable only with {want}; these rows have {'; '.join(wrong)}."


def paper_comparison(table: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """Long format, for the rows comparable with the paper (PAPER_PROFILE): ours, the paper's, ours - paper's."""
    rows = []
    for _, ours in table.iterrows():
        mine = samples[(samples[GROUP] == ours[GROUP]).all(axis=1)]
        if paper_incomparable(mine):
            continue
        for metric in (FID64_PAIR, CLIP_SCORE):
            for stat in ("mean", "median"):
                value = ours.get(f"{metric}_{stat}", np.nan)
                paper = PAPER_TABLE1[metric][stat]
                rows.append(
                    {
                        **{k: ours[k] for k in GROUP},
                        "metric": metric,
                        "statistic": stat,
                        "ours": value,
                        "paper": paper,
                        "difference": value - paper,
                    }
                )
    columns = [*GROUP, "metric", "statistic", "ours", "paper", "difference"]
    return pd.DataFrame(rows, columns=columns)


def paired_row(abl: pd.DataFrame, base: pd.DataFrame, metrics: list[str], key: tuple) -> dict:
    """Mean change of each metric on the samples present in both (indexed by SAMPLE_ID), with 95% intervals."""
    common = abl.index.intersection(base.index)
    row = {"N_paired": len(common)}
    for m in metrics:
        diff = metric_values(abl.loc[common], m) - metric_values(base.loc[common], m)
        keep = diff.notna().to_numpy()
        values = diff.to_numpy()[keep]
        clusters = np.asarray(common.get_level_values("image_id"))[keep]
        row[f"{m}_delta"] = float(np.mean(values)) if len(values) else np.nan
        lo, hi = cluster_bootstrap(values, clusters, np.mean, cell_rng(*key, m))
        row[f"{m}_delta_lo"], row[f"{m}_delta_hi"] = lo, hi
        row[f"{m}_delta_n"] = int(len(values))
    return row


def paired_deltas(samples: pd.DataFrame, baseline_ablation: str = "none", table: str = "ablations") -> pd.DataFrame:
    """Per ablation: each metric's mean change against the full method on the same samples, with a 95% interval."""
    ok = samples[samples["status"] == "ok"]
    out = []
    for (model, dataset, label), group in ok.groupby(["model", "dataset", "label"], sort=True):
        base = group[group["ablation"] == baseline_ablation].set_index(SAMPLE_ID)
        for ablation, abl in group.groupby("ablation", sort=True):
            if ablation == baseline_ablation:
                continue
            ident = {"model": model, "dataset": dataset, "label": label, "ablation": ablation}
            key = (table, model, dataset, label, ablation)
            out.append({**ident, **paired_row(abl.set_index(SAMPLE_ID), base, metric_columns(samples), key)})
    return pd.DataFrame(out)


def deltas_against(samples: pd.DataFrame, reference: tuple[str, str] = PAPER_METHOD) -> pd.DataFrame:
    """Per (model, dataset) and every other row: each metric's paired mean change against the `reference`
    (label, ablation) row on the same samples (image, prompt, seed), with a 95% interval. Empty without it."""
    ok = samples[samples["status"] == "ok"]
    out = []
    for (model, dataset), group in ok.groupby(["model", "dataset"], sort=True):
        is_ref = (group["label"] == reference[0]) & (group["ablation"] == reference[1])
        if not is_ref.any():
            continue
        base = group[is_ref].set_index(SAMPLE_ID)
        for (label, ablation), rows in group[~is_ref].groupby(["label", "ablation"], sort=True):
            ident = {"model": model, "dataset": dataset, "label": label, "ablation": ablation}
            key = ("against", *reference, model, dataset, label, ablation)
            out.append({**ident, **paired_row(rows.set_index(SAMPLE_ID), base, metric_columns(samples), key)})
    return pd.DataFrame(out)
