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


# -- scale-free: AUROC and AP depend on the ranking alone (issue: torchmetrics reads scores outside [0, 1] as
#    logits and squashes them with a sigmoid, so a map with values above ~37 tied at 1.0 and lost its ranking).
SCALES = [1e-9, 1e-3, 1.0, 37.0, 130.0, 1e3, 1e6]


def ranked_map(rng: np.random.Generator, truth: np.ndarray, scale: float, shift: float = 0.0) -> np.ndarray:
    """A map that ranks the subject above the background on average, at any scale and shift."""
    return shift + scale * (rng.normal(size=truth.shape) + 1.2 * truth)


@pytest.mark.parametrize("seed", range(4))
def test_auroc_and_ap_are_the_same_for_any_increasing_transform_of_the_map(seed):
    rng = np.random.default_rng(seed)
    truth = rng.random((16, 16)) < 0.25
    s = ranked_map(rng, truth, 1.0)
    reference = attribution_metrics(s, truth)
    assert 0.6 < reference["auroc"] < 1.0  # a map with something to lose
    for transformed in (1000 * s, s + 5, np.exp(s), 1e6 * s - 3e6, s / 1e9, np.tanh(s / 10) * 1e4):
        assert attribution_metrics(transformed, truth) == reference  # the same ranks: bit-identical
    flipped = attribution_metrics(-s, truth)
    assert flipped["auroc"] == pytest.approx(1 - reference["auroc"], abs=1e-6)  # torchmetrics sums in float32


def test_the_issue_s_constructed_map_keeps_its_auroc_when_multiplied_by_1000():
    """The committed study's failure: the same map x1000 read 0.914 -> 0.518 (AUROC) and 0.797 -> 0.145 (AP)."""
    rng = np.random.default_rng(7)
    truth = np.zeros((16, 16), bool)
    truth[4:11, 5:12] = True
    s = rng.random((16, 16)) * 0.6 + 0.35 * truth  # in [0, 1]: torchmetrics' own range
    assert attribution_metrics(1000 * s, truth) == attribution_metrics(s, truth)
    assert attribution_metrics(1000 * s, truth)["auroc"] > 0.85


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("seed", range(3))
def test_auroc_and_ap_agree_with_scikit_learn_at_every_scale(scale, seed):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    truth = rng.random((16, 16)) < 0.2
    score = ranked_map(rng, truth, scale, shift=rng.normal() * scale * 10)
    out = attribution_metrics(score, truth)
    expected_auroc = sklearn_metrics.roc_auc_score(truth.ravel(), score.ravel())
    expected_ap = sklearn_metrics.average_precision_score(truth.ravel(), score.ravel())
    assert out["auroc"] == pytest.approx(expected_auroc, abs=1e-6)  # torchmetrics sums in float32
    assert out["ap"] == pytest.approx(expected_ap, abs=1e-6)


@pytest.mark.parametrize("levels", [2, 3, 7])
def test_tied_maps_agree_with_scikit_learn(levels):
    """Maps with few distinct values (many ties), far outside [0, 1]: ties count as scikit-learn counts them."""
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(levels)
    truth = rng.random((16, 16)) < 0.3
    score = 500.0 * np.round(rng.random((16, 16)) * (levels - 1) + 0.6 * truth)  # values 0, 500, 1000, ...
    out = attribution_metrics(score, truth)
    assert out["auroc"] == pytest.approx(sklearn_metrics.roc_auc_score(truth.ravel(), score.ravel()), abs=1e-6)
    assert out["ap"] == pytest.approx(sklearn_metrics.average_precision_score(truth.ravel(), score.ravel()), abs=1e-6)


def test_a_constant_map_at_any_scale_is_chance_with_ap_the_prevalence():
    truth = square_truth()
    for value in (-1e6, 0.0, 0.3, 37.5, 1e9):
        out = attribution_metrics(np.full(truth.shape, value), truth)
        assert out["auroc"] == 0.5 and out["ap"] == pytest.approx(truth.mean())


def test_a_non_finite_map_is_refused():
    truth = square_truth()
    score = np.ones(truth.shape)
    score[3, 3] = np.nan
    with pytest.raises(ValueError, match="1 non-finite values"):
        attribution_metrics(score, truth)
