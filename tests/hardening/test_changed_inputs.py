"""Attack suite #23, class 2: inputs that change under a run.

A resume notices what it resumes from has changed: a reference is keyed by the content of its converted
pixels (`reference_sha256` in every row; the task's copy under references/), so a replaced file stops the
run with one line naming the image, before anything is generated, while a re-encoded file with the same
pixels changes nothing. Metric weights that cannot load stop the run before its first sample, instead of a
run that exits 0 with every score NaN. A done sample whose subject changed is refused by name.
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.config import REPO_ROOT
from bench.datasets.base import DatasetError, reference_digest
from bench.metrics.inception import MissingWeightsError
from bench.metrics.set_level import SetLevelAssets, set_level_metrics
from bench.sd.errors import ConfigError
from bench.task import run_benchmark
from tests.conftest import compose_cfg, minimal_run
from tests.datasets.test_reference_images import places_folder, rgb

FILES = ["model=tiny", "dataset=places365", "truth_record.enabled=false", "method=txt2img", *minimal_run(1)]
DRAWN = ["model=tiny", "dataset=synthetic_places", "method=txt2img", *minimal_run(1)]


def on_files(tmp_path: Path, root: Path, *overrides: str) -> dict:
    return run_benchmark(compose_cfg([*FILES, f"dataset.root={root}", *overrides], tmp_path))


def sample_files(tmp_path: Path) -> dict[str, bytes]:
    outputs = tmp_path / "outputs"
    return {str(p.relative_to(outputs)): p.read_bytes() for p in outputs.rglob("*") if p.suffix in (".png", ".json")}


@pytest.fixture
def scene(tmp_path) -> tuple[Path, Path]:
    """A one-image reference folder and the image's path."""
    root = places_folder(tmp_path / "data", {"scene.png": Image.fromarray(rgb(40, 40))})
    return root, root / "natural" / "forest" / "scene.png"


def test_a_replaced_reference_file_is_refused_by_name_and_nothing_is_lost(tmp_path, scene):
    root, image = scene
    on_files(tmp_path, root, "seeds=[1]")
    before = sample_files(tmp_path)
    Image.fromarray(rgb(40, 40)).save(image)  # other pixels under the same name
    with pytest.raises(DatasetError) as info:
        on_files(tmp_path, root, "seeds=[1,2]")
    message = str(info.value)
    assert "reference image forest/scene (natural/forest/scene.png)" in message and "\n" not in message
    assert "changed since this task's samples were made" in message and "restore the original file" in message
    assert "task_name=" in message and "Nothing was generated" in message
    assert sample_files(tmp_path) == before  # no seed-2 sample, every earlier file intact


def test_a_reencoded_file_with_the_same_pixels_is_the_same_reference(tmp_path, scene):
    root, image = scene
    on_files(tmp_path, root, "seeds=[1]")
    pixels = np.asarray(Image.open(image))
    Image.fromarray(pixels).save(image, compress_level=0)  # other bytes, same pixels
    summary = on_files(tmp_path, root, "seeds=[1,2]")
    assert summary["pending"] == 1
    rows = pd.read_csv(summary["samples_csv"])
    assert rows["reference_sha256"].nunique() == 1


def test_rows_record_the_digest_of_the_pixels_the_model_saw(tmp_path, scene):
    root, _ = scene
    rows = pd.read_csv(on_files(tmp_path, root)["samples_csv"])
    copy = np.asarray(Image.open(tmp_path / rows["reference_path"].iloc[0]))
    assert rows["reference_sha256"].iloc[0] == reference_digest(copy) and len(rows["reference_sha256"].iloc[0]) == 64


def test_a_tampered_copy_is_refused_and_deleting_it_lets_the_run_go_on(tmp_path, scene):
    root, _ = scene
    rows = pd.read_csv(on_files(tmp_path, root, "seeds=[1]")["samples_csv"])
    copy = tmp_path / rows["reference_path"].iloc[0]
    whole = copy.read_bytes()
    Image.fromarray(rgb(32, 32)).save(copy)
    with pytest.raises(DatasetError, match=re.escape(f"(the copy {copy})")):
        on_files(tmp_path, root, "seeds=[1,2]")
    copy.unlink()  # the fix the message gives when only the copy changed: the rows' digest still guards
    assert on_files(tmp_path, root, "seeds=[1,2]")["pending"] == 1
    assert copy.read_bytes() == whole


def test_a_replaced_file_is_refused_even_after_its_copy_was_deleted(tmp_path, scene):
    root, image = scene
    rows = pd.read_csv(on_files(tmp_path, root, "seeds=[1]")["samples_csv"])
    (tmp_path / rows["reference_path"].iloc[0]).unlink()
    Image.fromarray(rgb(40, 40)).save(image)
    with pytest.raises(DatasetError, match="recorded in this run's rows"):
        on_files(tmp_path, root, "seeds=[1,2]")


def test_a_subject_changed_in_the_protocol_is_refused_by_sample(tmp_path):
    run_benchmark(compose_cfg(DRAWN, tmp_path))
    cfg = compose_cfg(DRAWN, tmp_path)
    forest = next(e for e in cfg.protocol.subcategories if e.subcategory == "forest")
    forest.prompts = [{"text": "Deer roaming", "subject": "roaming"}, *forest.prompts[1:]]
    with pytest.raises(ConfigError) as info:
        run_benchmark(cfg)
    message = str(info.value)
    assert "forest/00000/deer_roaming/s51828" in message and "subject='Deer'" in message
    assert "subject='roaming'" in message and "Fix:" in message


def weights_run(tmp_path: Path, *metric: str) -> ConfigError:
    """A run whose only metric is `metric`: refused before its first sample, with nothing written."""
    overrides = [*DRAWN, "metrics=none", *metric]
    with pytest.raises(ConfigError) as info:
        run_benchmark(compose_cfg(overrides, tmp_path))
    assert not list((tmp_path / "outputs").rglob("*.png")) and not list((tmp_path / "outputs").rglob("*.json"))
    assert "\n" not in str(info.value)
    return info.value


def test_clip_weights_that_cannot_load_stop_the_run_before_the_first_sample(tmp_path):
    garbage = tmp_path / "clip.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    error = weights_run(
        tmp_path,
        "+metrics.per_sample.clip._target_=bench.metrics.clip_score.CLIPScore",
        "+metrics.per_sample.clip.arch=RN50",
        f"+metrics.per_sample.clip.weights_path={garbage}",
    )
    assert isinstance(error, MissingWeightsError)
    assert f"metrics.clip_weights='{garbage}' cannot be loaded" in str(error) and "Fix:" in str(error)


def test_inception_weights_that_cannot_load_stop_the_run_before_the_first_sample(tmp_path):
    garbage = tmp_path / "inception.pth"
    garbage.write_bytes(b"\x00" * 64)
    error = weights_run(
        tmp_path,
        "+metrics.per_sample.fid64_pair._target_=bench.metrics.fid_pair.Fid64Pair",
        f"+metrics.per_sample.fid64_pair.inception_weights={garbage}",
    )
    assert f"the Inception weights {garbage}" in str(error) and "cannot be loaded" in str(error)


def test_a_truncated_toy_clip_stops_the_run_before_the_first_sample(tmp_path):
    folder = tmp_path / "clip"
    shutil.copytree(REPO_ROOT / "models/toy/clip", folder)
    weights = folder / "open_clip_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    error = weights_run(
        tmp_path,
        "+metrics.per_sample.subject_ok._target_=bench.toy.metrics.ToySubject",
        f"+metrics.per_sample.subject_ok.clip_folder={folder}",
    )
    assert f"the toy CLIP in {folder} cannot be loaded" in str(error) and "make toy-models" in str(error)


def test_set_level_inception_weights_that_cannot_load_give_nan_with_the_reason(tmp_path):
    garbage = tmp_path / "inception.pth"
    garbage.write_bytes(b"\x00" * 64)
    buffer = io.BytesIO()
    Image.fromarray(rgb(16, 16)).save(buffer, format="PNG")
    (tmp_path / "a.png").write_bytes(buffer.getvalue())
    samples = pd.DataFrame(
        {"label": ["x", "x"], "status": ["ok", "ok"], "image_path": ["a.png"] * 2, "reference_path": ["a.png"] * 2}
    )
    frame, _ = set_level_metrics(samples, ["label"], tmp_path, SetLevelAssets(inception_weights=garbage))
    reason = frame["fid2048_nan_reason"].iloc[0]
    assert np.isnan(frame["fid2048"].iloc[0]) and str(garbage) in reason and "cannot be loaded" in reason
