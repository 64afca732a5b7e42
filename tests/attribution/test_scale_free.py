"""The study's rows do not depend on a map's scale (issue 21's "done when"): every recorded map multiplied by 1000,
shifted or exponentiated gives the same AUROC and AP, and both agree with scikit-learn on the summed maps.

The committed study once read DAAM maps of values ~130 as logits (torchmetrics squashes inputs outside [0, 1]):
its AUROC 0.927 was saturation. These maps span the ranges a study meets, from 1e-6 to 1e4.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from bench.attribution.study import cell_maps, sample_rows

ROW = pd.Series({"sample_key": "k", "image_id": "forest/00000", "prompt": "a red ball", "seed": 0, "label": "x"})
LAYERS = ["down.0", "down.1", "up.1", "up.2"]  # latent sides 8, 4, 4, 8: the layer sets last, all, res4, res8


def recorded_maps(scale: float, seed: int) -> pd.DataFrame:
    """Per-layer Grad-SAM maps and DAAM maps [C=4, 8, 8] at two scoring steps, each layer at its own magnitude."""
    rng = np.random.default_rng(seed)
    rows = []
    for index, timestep in ((5, 800), (18, 540)):
        for kind in ("gradsam", "daam"):
            for n, layer in enumerate(LAYERS):
                magnitude = scale * 10.0 ** (n - 1)
                rows.append((kind, layer, index, timestep, 8, magnitude * rng.random((4, 8, 8))))
        rows.append(("noise_diff", None, index, timestep, 8, scale * rng.random((1, 8, 8))))  # one channel
    frame = pd.DataFrame(rows, columns=["kind", "layer", "index", "timestep", "side", "map"])
    return frame.assign(layer_set=None)  # a per-layer map or a layer-free kind: no own map here


def transformed(maps: pd.DataFrame, how) -> pd.DataFrame:
    out = maps.copy()
    out["map"] = [how(m) for m in maps["map"]]
    return out


def metrics(rows: list[dict]) -> dict[tuple, tuple[float, float]]:
    return {(r["kind"], r["layer_set"], r["index"]): (r["auroc"], r["ap"]) for r in rows}


@pytest.mark.parametrize("scale", [1e-6, 1.0, 130.0, 1e4])
def test_every_map_times_1000_shifted_or_exponentiated_gives_the_same_auroc_and_ap(scale):
    maps = recorded_maps(scale, seed=int(np.log10(scale)) + 10)
    truth = np.zeros((8, 8), dtype=bool)
    truth[2:6, 3:7] = True
    base, _ = sample_rows(ROW, maps, truth, "no_manipulation")
    reference = metrics(base)
    assert len(reference) == len(base) > 10 and {"res8", "all", "last"} <= {k[1] for k in reference}
    # x1000 maps every layer alike, so every sum over a layer set is x1000 as well; a shift and exp are applied to
    # the one-channel layer-free kind, where they are monotone maps of the score itself.
    for how in (lambda m: 1000.0 * m, lambda m: m / 1000.0):
        rows, _ = sample_rows(ROW, transformed(maps, how), truth, "no_manipulation")
        assert metrics(rows) == reference
    free = maps["layer"].isna()
    shifted = maps.copy()
    shifted.loc[free, "map"] = pd.Series(
        [1e3 * np.exp(m / m.max()) + 5.0 for m in maps.loc[free, "map"]], index=maps.index[free]
    )
    rows, _ = sample_rows(ROW, shifted, truth, "no_manipulation")
    moved = {key: value for key, value in metrics(rows).items() if key[0] == "noise_diff"}
    assert moved and all(value == reference[key] for key, value in moved.items())
    # and the values are scikit-learn's on the same summed maps, whatever their scale
    summed = {(kind, layer_set, index): m.sum(axis=0) for kind, layer_set, index, _, m in cell_maps(maps)}
    for key, (auroc, ap) in reference.items():
        if key in summed:
            score = summed[key].ravel()
            assert auroc == pytest.approx(roc_auc_score(truth.ravel(), score), abs=1e-6)  # float32 inside
            assert ap == pytest.approx(average_precision_score(truth.ravel(), score), abs=1e-6)
