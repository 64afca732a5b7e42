"""The attribution study: does a score find the subject? Recorded maps + subject truth -> tables, figures.

Inputs are run folders whose samples recorded their maps (`method.attribution.record=true`,
masks/<sample>/maps.npz) and a truth per generated image. Two truths, reported apart:

    truth=no_manipulation   the subject region of the final image of the no_manipulation chain of the
                            same (image, prompt, seed): no mask shaped it. Maps of that chain.
    truth=method_output     the subject region of the method's own output. Maps of the method's chain.

A map [C, h, w] is summed over channels to one cell map [h, w]; layer sets are sums of per-layer
maps (`last`, `all`, `res<k>`) or single layers (`layer:<name>`). Every sample gets the two chance
maps (uniform random, centre prior) at the same cells. Per (truth, kind, layer set, scoring step):
mean AUROC, AP, pointing game and IoU at the true area, N, and a bootstrap 95% interval resampling
reference images (bench.reporting.tables.summarize, the Table 1 columns: <m>_mean, <m>_mean_lo, <m>_mean_hi, <m>_n).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from bench.records import MAPS_FILE, maps_from_npz
from bench.reporting.tables import cell_rng
from bench.sd.config import from_mapping
from bench.toy.oracle import colour_region, prompt_subject
from bench.truth.base import latent_truth
from bench.truth.scores import METRICS, attribution_metrics, centre_prior, uniform_map
from method.config import MaskConfig
from method.masks import union_mask

KEYS = ["truth", "label", "kind", "layer_set", "index", "timestep"]
CHANCE = ("chance:uniform", "chance:centre")


def load_maps(path: Path) -> pd.DataFrame:
    """A maps.npz -> one row per map: kind, layer, layer_set, index, timestep, side, map (float32 [C, h, w])."""
    records = maps_from_npz(path)
    fields = ("kind", "layer", "layer_set", "index", "timestep", "side")
    frame = pd.DataFrame({name: [getattr(r, name) for r in records] for name in fields})
    frame["map"] = [r.values for r in records]
    return frame


def layer_sets(layers: pd.DataFrame) -> dict[str, list[str]]:
    """Layer sets of one kind's per-layer maps (rows in execution order): last, all, res<k>, each layer."""
    names, sides = list(layers["layer"]), list(layers["side"])
    sets = {"last": names[-1:], "all": names}
    for side in sorted(set(sides), reverse=True):
        sets[f"res{side}"] = [n for n, s in zip(names, sides, strict=True) if s == side]
    sets |= {f"layer:{n}": [n] for n in names}
    return sets


def cell_maps(maps: pd.DataFrame) -> Iterable[tuple[str, str, int, int, np.ndarray]]:
    """(kind, layer set, index, timestep, map [C, h, w]) for every recorded kind and layer set."""
    for (kind, index, timestep), group in maps.groupby(["kind", "index", "timestep"], sort=False):
        own = group[group["layer"].isna()]  # the map a mask was thresholded from, or a layer-free kind's
        for _, row in own.iterrows():
            layer_set = row["layer_set"]  # a string, or missing (None/NaN in the frame) for a layer-free kind
            yield kind, ("own:" + layer_set if isinstance(layer_set, str) else "-"), index, timestep, row["map"]
        per_layer = group.drop(own.index)
        if per_layer.empty:
            continue
        by_name = dict(zip(per_layer["layer"], per_layer["map"], strict=True))
        for name, members in layer_sets(per_layer).items():
            total = np.zeros_like(by_name[members[0]])
            for member in members:
                total = total + by_name[member]
            yield kind, name, index, timestep, total


@dataclass(frozen=True)
class TruthCells:
    """One sample's truth at the maps' grid, as `truth_of` may return it (a bare bool array is the same with
    no reason and no columns)."""

    cells: np.ndarray  # bool [h, w]: latent cells at least half covered by the subject
    reason: str = ""  # the recorded reason when the truth is empty ("" otherwise)
    columns: dict = field(default_factory=dict)  # extra row columns (truth_threshold, truth_source, ...)


def nan_reason(cells: np.ndarray, recorded: str = "") -> str:
    """Why a truth's metrics are NaN ("" when they are not): empty, or covering every cell."""
    if not cells.any():
        why = "no latent cell is at least half subject: empty truth"
        return f"{recorded}; {why}" if recorded else why
    if cells.all():
        return "the truth covers every latent cell: nothing to rank against"
    return ""


def toy_truth(image: np.ndarray, prompt: str, height: int, width: int) -> np.ndarray:
    """bool [h, w]: latent cells at least half covered by the oracle's region of the prompt's colour."""
    colour, _ = prompt_subject(prompt)
    return latent_truth(colour_region(image, colour), height, width) >= 0.5


def sample_rows(
    row: pd.Series, maps: pd.DataFrame, truth: np.ndarray | TruthCells, truth_name: str
) -> tuple[list, list]:
    """Attribution metrics of every map of one sample (channels summed), and of the two chance maps at each
    scoring step; and the mask-rule rows of its Grad-SAM maps (own, all, res8).

    An empty truth (or one covering every cell) gives NaN metrics with the reason in `truth_nan_reason`.
    """
    if not isinstance(truth, TruthCells):
        truth = TruthCells(np.asarray(truth, dtype=bool))
    extra, truth = truth, truth.cells
    base = {k: row[k] for k in ("sample_key", "image_id", "prompt", "seed", "label")}
    base |= {"truth": truth_name, **extra.columns, "true_area": float(truth.mean())}
    base["truth_nan_reason"] = nan_reason(truth, extra.reason)
    rows, masks = [], []
    for kind, layer_set, index, timestep, channels in cell_maps(maps):
        keys = {"kind": kind, "layer_set": layer_set, "index": index, "timestep": timestep}
        rows.append({**base, **keys} | attribution_metrics(channels.sum(axis=0), truth))
        if kind == "gradsam" and (layer_set.startswith("own:") or layer_set in MASK_SETS):
            masks += [{**base, **keys, **m} for m in mask_rows(channels, truth)]
    rng = sample_rng_of(row)
    for index, timestep in sorted(set(zip(maps["index"], maps["timestep"], strict=True))):
        chance = {"chance:uniform": uniform_map(*truth.shape, rng), "chance:centre": centre_prior(*truth.shape)}
        for kind, cell in chance.items():
            rows.append({**base, "kind": kind, "layer_set": "-", "index": index, "timestep": timestep})
            rows[-1] |= attribution_metrics(cell, truth)
    return rows, masks


def sample_rng_of(row: pd.Series) -> np.random.Generator:
    """The uniform chance map's generator: a function of the sample's identity (image, prompt, seed) alone."""
    return cell_rng("attribution_uniform", row["image_id"], row["prompt"], row["seed"])


MASK_SETS = ("all", "res8")  # Grad-SAM layer sets whose masks are also measured (beside the method's own)
MASK_RULES = {  # the mask rule ablations measured on the recorded own map (defaults: the paper's)
    "per_channel": {},
    "union": {"channel_rule": "union"},
    "sum": {"channel_rule": "sum"},
    "per_channel, no dilation": {"dilation": {"enabled": False}},
    "union, no dilation": {"channel_rule": "union", "dilation": {"enabled": False}},
    "sum, no dilation": {"channel_rule": "sum", "dilation": {"enabled": False}},
    "per_channel, scale-aware dilation": {"dilation": {"scale_aware": True}},
    "sum, scale-aware dilation": {"channel_rule": "sum", "dilation": {"scale_aware": True}},
}


def mask_rows(channels: np.ndarray, truth: np.ndarray) -> list[dict]:
    """A score [C, h, w] thresholded by each mask rule: IoU with the truth and the kept fraction.

    A cell is kept when its mask (union over channels, as the sampler's `subject_mask`) is on. Also:
    the mean correlation between the channels' maps, and in how many channels a kept cell is kept
    (the paper's rule without dilation).
    """
    score = torch.from_numpy(np.ascontiguousarray(channels, dtype=np.float32))[None]  # [1, C, h, w]
    flat = channels.reshape(channels.shape[0], -1)
    corr = np.corrcoef(flat)[np.triu_indices(len(flat), 1)]
    paper = union_mask(score, from_mapping(MaskConfig, {"dilation": {"enabled": False}}, "mask")).numpy()
    kept = paper.sum(axis=0)[paper.max(axis=0) > 0]
    rows = []
    for rule, values in MASK_RULES.items():
        mask = union_mask(score, from_mapping(MaskConfig, values, "mask")).numpy().max(axis=0) >= 0.5
        inter, union = (mask & truth).sum(), (mask | truth).sum()
        rows.append(
            {
                "rule": rule,
                # NaN (never a silent 0) against an empty truth
                "mask_iou": float(inter / union) if union and truth.any() else np.nan,
                "kept_fraction": float(mask.mean()),
                "channel_corr": float(np.nanmean(corr)),
                "channels_per_kept_cell": float(kept.mean()) if kept.size else np.nan,
            }
        )
    return rows


def read_image(path: Path) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGB"))


def study_rows(
    samples: pd.DataFrame,
    root: Path,
    truth_of: Callable[[pd.Series, int, int], np.ndarray | TruthCells | None],
    truth_name: str,
) -> tuple[list[dict], list[dict]]:
    """Metric rows and mask-rule rows of every sample with maps; `truth_of(row, h, w)` gives bool [h, w] (or
    `TruthCells`: with the recorded reason and row columns), or None to skip the sample. Where the truth came
    from (oracle, segmenter) is not seen here."""
    rows, masks = [], []
    for _, row in samples.iterrows():
        path = root / str(row["masks_dir"]) / MAPS_FILE
        if row.get("status") != "ok" or not path.exists():
            continue
        maps = load_maps(path)
        truth = truth_of(row, *maps["map"].iloc[0].shape[-2:])
        if truth is None:
            continue
        r, m = sample_rows(row, maps, truth, truth_name)
        rows, masks = rows + r, masks + m
    return rows, masks


__all__ = ["CHANCE", "KEYS", "METRICS", "TruthCells", "load_maps", "nan_reason", "study_rows", "toy_truth"]
