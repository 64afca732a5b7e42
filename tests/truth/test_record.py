"""Subject truth in a run: the oracle behind the interface, the truth file and columns, the NaN path of an
empty truth, the pairing with the no_manipulation row, and the fail-fast of the real protocol."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.sd.errors import AssetMissingError, ConfigError
from bench.task import run_benchmark
from bench.toy.oracle import colour_region
from bench.toy.truth import OracleTruth
from bench.toy.world import toy_scene
from bench.truth import SubjectTruth
from bench.truth.record import TruthRecorder, control_row, control_truth, load_truth
from tests.conftest import compose_cfg, minimal_run
from tests.sd.test_sd15 import tiny_folder  # noqa: F401  (fixture: the tiny SD model in SD1.5's folder layout)
from tests.truth.test_clipseg import tiny_clipseg_folder  # noqa: F401  (fixture: a tiny CLIPSeg folder)


def find_scene(colour: str):
    return next(s for k in range(100) if (s := toy_scene(seed=0, k=k)).colour == colour)


def test_oracle_truth_is_the_prompts_colour_region():
    scene = find_scene("red")
    truth = OracleTruth()(scene.image, "ball", f"a red ball in a {scene.subcategory}")
    assert isinstance(truth, SubjectTruth) and truth.source == "oracle" and not truth.is_empty
    assert np.array_equal(truth.mask, colour_region(scene.image, "red"))
    assert np.array_equal(truth.mask, scene.mask) and truth.empty_reason == ""
    empty = OracleTruth()(scene.background, "ball", "a red ball in a forest")
    assert empty.is_empty and empty.empty_reason == "oracle finds no red pixel in the image: empty truth"


class Fixed:
    """A segmenter with a fixed probability map (the recorder's own logic under test, not a segmenter's)."""

    name, provenance, threshold = "fixed", "fixed map", 0.5

    def __init__(self, probability: np.ndarray):
        self.probability = probability

    def __call__(self, image, subject, prompt) -> SubjectTruth:
        mask = self.probability >= self.threshold
        return SubjectTruth(self.probability, mask, self.name, self.provenance, "" if mask.any() else "nothing")


def test_recorder_writes_image_and_latent_truth_with_both_thresholds_and_the_comparison(tmp_path):
    probability = np.zeros((8, 8), dtype=np.float32)
    probability[:4, :4] = 0.9  # 16 px at 0.5
    probability[4:6, :4] = 0.4  # 8 more px at 0.3
    other = probability.copy()
    other[:4, :2] = 0.0  # the second source sees half of the 0.5 region
    recorder = TruthRecorder(Fixed(probability), alt_threshold=0.3, compare=Fixed(other), latent_size=4)
    row = recorder(np.zeros((8, 8, 3), np.uint8), "ball", "a red ball", tmp_path / "truth.npz")
    assert row["truth_area"] == 16 / 64 and row["truth_empty"] == 0.0 and row["truth_nan_reason"] == ""
    assert row["truth_area_alt"] == 24 / 64 and row["truth_iou_alt"] == 16 / 24
    assert row["truth_iou_compare"] == 8 / 16 and row["truth_compare_nan_reason"] == ""
    assert row["truth_area_latent"] == 4 / 16
    saved = load_truth(tmp_path / "truth.npz")
    assert saved["mask"].shape == (8, 8) and saved["latent"].shape == (4, 4)
    assert saved["latent"][0, 0] == 1.0 and saved["latent"][2, 0] == 0.0
    assert saved["mask_alt"].sum() == 24 and saved["compare_mask"].sum() == 8
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_methods_mask_is_scored_against_the_truth_beside_chance(tmp_path):
    probability = np.zeros((8, 8), dtype=np.float32)
    probability[:4, :4] = 0.9  # truth: the top-left 2x2 latent cells
    method_mask = np.zeros((4, 2, 2), dtype=np.float32)  # [C, h, w] at a 4x4-pixel latent cell
    method_mask[:, 0, :] = 1.0  # the whole top latent row: 2 cells, one of them right
    image = np.full((8, 8, 3), 100, np.uint8)
    reference = image.copy()
    reference[:4, :4] = 0  # differs only inside the truth
    recorder = TruthRecorder(Fixed(probability), latent_size=2)
    masks = {"subject_mask": method_mask}
    row = recorder(image, "ball", "a red ball", tmp_path / "t.npz", masks, reference, "forest/0/a/s1")
    assert row["truth_mask_iou"] == 16 / 32 and row["truth_bg_psnr"] == math.inf
    # chance: 2 of 4 cells at random: IoU 1/2 (the right cell among them) or 0, 1/4 on average
    assert 0.1 < row["truth_mask_iou_random"] < 0.5 and row["truth_mask_nan_reason"] == ""
    again = recorder(image, "ball", "a red ball", tmp_path / "t.npz", masks, reference, "forest/0/a/s1")
    assert again["truth_mask_iou_random"] == row["truth_mask_iou_random"]  # seeded by the sample's identity
    none = recorder(image, "ball", "a red ball", tmp_path / "t.npz", {}, reference, "forest/0/a/s1")
    assert (
        math.isnan(none["truth_mask_iou"]) and none["truth_mask_nan_reason"] == "the method records no 'subject_mask'"
    )
    assert none["truth_bg_psnr"] == math.inf


def test_an_empty_truth_gives_nan_with_the_reason_never_a_zero(tmp_path):
    recorder = TruthRecorder(Fixed(np.full((8, 8), 0.1, np.float32)), 2, 0.05, Fixed(np.ones((8, 8), np.float32)))
    image, masks = np.zeros((8, 8, 3), np.uint8), {"subject_mask": np.ones((2, 2), np.float32)}
    row = recorder(image, "ball", "a red ball", tmp_path / "truth.npz", masks, image + 1, "k")
    assert row["truth_area"] == 0.0 and row["truth_empty"] == 1.0 and row["truth_nan_reason"] == "nothing"
    assert math.isnan(row["truth_iou_alt"]) and math.isnan(row["truth_iou_compare"])
    assert all(math.isnan(row[k]) for k in ("truth_mask_iou", "truth_mask_iou_random", "truth_bg_psnr"))
    assert row["truth_mask_nan_reason"] == "nothing"
    assert row["truth_compare_nan_reason"] == "nothing"
    assert not load_truth(tmp_path / "truth.npz")["mask"].any()


def samples_table() -> pd.DataFrame:
    base = {"model": "toy", "dataset": "toy_world", "image_id": "forest/0", "seed": 1, "status": "ok"}
    base |= {"method": "gradsam", "ablation": "none", "label": "gradsam", "method.manipulate": True}
    control = {"label": "no_manipulation", "method.manipulate": False}
    return pd.DataFrame(
        [
            {**base, "prompt": "a red ball"},
            {**base, "prompt": "a red ball", **control},
            {**base, "prompt": "a blue box"},
            {**base, "prompt": "a blue box", **control, "status": "failed"},
            {**base, "prompt": "a red ball", "method": "sdedit", "label": "sdedit_0.6", "method.manipulate": None},
        ]
    )


def test_control_row_pairs_by_sample_identity(tmp_path):
    table = samples_table()
    found = control_row(table, table.iloc[0])
    assert found is not None and found["label"] == "no_manipulation" and found["prompt"] == "a red ball"
    assert control_row(table, table.iloc[2]) is None  # its control failed
    # The control is known by what it is (gradsam, manipulate false), not by its label, also as read from a CSV.
    renamed = table.assign(label="any_name")
    renamed.to_csv(tmp_path / "samples.csv", index=False)
    from_csv = pd.read_csv(tmp_path / "samples.csv", keep_default_na=False, na_values=[""])
    from_file = control_row(from_csv, from_csv.iloc[0])
    assert from_file is not None and from_file["prompt"] == "a red ball" and not from_file["method.manipulate"]
    assert control_row(table.drop(columns="method.manipulate"), table.iloc[0]) is None  # no gradsam row at all
    assert control_truth(table, table.iloc[0], tmp_path) is None  # no truth recorded
    recorder = TruthRecorder(Fixed(np.eye(4, dtype=np.float32)), latent_size=2)
    recorder(np.zeros((4, 4, 3), np.uint8), "ball", "a red ball", tmp_path / "control" / "truth.npz")
    table["truth_path"] = ["", "control/truth.npz", "", "", ""]
    assert np.array_equal(control_truth(table, table.iloc[0], tmp_path)["mask"], np.eye(4, dtype=bool))
    with pytest.raises(ValueError, match="2 control rows .*share the identity"):
        control_row(pd.concat([table, table]), table.iloc[0])


def test_a_toy_world_run_records_oracle_truth_and_its_agreement_with_clipseg(tmp_path):
    overrides = [
        *minimal_run(),
        "dataset=toy_world",
        "truth_record.enabled=true",
        "truth@truth_compare=clipseg_tiny",
    ]
    cfg = compose_cfg(overrides, tmp_root=tmp_path)
    assert cfg.truth._target_ == "bench.toy.truth.OracleTruth"  # the dataset's default truth
    summary = run_benchmark(cfg)
    samples = pd.read_csv(summary["samples_csv"])
    row = samples.iloc[0]
    assert row["truth_source"] == "oracle" and row["truth_compare_source"] == "clipseg_tiny"
    assert "not a trained segmenter" in row["truth_compare_provenance"]
    assert row["truth_empty"] in (0.0, 1.0)
    if row["truth_empty"]:  # the random tiny model rarely paints the prompt's colour: the NaN path, with reason
        assert math.isnan(row["truth_iou_compare"]) and row["truth_nan_reason"].startswith("oracle finds no")
    assert "truth_iou_alt" not in samples.columns  # the oracle has no probability threshold
    saved = load_truth(tmp_path / row["truth_path"])
    assert saved["mask"].shape == (32, 32) and saved["latent"].shape == (8, 8) and "compare_mask" in saved


def test_without_truth_the_rows_keep_their_columns(tmp_path):
    cfg = compose_cfg([*minimal_run(), "dataset=toy_world"], tmp_root=tmp_path)
    samples = pd.read_csv(run_benchmark(cfg)["samples_csv"])
    assert not [c for c in samples.columns if c.startswith("truth")]
    assert not list((tmp_path / "outputs").rglob("truth.npz"))


def test_truth_enabled_with_no_segmenter_is_refused(tmp_path):
    cfg = compose_cfg([*minimal_run(), "truth_record.enabled=true", "truth=none"], tmp_root=tmp_path)
    with pytest.raises(ConfigError, match="truth=none"):
        run_benchmark(cfg)


def places365_root(tmp_path: Path) -> Path:
    root = tmp_path / "DATA-1"
    for k in range(2):
        path = root / "natural" / "forest" / f"forest_{k:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(k)
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(path, quality=90)
    return root


def real_protocol(tmp_path: Path, sd_folder: Path, *extra: str) -> list[str]:
    return [
        *minimal_run(),
        "model=sd15",
        f"model.path={sd_folder}",
        "dataset=places365",
        f"dataset.root={places365_root(tmp_path)}",
        *extra,
    ]


def test_sd15_on_places365_without_clipseg_weights_fails_before_generation(tmp_path, tiny_folder):  # noqa: F811
    cfg = compose_cfg(real_protocol(tmp_path, tiny_folder, f"truth.cache_dir={tmp_path / 'empty'}"), tmp_root=tmp_path)
    with pytest.raises(AssetMissingError) as info:
        run_benchmark(cfg)
    message = str(info.value)
    assert "CIDAS/clipseg-rd64-refined" in message and "truth.path=" in message and "record_truth" not in message
    assert "truth_record.enabled=false" in message
    assert not list((tmp_path / "outputs").rglob("*.png"))


def test_sd15_on_places365_with_a_clipseg_folder_records_truth(tmp_path, tiny_folder, tiny_clipseg_folder):  # noqa: F811
    cfg = compose_cfg(real_protocol(tmp_path, tiny_folder, f"truth.path={tiny_clipseg_folder}"), tmp_root=tmp_path)
    samples = pd.read_csv(run_benchmark(cfg)["samples_csv"])
    row = samples.iloc[0]
    assert row["truth_source"] == "clipseg" and str(tiny_clipseg_folder) in row["truth_provenance"]
    assert row["truth_threshold"] == 0.5 and row["truth_alt_threshold"] == 0.3
    saved = load_truth(tmp_path / row["truth_path"])
    assert saved["mask"].shape == (32, 32) and saved["latent"].shape == (8, 8) and "mask_alt" in saved
    assert row["truth_area"] == pytest.approx(float(saved["mask"].mean()), rel=1e-5)  # samples.csv: 6 digits
