"""What a reader sees first: the paper-shaped headline table, the harness's compact table, the set-level table.

Each view is a frame of strings built from the full table (one row per model, dataset, label, ablation):
a cell is "value [lo, hi]" (percentile bootstrap 95%), followed by "(n=k)" when the mean rests on k
non-missing values, fewer than the row's N. `markdown_table`, `text_table` (a terminal, within a width)
and bench.reporting.html render the same frames.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.metrics import (
    ATTR_AUROC,
    BG_PSNR,
    BG_SSIM,
    CLIP_SCORE,
    FID64_PAIR,
    FID2048,
    KID_MEAN,
    MASK_IOU,
    SUBJECT_OK,
    SUBJECT_OK_ORACLE,
    TRUE_BG_PSNR,
)
from bench.reporting.tables import GROUP, PAPER_TABLE1, paper_incomparable

# (column, statistic, header) of the paper's Table 1 shape.
HEADLINE = [
    (FID64_PAIR, "mean", "FID64 mean"),
    (FID64_PAIR, "median", "FID64 median"),
    (CLIP_SCORE, "mean", "CLIP mean"),
    (CLIP_SCORE, "median", "CLIP median"),
]
# The harness's own columns (means), in order; chance lines are every other mask_iou_* column.
HARNESS = {
    BG_PSNR: "bg PSNR",
    BG_SSIM: "bg SSIM",
    TRUE_BG_PSNR: "true bg PSNR",
    MASK_IOU: "mask IoU",
    SUBJECT_OK: "subject ok",
    SUBJECT_OK_ORACLE: "subject (oracle)",
    ATTR_AUROC: "attr AUROC",
}
CHANCE_PREFIX = f"{MASK_IOU}_"  # mask_iou_<baseline>: the chance lines beside mask IoU
HEADLINE_DIGITS = 3  # significant digits in the headline and compact views (the paper's row: as reported)
FID_SANITY_N = 2048  # below this many images per set FID-2048's covariances are rank-deficient
FEW = "(n={})"


def fmt(value: float, digits: int = 4) -> str:
    return "" if pd.isna(value) else f"{value:.{digits}g}"


def fmt_float(value: object) -> object:
    """A float through `fmt`; anything else as it is."""
    return fmt(value) if isinstance(value, float) else value


def interval_cell(
    value: float, lo: float = np.nan, hi: float = np.nan, n: float = np.nan, total: float = np.nan, spec: str = ".4g"
) -> str:
    """The one cell format of every table: 'value [lo, hi] (n=k)'. The interval where `lo` is known, '(n=k)'
    where the value rests on n < total values; '' when the value is missing. `spec`: the number format."""
    if pd.isna(value):
        return ""
    number = lambda v: "" if pd.isna(v) else format(v, spec)  # noqa: E731
    text = number(value)
    if not pd.isna(lo):
        text += f" [{number(lo)}, {number(hi)}]"
    if not pd.isna(n) and not pd.isna(total) and int(n) < int(total):
        text += " " + FEW.format(int(n))
    return text


def mean_interval(row: pd.Series, metric: str, spec: str = ".4g") -> str:
    """A summary row's (bench.reporting.tables.summarize) mean of `metric` as 'mean [lo, hi]', without its n."""
    return interval_cell(row[f"{metric}_mean"], row[f"{metric}_mean_lo"], row[f"{metric}_mean_hi"], spec=spec)


def interval_view(table: pd.DataFrame, keys: list[str], n_column: str, metrics, spec: str = ".4g") -> pd.DataFrame:
    """`keys`, then N (from `n_column`), then each metric as 'mean [lo, hi]': a summary table for reading."""
    out = table[keys].copy()
    out.insert(len(keys), "N", table[n_column])
    for metric in metrics:
        out[metric] = [mean_interval(r, metric, spec) for _, r in table.iterrows()]
    return out


def cell(row: pd.Series, metric: str, stat: str = "mean", interval: bool = True, digits: int = 4) -> str:
    """A metric's `stat` in a summary row (bench.reporting.tables.summarize) as an `interval_cell`, its n
    against the row's N; '' when the column is missing."""
    col = f"{metric}_{stat}"
    lo, hi = (row.get(f"{col}_lo", np.nan), row.get(f"{col}_hi", np.nan)) if interval else (np.nan, np.nan)
    n, total = row.get(f"{metric}_n", np.nan), row.get("N", np.nan)
    return interval_cell(row.get(col, np.nan), lo, hi, n, total, spec=f".{digits}g")


def row_names(table: pd.DataFrame) -> list[str]:
    """'label' or 'label+ablation'; prefixed by 'model/dataset: ' when the table holds several."""
    several = table[["model", "dataset"]].drop_duplicates().shape[0] > 1
    names = []
    for _, row in table.iterrows():
        name = row["label"] if row["ablation"] == "none" else f"{row['label']}+{row['ablation']}"
        names.append(f"{row['model']}/{row['dataset']}: {name}" if several else str(name))
    return names


def headline_view(table: pd.DataFrame, samples: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The paper's Table 1 shape (method, N, failures, FID64 and CLIP mean and median with intervals) and
    its notes; the paper's own row is a row of it only where the profile is comparable."""
    view = pd.DataFrame({"method": row_names(table), "N": table["N"].astype(str), "failures": table["failures"]})
    view["failures"] = view["failures"].astype(str)
    for metric, stat, header in HEADLINE:
        view[header] = [cell(row, metric, stat, digits=HEADLINE_DIGITS) for _, row in table.iterrows()]
    why_not = paper_incomparable(samples)
    if not why_not:
        paper = {"method": PAPER_TABLE1["label"], "N": "?", "failures": "?"}
        paper.update({h: fmt(PAPER_TABLE1[m][s]) for m, s, h in HEADLINE})
        view = pd.concat([view, pd.DataFrame([paper])], ignore_index=True)
    clip = ", ".join(sorted(samples["clip_model"].dropna().astype(str).unique())) if "clip_model" in samples else ""
    notes = [
        "FID64 = the paper's per-pair 64-d Inception distance (fid64_pair, lower is better), not FID-2048; "
        f"CLIP = 100*max(cos, 0) (clip_score, higher is better) with {clip or 'no CLIP'}.",
        "N = successful samples (failures counted apart); [lo, hi] = percentile bootstrap 95% over reference "
        "images; (n=k) = the mean of k < N values (the others are missing: see the *_nan_reason columns).",
        f"The paper's {why_not}" if why_not else "The paper's row: as reported in its Table 1 (N not stated).",
    ]
    return view, notes


def harness_view(table: pd.DataFrame) -> pd.DataFrame | None:
    """Means of background preservation and, where there is truth, mask IoU beside its chance lines, subject
    correctness and the attribution headline; None when the table has none of them."""
    present = lambda m: f"{m}_mean" in table and table[f"{m}_mean"].notna().any()  # noqa: E731
    means = [c[: -len("_mean")] for c in table.columns if c.endswith("_mean")]
    chance = sorted(m for m in means if m.startswith(CHANCE_PREFIX))
    columns = []
    for metric, header in HARNESS.items():
        if present(metric):
            columns.append((metric, header))
        if metric == MASK_IOU and present(metric):
            columns += [(c, f"IoU {c[len(CHANCE_PREFIX) :]}") for c in chance if present(c)]
    if not columns:
        return None
    view = pd.DataFrame({"method": row_names(table), "N": table["N"].astype(str)})
    for metric, header in columns:
        view[header] = [cell(row, metric, digits=HEADLINE_DIGITS) for _, row in table.iterrows()]
    return view


def set_level_view(table: pd.DataFrame) -> tuple[pd.DataFrame | None, list[str]]:
    """FID-2048 with N_gen and N_ref beside it, KID mean and std (n/a when every subset is the whole set)."""
    if FID2048 not in table or table[FID2048].isna().all():
        return None, []
    view = pd.DataFrame({"method": row_names(table)})
    view["FID-2048"] = table[FID2048].map(fmt)
    view["N_gen"] = table["fid2048_N_gen"].map(lambda v: "" if pd.isna(v) else str(int(v)))
    view["N_ref"] = table["fid2048_N_ref"].map(lambda v: "" if pd.isna(v) else str(int(v)))
    view["KID mean"] = table[KID_MEAN].map(fmt)
    std_na = table["kid_std_reason"].notna() if "kid_std_reason" in table else pd.Series(False, index=table.index)
    view["KID std"] = [("n/a" if na else fmt(v)) for v, na in zip(table["kid_std"], std_na, strict=True)]
    view["KID subset"] = table["kid_subset_size"].map(lambda v: "" if pd.isna(v) else str(int(v)))
    notes = ["Set-level FID-2048 and KID against the reference set: not the paper's numbers (that is FID64)."]
    n_min = pd.concat([table["fid2048_N_gen"], table["fid2048_N_ref"]]).min()
    if n_min < FID_SANITY_N:
        notes.append(
            f"WARNING: N = {int(n_min)} < {FID_SANITY_N} images per set: FID-2048 is a sanity check only (rank-"
            "deficient covariances; its small-N bias depends on the model, Chong & Forsyth 2020): compare at equal "
            "N, prefer KID."
        )
    if std_na.any():
        notes.append("KID std n/a: the subset is the whole of both sets, so every subset is the same.")
    return view, notes


def wide_view(table: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Every column: one per (metric, statistic) as 'value [interval] (n=k)', then the set-level values."""
    view = table[[c for c in [*GROUP, "N", "failures"] if c in table.columns]].copy()
    for metric in metrics:
        for stat in ("mean", "median"):
            if f"{metric}_{stat}" in table.columns:
                view[f"{metric}_{stat}"] = [cell(row, metric, stat) for _, row in table.iterrows()]
    for col in table.columns:
        if col.startswith((FID2048, "kid")) and not col.endswith(("_reason", "_N")):
            view[col] = table[col].map(fmt)
    return view


def delta_view(deltas: pd.DataFrame) -> pd.DataFrame:
    """Paired deltas (bench.reporting.tables.paired_row) as 'mean [lo, hi] (n=k)' per metric, k = pairs where
    both values exist, against N_paired."""
    view = deltas[[c for c in [*GROUP, "N_paired"] if c in deltas]].copy()
    for col in deltas.columns:
        if col.endswith("_delta"):
            view[col] = [
                interval_cell(r[col], r[f"{col}_lo"], r[f"{col}_hi"], r[f"{col}_n"], r["N_paired"])
                for _, r in deltas.iterrows()
            ]
    return view


def summary_view(table: pd.DataFrame, spec: str = ".4g") -> pd.DataFrame:
    """Any table in summarize's scheme as text: every other column as it is (floats through `fmt`), then each
    metric (a `<m>_mean` beside its `<m>_n`) as one `interval_cell` of its mean, n against N."""
    metrics = [c[: -len("_mean")] for c in table.columns if c.endswith("_mean") and f"{c[: -len('_mean')]}_n" in table]
    suffixes = ("_mean", "_mean_lo", "_mean_hi", "_median", "_median_lo", "_median_hi", "_n")
    statistics = {f"{m}{suffix}" for m in metrics for suffix in suffixes}
    view = table[[c for c in table.columns if c not in statistics]].map(fmt_float)
    for metric in metrics:
        view[metric] = [
            interval_cell(
                r[f"{metric}_mean"],
                r.get(f"{metric}_mean_lo", np.nan),
                r.get(f"{metric}_mean_hi", np.nan),
                r[f"{metric}_n"],
                r.get("N", np.nan),
                spec,
            )
            for _, r in table.iterrows()
        ]
    return view


def markdown_table(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def split_cell(text: str) -> tuple[str, str]:
    """'v [lo, hi] (n=k)' -> ('v (n=k)', '[lo, hi]'): a terminal prints the interval on a second line."""
    if " [" not in text:
        return text, ""
    head, rest = text.split(" [", 1)
    interval, tail = rest.split("]", 1)
    return head + tail, f"[{interval}]"


def text_table(frame: pd.DataFrame, width: int = 100, intervals: bool = True) -> str:
    """A plain aligned table for a terminal: intervals on a second line, columns split into blocks (each
    repeating the first column) so that no line is wider than `width`."""
    cols = list(frame.columns)
    cells = {c: [split_cell(str(v)) for v in frame[c]] for c in cols}
    if not intervals:
        cells = {c: [(a, "") for a, _ in v] for c, v in cells.items()}
    widths = {c: max([len(c), *(max(len(a), len(b)) for a, b in cells[c])]) for c in cols}
    first, blocks, block = cols[0], [], []
    for c in cols[1:]:
        if block and widths[first] + sum(widths[b] + 2 for b in [*block, c]) > width:
            blocks.append(block)
            block = []
        block.append(c)
    blocks.append(block)
    out = []
    for block in blocks:
        shown = [first, *block]
        out.append(aligned(shown, shown, widths))
        for i in range(len(frame)):
            out.append(aligned(shown, [cells[c][i][0] for c in shown], widths))
            if any(cells[c][i][1] for c in shown):
                out.append(aligned(shown, [cells[c][i][1] for c in shown], widths))
        out.append("")
    return "\n".join(out).rstrip("\n")


def aligned(cols: list[str], parts: list[str], widths: dict[str, int]) -> str:
    """One line: the first column left-aligned, the others right-aligned, two spaces apart."""
    pairs = enumerate(zip(cols, parts, strict=True))
    return "  ".join(p.ljust(widths[c]) if i == 0 else p.rjust(widths[c]) for i, (c, p) in pairs).rstrip()
