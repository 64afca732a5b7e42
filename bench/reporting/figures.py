"""Figures of a results table: sample grids (reference | masks in timestep order | generated), per-sample box
plots, and paired deltas against the paper's method.

Matplotlib with the Agg backend; the PNG files depend only on the rows and the images, so
regenerating them from unchanged rows gives the same bytes. Text is plain: mathtext is off for every
harness figure (a prompt 'Tiger near $HOME_$USER' is drawn as written, never parsed as a formula), and
every figure is written by `save_figure`, atomically (a kill never leaves half a PNG under its name).
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
# Data labels (prompts, labels, file names) are text, never TeX: '$' is a dollar sign in every harness figure.
matplotlib.rcParams["text.parse_math"] = False
import re  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from bench.records import atomic_write_bytes  # noqa: E402
from bench.reporting.tables import full_method_first, higher_is_better, metric_columns, metric_values  # noqa: E402

PNG_METADATA = {"Software": None}


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Render `fig` to PNG bytes, write them to `path` through a temporary file and an atomic rename, close it."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi, metadata=PNG_METADATA)
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def read_rgb(path: Path) -> np.ndarray | None:
    return np.asarray(Image.open(path).convert("RGB")) if path.is_file() else None


def mask_heat(path: Path, size: int) -> np.ndarray:
    """A saved mask PNG ([h, C*w] channels side by side, or [h, w]) -> mean over channels, [size, size] in [0, 1]."""
    mask = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
    h, w = mask.shape
    if w % h == 0 and w // h > 1:
        mask = mask.reshape(h, w // h, h).mean(axis=1)  # [h, C, w] -> mean over C
    return np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).resize((size, size), Image.NEAREST)) / 255.0


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """Kept (subject) elements tinted red over the image."""
    red = np.zeros_like(image, dtype=np.float32)
    red[..., 0] = 255
    alpha = 0.55 * heat[..., None]
    return ((1 - alpha) * image + alpha * red).astype(np.uint8)


def mask_order(path: Path) -> tuple:
    """Masks in sampling order: mask_i5, mask_i18, mask_i28 (by injection index), then unnumbered ones by name."""
    found = re.search(r"_i(\d+)$", path.stem)
    return (0, int(found.group(1)), path.stem) if found else (1, 0, path.stem)


def pick_samples(samples: pd.DataFrame, n: int) -> list[tuple]:
    """The first n sample identities (sorted) that every row of the table generated successfully."""
    ok = samples[samples["status"] == "ok"]
    labels = ok.groupby(["label", "ablation"]).ngroups
    counts = ok.groupby(["image_id", "prompt", "seed"]).size()
    complete = counts[counts == labels].index.tolist()
    return sorted(complete)[:n]


def sample_grid(samples: pd.DataFrame, root: Path, out_path: Path, identity: tuple) -> Path | None:
    """One sample under every method: reference | each saved mask over the generated image | generated."""
    image_id, prompt, seed = identity
    rows = samples[(samples["image_id"] == image_id) & (samples["prompt"] == prompt) & (samples["seed"] == seed)]
    rows = full_method_first(rows[rows["status"] == "ok"], ["label", "ablation"])
    rows = rows[[(root / p).is_file() for p in rows["image_path"]]]  # images may have been cleaned away
    if rows.empty:
        return None
    masks_dirs = rows["masks_dir"].tolist() if "masks_dir" in rows else [""] * len(rows)
    mask_lists = [
        sorted((root / d).glob("*.png"), key=mask_order) if isinstance(d, str) and d else [] for d in masks_dirs
    ]
    n_cols = 2 + max((len(m) for m in mask_lists), default=0)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.9 * n_cols, 1.9 * len(rows)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, ((_, row), masks) in enumerate(zip(rows.iterrows(), mask_lists, strict=True)):
        generated = read_rgb(root / row["image_path"])
        reference = read_rgb(root / row["reference_path"]) if isinstance(row.get("reference_path"), str) else None
        if reference is not None:
            axes[r, 0].imshow(reference)
        axes[r, 0].set_title("reference" if r == 0 else "", fontsize=7)
        for c, mask_path in enumerate(masks, start=1):
            axes[r, c].imshow(overlay(generated, mask_heat(mask_path, generated.shape[0])))
            axes[r, c].set_title(mask_path.stem, fontsize=7)
        axes[r, -1].imshow(generated)
        axes[r, -1].set_title("generated" if r == 0 else "", fontsize=7)
        axes[r, 0].text(
            -0.1,
            0.5,
            f"{row['label']}\n{row['ablation']}",
            transform=axes[r, 0].transAxes,
            ha="right",
            va="center",
            fontsize=7,
        )
    fig.suptitle(f"{prompt!r} on {image_id} (seed {seed})", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out_path)


def box_plots(samples: pd.DataFrame, out_dir: Path, metrics: list[str] | None = None) -> list[Path]:
    """One box plot per metric: the per-sample distribution of each table row."""
    ok = samples[samples["status"] == "ok"]
    names = metrics or metric_columns(ok)
    paths = []
    for metric in names:
        if metric not in ok.columns:
            continue
        groups = [
            (f"{lab}\n{abl}" if abl != "none" else lab, metric_values(g, metric).dropna())
            for (lab, abl), g in ok.groupby(["label", "ablation"], sort=True)
        ]
        groups = [(name, v.to_numpy()) for name, v in groups if len(v)]
        if not groups:
            continue
        fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(groups)), 3.2))
        ax.boxplot([v for _, v in groups], showmeans=True)
        ax.set_xticks(range(1, len(groups) + 1), [n for n, _ in groups], rotation=30, ha="right", fontsize=7)
        direction = "higher is better" if higher_is_better(metric) else "lower is better"
        ax.set_title(f"{metric} per sample ({direction})", fontsize=9)
        fig.tight_layout()
        paths.append(save_figure(fig, out_dir / f"box_{metric}.png"))
    return paths


def delta_plot(deltas: pd.DataFrame, out_path: Path, reference: str, metrics: list[str]) -> Path | None:
    """One panel per metric: each row's paired mean change against `reference`, with its 95% interval."""
    metrics = [m for m in metrics if f"{m}_delta" in deltas and deltas[f"{m}_delta"].notna().any()]
    if deltas.empty or not metrics:
        return None
    pairs = zip(deltas["label"], deltas["ablation"], strict=True)
    names = [lab if abl == "none" else f"{lab}+{abl}" for lab, abl in pairs]
    y = np.arange(len(deltas))
    n_cols = min(3, len(metrics))
    n_rows = -(-len(metrics) // n_cols)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(2.8 * n_cols + 1.6, (0.3 * len(deltas) + 1.0) * n_rows), squeeze=False
    )
    for ax in axes.flat[len(metrics) :]:
        ax.axis("off")
    for i, (ax, metric) in enumerate(zip(axes.flat, metrics, strict=False)):
        mid = deltas[f"{metric}_delta"].to_numpy(float)
        lo, hi = deltas[f"{metric}_delta_lo"].to_numpy(float), deltas[f"{metric}_delta_hi"].to_numpy(float)
        err = np.vstack([mid - lo, hi - mid])
        ax.errorbar(mid, y, xerr=np.where(np.isfinite(err), err, 0), fmt="o", ms=3, capsize=2, color="#1f5fa8")
        ax.axvline(0, color="#888", lw=0.8)
        better = "higher" if higher_is_better(metric) else "lower"
        ax.set_title(f"{metric}\n({better} is better)", fontsize=8)
        ax.set_yticks(y, names if i % n_cols == 0 else [""] * len(y), fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
        ax.invert_yaxis()
    fig.suptitle(f"Paired change against {reference} (same image, prompt, seed; 95% interval)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out_path)


def sample_grids(samples: pd.DataFrame, root: Path, out_dir: Path, n_samples: int = 3) -> list[Path]:
    """Grids for a few fixed samples that every row generated."""
    paths = [
        sample_grid(samples, root, out_dir / f"samples_{i}.png", identity)
        for i, identity in enumerate(pick_samples(samples, n_samples))
    ]
    return [p for p in paths if p is not None]
