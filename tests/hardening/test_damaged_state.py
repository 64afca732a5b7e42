"""Attack suite #23, class 1: state that looks done but is not. Damaged means not done.

A per-sample file damaged outside the harness (a row without a sample's fields, another sample's row, a
truncated image, mask, maps.npz or truth.npz) makes that sample not done: the rerun names the file in a
warning and redoes that sample alone, bit for bit as before; every other file is kept byte for byte. A
reader that needs the damaged file (the attribution study's --report-only) stops with one line naming it.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.metrics.features import FeatureCache
from bench.metrics.set_level import RefStatsCache
from bench.records import StorageError, maps_from_npz, merge_samples, png_problem, read_npz
from bench.reporting.aggregate import AggregateOptions, aggregate_task
from bench.task import run_benchmark
from bench.truth.record import load_truth
from tests.conftest import compose_cfg, minimal_run

# Two gradsam samples on the toy world with everything a sample can have: image, masks, maps.npz, truth.npz.
RUN = [
    "model=tiny",
    "dataset=toy_world",
    "method=gradsam",
    *minimal_run(),
    "sampling.num_inference_steps=10",
    "method.injection_indices=[2,5]",
    "method.attribution.record=true",
    "truth_record.enabled=true",
    "task_name=attribution",
    "seeds=[1,2]",
]
KEY = "forest/00000/a_blue_ball_in_a_forest/s1"  # the attacked sample; s2 is its untouched neighbour
RUN_DIR = "outputs/attribution/tiny/toy_world/gradsam+none"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pristine")
    run_benchmark(compose_cfg(RUN, root))
    return root


@pytest.fixture
def root(pristine, tmp_path) -> Path:
    """A copy of the pristine run (rows hold paths relative to the root, so the copy is a run of its own)."""
    copy = tmp_path / "root"
    shutil.copytree(pristine, copy)
    return copy


def content(path: Path):
    """A file's bytes; an .npz's arrays (its zip entries carry the time they were written)."""
    if path.suffix != ".npz":
        return path.read_bytes()
    return sorted((k, v.dtype.str, v.shape, v.tobytes()) for k, v in read_npz(path).items())


def files(root: Path) -> dict[str, object]:
    """Every per-sample file of the run (rows, images, masks, maps, truth) by relative path."""
    run = root / RUN_DIR
    return {str(p.relative_to(run)): content(p) for p in run.rglob("*") if p.is_file() and p.parent != run}


def sample_file(root: Path, kind: str) -> Path:
    run = root / RUN_DIR
    return {
        "row": run / "rows" / f"{KEY}.json",
        "image": run / "images" / f"{KEY}.png",
        "mask": run / "masks" / KEY / "subject_mask.png",
        "maps": run / "masks" / KEY / "maps.npz",
        "truth": run / "masks" / KEY / "truth.npz",
    }[kind]


def rerun_redoes_the_sample_alone(root: Path, pristine: Path, damaged: Path, caplog, words: str) -> None:
    """The rerun names `damaged` and `words` in a warning, redoes one sample, and every file equals the pristine."""
    caplog.set_level(logging.WARNING, logger="bench.task")
    summary = run_benchmark(compose_cfg(RUN, root))
    assert summary["pending"] == 1 and summary["damaged"] == 1, summary
    warning = next(r.getMessage() for r in caplog.records if "redone now" in r.getMessage())
    assert str(damaged) in warning and words in warning and KEY in warning, warning
    assert files(root) == files(pristine)  # the redone sample bit for bit; its neighbour untouched
    samples = pd.read_csv(summary["samples_csv"])
    assert len(samples) == 2 and samples["sample_key"].notna().all()


def truncate(path: Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])


# --- the examples --------------------------------------------------------------------------------------


def test_a_row_holding_empty_json_is_not_done_and_aggregate_then_works(root, pristine, caplog):
    row = sample_file(root, "row")
    row.write_text("{}\n")
    merged = merge_samples(root / "outputs/attribution", root / "results/attribution/samples.csv")
    assert len(merged) == 1  # left out of samples.csv (no empty line), with a warning naming it
    assert f"{row}: it lacks the sample's fields" in caplog.text
    rerun_redoes_the_sample_alone(root, pristine, row, caplog, "lacks the sample's fields")
    paths = aggregate_task(root / "results", "attribution", root, AggregateOptions(set_level=False))
    assert paths["report"].is_file()


@pytest.mark.parametrize("kind", ["maps", "truth"])
def test_a_truncated_npz_is_named_by_its_reader_and_the_rerun_repairs_it(root, pristine, caplog, capsys, kind):
    from bench.attribution.__main__ import main as attribution_main

    damaged = sample_file(root, kind)
    truncate(damaged)
    reader = maps_from_npz if kind == "maps" else load_truth
    with pytest.raises(StorageError, match=rf"^{re.escape(str(damaged))} is damaged \(BadZipFile: .*Rerun the command"):
        reader(damaged)
    with pytest.raises(SystemExit) as exit_info:
        attribution_main(["--report-only", "--root-dir", str(root)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("\n") == 1 and str(damaged) in err and "Traceback" not in err
    assert "without --report-only reruns its jobs" in err
    rerun_redoes_the_sample_alone(root, pristine, damaged, caplog, "is damaged (BadZipFile")
    reader(damaged)  # whole again


def test_a_truncated_image_that_a_done_row_points_to_is_redone(root, pristine, caplog):
    image = sample_file(root, "image")
    truncate(image)
    rerun_redoes_the_sample_alone(root, pristine, image, caplog, "is truncated")


def test_a_row_of_another_sample_copied_over_is_redone(root, pristine, caplog):
    row = sample_file(root, "row")
    row.write_bytes(row.with_name("s2.json").read_bytes())
    rerun_redoes_the_sample_alone(root, pristine, row, caplog, "records sample_key")


# --- further attacks ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, words",
    [
        (b"[]\n", "holds a JSON list, not an object"),
        (b"", "is not a row: JSONDecodeError"),
        (b'{"status": "ok"\xff\xfe}', "is not a row: UnicodeDecodeError"),
        (b'{"status": "ok", "trunc', "is not a row: JSONDecodeError"),
    ],
    ids=["json-list", "empty-file", "not-utf8", "cut-short"],
)
def test_a_row_that_is_not_a_row_is_redone(root, pristine, caplog, content, words):
    row = sample_file(root, "row")
    row.write_bytes(content)
    rerun_redoes_the_sample_alone(root, pristine, row, caplog, words)


def test_a_row_with_an_unknown_status_is_redone(root, pristine, caplog):
    row = sample_file(root, "row")
    data = json.loads(row.read_text())
    row.write_text(json.dumps({**data, "status": "done"}))
    rerun_redoes_the_sample_alone(root, pristine, row, caplog, "status 'done' is neither")


def test_a_row_whose_seed_was_edited_is_redone(root, pristine, caplog):
    row = sample_file(root, "row")
    data = json.loads(row.read_text())
    row.write_text(json.dumps({**data, "seed": 7}))
    rerun_redoes_the_sample_alone(root, pristine, row, caplog, "its seed 7 is not this sample's 1")


def test_a_row_pointing_at_its_neighbours_image_is_redone(root, pristine, caplog):
    row = sample_file(root, "row")
    data = json.loads(row.read_text())
    row.write_text(json.dumps({**data, "image_path": data["image_path"].replace("/s1.png", "/s2.png")}))
    rerun_redoes_the_sample_alone(root, pristine, row, caplog, "is not this sample's image")


def test_a_deleted_image_is_redone(root, pristine, caplog):
    image = sample_file(root, "image")
    image.unlink()
    rerun_redoes_the_sample_alone(root, pristine, image, caplog, "is missing")


def test_a_truncated_mask_is_redone(root, pristine, caplog):
    mask = sample_file(root, "mask")
    truncate(mask)
    rerun_redoes_the_sample_alone(root, pristine, mask, caplog, "is truncated")


def test_an_image_missing_only_its_last_bytes_is_redone(root, pristine, caplog):
    """PIL's verify() accepts a PNG cut inside its end chunk; the check reads the end chunk itself."""
    image = sample_file(root, "image")
    truncate(image, keep=len(image.read_bytes()) - 4)
    rerun_redoes_the_sample_alone(root, pristine, image, caplog, "does not end with the PNG end chunk")


def test_a_truncated_reference_copy_is_rewritten_by_the_next_sample(root, pristine):
    copy = root / "outputs/attribution/references/tiny/toy_world/32px/forest/00000.png"
    whole = copy.read_bytes()
    truncate(copy)
    run_benchmark(compose_cfg([*RUN, "seeds=[1,2,3]"], root))  # one new sample: it uses the reference
    assert copy.read_bytes() == whole and not png_problem(copy)


def test_merge_leaves_a_damaged_row_of_another_run_out_and_names_it(root, caplog, capsys):
    from bench.merge import main as merge_main

    row = sample_file(root, "row")
    row.write_text('{"sample_key": "x"}')
    merge_main(["--output-dir", str(root / "outputs"), "--results-dir", str(root / "results")])
    samples = pd.read_csv(root / "results/attribution/samples.csv")
    assert samples["sample_key"].tolist() == ["forest/00000/a_blue_ball_in_a_forest/s2"]
    assert f"{row}: it lacks the sample's fields" in caplog.text


def test_dry_run_lists_the_damaged_sample_it_would_redo(root, capsys):
    truncate(sample_file(root, "image"))
    summary = run_benchmark(compose_cfg([*RUN, "dry_run=true"], root))
    assert summary["damaged"] == 1
    assert f"would redo {KEY} (" in capsys.readouterr().out


def test_a_truncated_feature_cache_file_is_recomputed_not_read(tmp_path, caplog):
    calls = []

    def extractor(images, layer):
        calls.append(len(images))
        return images.reshape(len(images), -1)[:, :4].astype(np.float32)

    image = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)
    first = FeatureCache(extractor, "fake", tmp_path).get([image], "64")
    (stored,) = list(tmp_path.rglob("*.npy"))
    truncate(stored)
    again = FeatureCache(extractor, "fake", tmp_path).get([image], "64")  # a new process: nothing in memory
    assert calls == [1, 1] and np.array_equal(first, again)
    assert f"feature cache file {stored} is damaged" in caplog.text
    assert np.array_equal(np.load(stored), first[0])  # rewritten whole


def test_truncated_reference_statistics_are_recomputed_not_read(tmp_path, caplog):
    features = np.random.default_rng(0).normal(size=(5, 3))
    cache = RefStatsCache(tmp_path)
    cache.get("key", "fp", features, {})
    truncate(cache.path("key"))
    stats = cache.get("key", "fp", features, {})
    assert np.allclose(stats["mu"], features.mean(0)) and "are damaged; recomputing them" in caplog.text
    assert read_npz(cache.path("key"))["fingerprint"] == "fp"
