"""Threshold-free attribution quality of one continuous map against a subject truth, with chance maps.

A map [h, w] scores latent cells; the truth is a bool [h, w] of subject cells at the same grid
(`latent_truth(...) >= 0.5`). Where the truth came from (the toy oracle, a segmenter) is not seen here.

    auroc         P(score of a subject cell > score of a background cell), ties count half
    ap            average precision (area under the precision-recall steps, torchmetrics)

Both depend on the ranking of the scores alone, and so do these numbers: torchmetrics is given the
scores' dense ranks scaled into (0, 1] (`ranks`), never the raw scores, which it would read as
logits (and squash with a sigmoid, tying every score above ~37) whenever one leaves [0, 1]. Equal
scores keep equal ranks, so ties are treated as torchmetrics treats them.
    pointing      1 when the highest-scoring cell is a subject cell (ties: the first in row-major order)
    iou_at_area   IoU of the top-k cells with the truth, k = number of subject cells (no threshold)

Chance maps: `uniform_map` (i.i.d. uniform scores) and `centre_prior` (minus the distance to the
image centre: data-free, and strong where subjects sit mid-frame, as in the toy world).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata

from bench.sd.maps import centre_prior  # the one definition (the score kind centre_prior uses it too)

__all__ = ["METRICS", "attribution_metrics", "centre_prior", "ranks", "uniform_map"]
METRICS = ("auroc", "ap", "pointing", "iou_at_area")
NAN = float("nan")


def attribution_metrics(score: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """AUROC, AP, pointing game and IoU at the true area of `score` [h, w] against bool `truth` [h, w].

    All NaN when the truth is empty or covers every cell (no ranking question to answer).
    """
    score = np.asarray(score, dtype=np.float64)
    truth = np.asarray(truth, dtype=bool)
    if score.shape != truth.shape:
        raise ValueError(f"map {score.shape} and truth {truth.shape} differ in shape; resample one to the other.")
    positives = int(truth.sum())
    if positives == 0 or positives == truth.size:
        return dict.fromkeys(METRICS, NAN)
    if not np.isfinite(score).all():
        raise ValueError(f"map has {int((~np.isfinite(score)).sum())} non-finite values; a map must be finite.")
    # Imported here, not at module level: torchmetrics pulls in torchvision and its text models (seconds, where
    # nothing else has imported them), and the report path imports this module only for METRICS.
    from torchmetrics.functional.classification import binary_auroc, binary_average_precision

    preds, target = torch.from_numpy(ranks(score.ravel())), torch.from_numpy(truth.ravel()).long()
    order = np.argsort(-score.ravel(), kind="stable")  # highest first; ties in row-major order
    top = np.zeros(truth.size, dtype=bool)
    top[order[:positives]] = True
    flat = truth.ravel()
    return {
        "auroc": float(binary_auroc(preds, target)),
        "ap": float(binary_average_precision(preds, target)),
        "pointing": float(flat[order[0]]),
        "iou_at_area": float((top & flat).sum() / (top | flat).sum()),
    }


def ranks(scores: np.ndarray) -> np.ndarray:
    """Dense ranks of `scores` scaled into (0, 1] (float64): the same order and the same ties, any scale or shift."""
    dense = rankdata(scores, method="dense")  # 1 .. number of distinct values
    return dense / dense.max()


def uniform_map(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """I.i.d. uniform scores [h, w]: the chance line."""
    return rng.random((height, width))
