"""Hand-built study tables in the scheme the study writes them (bench.reporting.tables.summarize's columns), for the
verdict, page and browser tests: every number a test reads back is set here."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.truth.scores import METRICS

STEPS = ((5, 800), (18, 540), (28, 340))  # the offline profile's scoring steps (index, timestep)
WHOLE_CHAIN = (50, 0)  # DAAM's whole-chain map: index L
LAYERS = {  # single layers of the toy UNet in execution order, with their map side
    "layer:down_blocks.0.attentions.0.transformer_blocks.0.attn2": 16,
    "layer:down_blocks.1.attentions.0.transformer_blocks.0.attn2": 8,
    "layer:up_blocks.1.attentions.0.transformer_blocks.0.attn2": 8,
    "layer:up_blocks.2.attentions.1.transformer_blocks.0.attn2": 16,
}
# (kind, layer set) -> AUROC mean at each scoring step (like the committed toy-world study); half-width 0.02
OFFLINE = {
    ("gradsam", "last"): (0.50, 0.52, 0.57),
    ("gradsam", "own:last"): (0.50, 0.52, 0.57),
    ("gradsam", "all"): (0.949, 0.974, 0.978),
    ("gradsam", "res8"): (0.951, 0.976, 0.979),
    ("gradsam", "res16"): (0.79, 0.83, 0.84),
    ("attention_only", "last"): (0.45, 0.45, 0.45),
    ("attention_only", "all"): (0.931, 0.975, 0.98),
    ("attention_only", "res8"): (0.935, 0.977, 0.982),
    ("attention_only", "res16"): (0.54, 0.63, 0.67),
    ("daam", "all"): (0.932, 0.966, 0.927),
    ("daam", "res8"): (0.935, 0.977, 0.965),
    ("noise_diff", "-"): (0.80, 0.88, 0.88),
    ("chance:centre", "-"): (0.784, 0.784, 0.784),
    ("chance:uniform", "-"): (0.506, 0.501, 0.497),
}
HALF = 0.02


def summary_row(keys: dict, mean: float, half: float = HALF, n: int = 40) -> dict:
    """One summary row: every study metric's mean, interval and n (the other metrics follow AUROC)."""
    row = {**keys, "N": n, "failures": 0}
    for metric in METRICS:
        value = mean if metric == "auroc" else mean * 0.8
        lo, hi = (value - half, value + half) if np.isfinite(half) else (np.nan, np.nan)
        row |= {f"{metric}_mean": value, f"{metric}_mean_lo": lo, f"{metric}_mean_hi": hi, f"{metric}_n": n}
    return row


def study_table(auroc: dict | None = None, half: float = HALF, whole_chain: float | None = 0.989) -> pd.DataFrame:
    """attribution.csv: the control's maps against its truth at both thresholds (alt = main - 0.01), the method's
    maps against both truths (every AUROC 0.2: a verdict that read them would show it), single layers of gradsam and
    attention_only (res8 layers 0.96, others 0.5), and DAAM's whole-chain map at index L."""
    auroc = OFFLINE if auroc is None else auroc
    rows = []
    base = {"truth": "no_manipulation", "truth_source": "oracle", "label": "no_manipulation"}
    for threshold, shift in (("main", 0.0), ("alt", -0.01)):
        keys = {**base, "truth_threshold": threshold}
        for (kind, layer_set), means in auroc.items():
            for (index, t), mean in zip(STEPS, means, strict=True):
                rows.append(
                    summary_row(
                        {**keys, "kind": kind, "layer_set": layer_set, "index": index, "timestep": t},
                        mean + shift,
                        half,
                    )
                )
        for kind in ("gradsam", "attention_only"):
            for layer, side in LAYERS.items():
                for index, t in STEPS:
                    cell = {**keys, "kind": kind, "layer_set": layer, "index": index, "timestep": t}
                    rows.append(summary_row(cell, (0.96 if side == 8 else 0.5) + shift, half))
        if whole_chain is not None:
            for kind, layer_set, mean in (("daam", "all", whole_chain), ("chance:centre", "-", 0.784)):
                cell = {
                    **keys,
                    "kind": kind,
                    "layer_set": layer_set,
                    "index": WHOLE_CHAIN[0],
                    "timestep": WHOLE_CHAIN[1],
                }
                rows.append(summary_row(cell, mean + shift, half))
    for truth in ("method_output", "no_manipulation"):
        for kind, layer_set in auroc:
            for index, t in STEPS:
                cell = {"truth": truth, "truth_source": "oracle", "label": "gradsam", "truth_threshold": "main"}
                rows.append(
                    summary_row(
                        {**cell, "kind": kind, "layer_set": layer_set, "index": index, "timestep": t}, 0.2, half
                    )
                )
    table = pd.DataFrame(rows)
    return table.sort_values(["truth_threshold", "truth", "label", "index", "kind", "layer_set"], kind="stable")


RULES = {  # rule -> (IoU, kept fraction) on gradsam res8 at the first scoring step (the committed study's)
    "per_channel": (0.164, 0.72),
    "union": (0.164, 0.72),
    "sum": (0.17, 0.70),
    "per_channel, no dilation": (0.403, 0.27),
    "sum, no dilation": (0.452, 0.235),
    "per_channel, scale-aware dilation": (0.268, 0.45),
}


def mask_table(rules: dict | None = None, half: float = 0.03) -> pd.DataFrame:
    """mask_rules.csv: the rules on gradsam res8, all and own:last (own:last: IoU 0.114, 99.6% kept) at each step."""
    rows = []
    for layer_set in ("own:last", "all", "res8"):
        for rule, (iou, kept) in (rules or RULES).items():
            for index, t in STEPS:
                iou_here, kept_here = (0.114, 0.996) if layer_set == "own:last" else (iou, kept)
                keys = {
                    "truth": "no_manipulation",
                    "truth_threshold": "main",
                    "truth_source": "oracle",
                    "kind": "gradsam",
                }
                keys |= {"layer_set": layer_set, "rule": rule, "index": index, "timestep": t, "N": 40, "failures": 0}
                values = (("mask_iou", iou_here), ("kept_fraction", kept_here), ("channel_corr", 0.5))
                for metric, value in (*values, ("channels_per_kept_cell", 2.7)):
                    keys |= {
                        f"{metric}_mean": value,
                        f"{metric}_mean_lo": value - half,
                        f"{metric}_mean_hi": value + half,
                    }
                    keys |= {f"{metric}_n": 40}
                rows.append(keys)
    return pd.DataFrame(rows)


def sanity_table(
    final: float = 0.55, cross: float = 0.62, scene: float = 0.6, shuffled: float = 0.58, half: float = HALF
) -> pd.DataFrame:
    """sanity.csv as bench/attribution/sanity_report.py writes it (branch h21s): the cascade (none, conv_out, up
    blocks, mid block, down blocks, conv_in) and the attn2-projections stage for gradsam res8 and attention_only res8,
    the two text checks, and the chance lines, at scoring step 18; `final` is the AUROC once every block is random."""
    stages = [
        "none",
        "conv_out",
        "up_blocks.2",
        "up_blocks.1",
        "mid_block",
        "down_blocks.1",
        "down_blocks.0",
        "conv_in",
    ]
    aurocs = np.linspace(0.976, final, len(stages))
    rows = []
    index, t = STEPS[1]
    for kind in ("gradsam", "attention_only"):
        at = {"kind": kind, "layer_set": "res8", "index": index, "timestep": t}
        for order, (stage, value) in enumerate(zip(stages, aurocs, strict=True)):
            rho = 1.0 - order / (len(stages) - 1)
            rows.append(sanity_row({"check": "cascade", "order": order, "stage": stage, **at}, value, rho, half))
        rows.append(
            sanity_row(
                {"check": "cross_attention", "order": len(stages), "stage": "attn2 projections", **at}, cross, 0.3, half
            )
        )
        for offset, (stage, value) in enumerate((("scene word", scene), ("shuffled prompt", shuffled)), 1):
            rows.append(
                sanity_row({"check": "text", "order": len(stages) + offset, "stage": stage, **at}, value, 0.4, half)
            )
    for kind, value in (("chance:uniform", 0.5), ("chance:centre", 0.784)):
        at = {"kind": kind, "layer_set": "-", "index": index, "timestep": t}
        rows.append(sanity_row({"check": "chance", "order": -1, "stage": "-", **at}, value, np.nan, half))
    return pd.DataFrame(rows)


def sanity_row(keys: dict, auroc: float, spearman: float, half: float) -> dict:
    row = {**keys, "N": 20, "failures": 0}
    for metric, value in (("spearman", spearman), ("auroc", auroc)):
        lo, hi = (value - half, value + half) if np.isfinite(half) and np.isfinite(value) else (np.nan, np.nan)
        row |= {f"{metric}_mean": value, f"{metric}_mean_lo": lo, f"{metric}_mean_hi": hi, f"{metric}_n": 20}
    return row
