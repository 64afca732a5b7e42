"""Threshold-free attribution metrics on constructed maps, and against scipy / numpy on random maps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from bench.truth.scores import METRICS, attribution_metrics, centre_prior, uniform_map


def square_truth(size: int = 16) -> np.ndarray:
    truth = np.zeros((size, size), dtype=bool)
    truth[5:10, 6:12] = True  # 30 subject cells
    return truth


def test_a_perfect_map_scores_one_and_an_inverted_map_zero():
    truth = square_truth()
    rng = np.random.default_rng(0)
    perfect = truth + 0.1 * rng.random(truth.shape)  # every subject cell above every background cell
    assert attribution_metrics(perfect, truth) == dict.fromkeys(METRICS, 1.0)
    inverted = attribution_metrics(-perfect, truth)
    assert inverted["auroc"] == 0.0 and inverted["pointing"] == 0.0 and inverted["iou_at_area"] == 0.0
    assert inverted["ap"] < truth.mean() + 0.05  # AP of the worst ranking: about the prevalence


def test_a_constant_map_is_chance():
    truth = square_truth()
    out = attribution_metrics(np.ones(truth.shape), truth)
    assert out["auroc"] == 0.5
    assert out["pointing"] == float(truth.ravel()[0])  # ties: the first cell in row-major order


def numpy_average_precision(score: np.ndarray, truth: np.ndarray) -> float:
    """Mean of the precision at the rank of each positive (no ties)."""
    order = np.argsort(-score)
    hits = truth[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


@pytest.mark.parametrize("seed", range(5))
def test_random_maps_agree_with_scipy_and_numpy(seed):
    rng = np.random.default_rng(seed)
    truth = rng.random((16, 16)) < 0.2
    score = rng.normal(size=(16, 16)) + 0.8 * truth
    out = attribution_metrics(score, truth)
    pos, neg = score[truth], score[~truth]
    u = mannwhitneyu(pos, neg).statistic  # P(pos > neg) * n_pos * n_neg
    assert out["auroc"] == pytest.approx(u / (len(pos) * len(neg)), abs=1e-6)
    assert out["ap"] == pytest.approx(numpy_average_precision(score.ravel(), truth.ravel()), abs=1e-6)
    assert out["pointing"] == float(truth.ravel()[np.argmax(score)])
    k = int(truth.sum())
    top = np.zeros(truth.size, dtype=bool)
    top[np.argsort(score.ravel())[::-1][:k]] = True
    expected = (top & truth.ravel()).sum() / (top | truth.ravel()).sum()
    assert out["iou_at_area"] == pytest.approx(expected)


def test_empty_or_full_truth_gives_nan_and_a_shape_mismatch_is_explained():
    assert all(np.isnan(v) for v in attribution_metrics(np.ones((4, 4)), np.zeros((4, 4), bool)).values())
    assert all(np.isnan(v) for v in attribution_metrics(np.ones((4, 4)), np.ones((4, 4), bool)).values())
    with pytest.raises(ValueError, match="differ in shape"):
        attribution_metrics(np.ones((4, 4)), np.ones((8, 8), bool))


def test_chance_maps():
    prior = centre_prior(16, 16)
    assert prior.shape == (16, 16) and prior[7:9, 7:9].min() == prior.max()  # the four centre cells top it
    truth = square_truth()
    centred = np.zeros((16, 16), bool)
    centred[6:10, 6:10] = True
    assert attribution_metrics(prior, centred)["auroc"] == 1.0  # a centred subject: the prior is perfect
    aurocs = [attribution_metrics(uniform_map(16, 16, np.random.default_rng(s)), truth)["auroc"] for s in range(200)]
    assert abs(np.mean(aurocs) - 0.5) < 0.02
