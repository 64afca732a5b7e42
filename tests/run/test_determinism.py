"""A sample's randomness depends only on its identity: batch size and order change no bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.datasets.synthetic import SyntheticPlaces, draw_scene
from bench.sd.seeding import sample_seed
from bench.task import run_benchmark
from tests.conftest import FAST, compose_cfg


def run_images(tmp_path: Path, overrides: list[str]) -> dict[str, bytes]:
    cfg = compose_cfg(
        [*FAST, "model.image_size=32", "dataset.subcategories=[forest,ocean,park,downtown]", *overrides],
        tmp_root=tmp_path,
    )
    run_benchmark(cfg)
    images = sorted((tmp_path / "outputs").rglob("images/**/*.png"))
    assert len(images) == 4
    return {str(p.relative_to(tmp_path)): p.read_bytes() for p in images}


@pytest.mark.parametrize("method", ["sdedit", "txt2img"])
def test_batch_1_and_batch_4_give_bit_identical_images(tmp_path, method):
    one = run_images(tmp_path / "b1", [f"method={method}", "batch_size=1"])
    four = run_images(tmp_path / "b4", [f"method={method}", "batch_size=4"])
    assert one == four


def test_seed_depends_on_identity_only():
    a = sample_seed("forest/00000", "Deer roaming", 51828, "init")
    assert a == sample_seed("forest/00000", "Deer roaming", 51828, "init")
    others = {
        sample_seed("forest/00001", "Deer roaming", 51828, "init"),
        sample_seed("forest/00000", "Bear roaming", 51828, "init"),
        sample_seed("forest/00000", "Deer roaming", 1, "init"),
        sample_seed("forest/00000", "Deer roaming", 51828, "steps"),
    }
    assert a not in others and len(others) == 4


def test_synthetic_scene_k_is_independent_of_the_request():
    protocol = compose_cfg().protocol
    small = SyntheticPlaces("s", protocol, seed=3, image_size=32, images_per_subcategory=1, subcategories=["ocean"])
    big = SyntheticPlaces("s", protocol, seed=3, image_size=32, images_per_subcategory=3)
    img_small = np.asarray(small.references()[0].load())
    img_big = np.asarray(next(r for r in big.references() if r.image_id == "ocean/00000").load())
    assert np.array_equal(img_small, img_big)
    assert np.array_equal(img_small, draw_scene("ocean", 3, 0, 32))
    assert not np.array_equal(draw_scene("ocean", 3, 0, 32), draw_scene("ocean", 3, 1, 32))
    assert not np.array_equal(draw_scene("ocean", 3, 0, 32), draw_scene("ocean", 4, 0, 32))


def test_protocol_has_34_prompts_with_subjects():
    protocol = compose_cfg().protocol
    refs = SyntheticPlaces("s", protocol, image_size=32, images_per_subcategory=1).references()
    prompts = [p for r in refs for p in r.prompts]
    assert len(refs) == 10 and len(prompts) == 34
    assert all(p.subject in p.text.split() for p in prompts)
    assert Image.fromarray(np.asarray(refs[0].load())).size == (32, 32)
