"""The toy world: deterministic scenes, exact masks, references = scenes without their subject."""

from __future__ import annotations

import numpy as np
import pytest

from bench.sd.errors import ConfigError
from bench.toy.oracle import MAX_DISTANCE
from bench.toy.world import COLOURS, SHAPES, SUBCATEGORIES, ToyWorld, background, toy_scene
from tests.conftest import compose_cfg


def test_scene_is_a_pure_function_of_seed_and_index():
    later = toy_scene(3, 17)
    for k in range(5):  # drawing other scenes first changes nothing
        toy_scene(3, k)
    again = toy_scene(3, 17)
    assert np.array_equal(later.image, again.image) and np.array_equal(later.mask, again.mask)
    assert not np.array_equal(toy_scene(4, 17).image, later.image)


@pytest.mark.parametrize("k", range(0, 60, 7))
def test_mask_is_exactly_the_subject_pixels(k):
    scene = toy_scene(1, k)
    assert scene.mask.any()
    inside = scene.image[scene.mask]  # [n, 3]: one flat colour, near the named one
    assert (inside == inside[0]).all()
    assert np.abs(inside[0].astype(int) - COLOURS[scene.colour]).max() <= 12
    assert np.array_equal(scene.image[~scene.mask], scene.background[~scene.mask])
    assert f" {scene.shape} " in f" {scene.caption} " and scene.caption.startswith(f"a {scene.colour} {scene.shape} in")


def test_masks_match_the_shape_geometry():
    sizes = {s: [] for s in SHAPES}
    for k in range(120):
        scene = toy_scene(1, k)
        rows, cols = np.nonzero(scene.mask)
        fill = scene.mask.sum() / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1))
        sizes[scene.shape].append(fill)
    assert min(sizes["box"]) == 1.0  # a square fills its bounding box
    assert 0.7 < np.mean(sizes["ball"]) < 0.85  # pi / 4 = 0.785 for a disc
    assert 0.4 < np.mean(sizes["cone"]) < 0.62  # 1 / 2 for a triangle


def test_reference_is_the_training_scene_without_its_subject():
    j, sub = 3, "ocean"
    k = 10 * j + SUBCATEGORIES.index(sub)
    scene = toy_scene(0, k)
    assert scene.subcategory == sub
    assert np.array_equal(scene.background, background(sub, 0, j))


def test_backgrounds_stay_clear_of_subject_colours():
    palette = np.array(list(COLOURS.values()), float)
    worst = min(
        np.linalg.norm(background(sub, seed, j).reshape(-1, 1, 3).astype(float) - palette, axis=-1).min()
        for sub in SUBCATEGORIES
        for seed in (0, 1)
        for j in range(6)
    )
    assert worst > MAX_DISTANCE


def test_dataset_follows_the_protocol_with_toy_prompts():
    cfg = compose_cfg(["dataset=toy_world", "dataset.images_per_subcategory=2"])
    protocol = {"name": "places34", "subcategories": list(cfg.protocol.subcategories)}
    world = ToyWorld(name="toy_world", protocol=protocol, images_per_subcategory=2)
    refs = world.references()
    assert len(refs) == 20 and refs[0].image_id == "athletic_field/00000"
    prompts = [p for e in world.entries for p in e["prompts"]]
    assert len(prompts) == 34 == sum(len(e["prompts"]) for e in protocol["subcategories"])
    assert all(p.subject in p.text.split() for p in prompts)
    assert {p.text.split()[1] for p in prompts} == set(COLOURS) and {p.subject for p in prompts} == set(SHAPES)
    image = np.asarray(refs[1].load())
    assert image.shape == (64, 64, 3) and np.array_equal(image, background("athletic_field", 0, 1))
    first = ToyWorld(name="t", protocol=protocol, prompts_per_subcategory=1, subcategories=["forest"])
    # forest follows 26 protocol prompts: prompt 26 is colour 26 % 4 = 2 (blue), shape (26 // 4) % 3 = 0 (ball)
    assert [p.text for p in first.entries[0]["prompts"]] == ["a blue ball in a forest"]
    with pytest.raises(ConfigError, match="forrest"):
        ToyWorld(name="t", protocol=protocol, subcategories=["forrest"])
