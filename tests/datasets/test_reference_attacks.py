"""Hostile reference folders (#15): oversized headers, 16-bit scans, rotated photos, odd file names,
prompts in any alphabet. Each is converted (and the conversion recorded) or refused by name, before
anything is generated."""

from __future__ import annotations

import io
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.datasets.base import MAX_REFERENCE_PIXELS, DatasetError, prompt_slug, sample_key, to_model_input
from bench.datasets.places365 import Places365Scenes
from bench.task import load_references, plan_work, run_benchmark
from tests.conftest import compose_cfg, minimal_run
from tests.datasets.test_reference_images import places_folder, rgb, run_on


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (8-bit RGB) and whose data is a few bytes: a bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [9000, 20000])  # over our bound; over PIL's own bomb limit as well
def test_an_oversized_header_is_refused_naming_the_file_before_generation(tmp_path, side):
    root = places_folder(tmp_path / "data", {"bomb.png": png_header_only(side, side)})
    with pytest.raises(DatasetError) as info:
        run_on(tmp_path, root, 1)
    message = str(info.value)
    assert str(root / "natural/forest/bomb.png") in message and "Downscale the file" in message
    assert f"{side}x{side}" in message or "decompression bomb" in message.lower()
    assert not list(tmp_path.rglob("config.yaml"))  # refused before the backbone was built


def test_in_memory_images_are_bounded_too():
    to_model_input(Image.fromarray(rgb(8, 8)), 16)  # a normal image passes
    lazy = Image.open(io.BytesIO(png_header_only(9000, 9000)))  # header read, pixels never allocated
    with pytest.raises(DatasetError, match=f"9000x9000 pixels, more than the {MAX_REFERENCE_PIXELS}"):
        to_model_input(lazy, 16)


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    values = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    out, note = to_model_input(image, 32)
    expected = np.round(values * (255 / 65535)).astype(np.uint8)
    assert np.array_equal(out[..., 0], expected) and np.array_equal(out[..., 2], expected)
    assert note == "mode I;16 16-bit->8-bit (x255/65535); mode L->RGB"
    assert out.max() == 255 and out.min() == 0 and len(np.unique(out)) > 200  # the old path made it all white


def test_sixteen_bit_png_file_runs_and_records_its_scaling(tmp_path):
    values = (np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    root = places_folder(tmp_path / "data", {"scan.png": buffer.getvalue()})
    rows = pd.read_csv(run_on(tmp_path, root, 1)["samples_csv"]).set_index("image_id")
    assert rows.loc["forest/scan", "status"] == "ok"
    assert rows.loc["forest/scan", "reference_conversion"].startswith("mode I;16 16-bit->8-bit")
    seen = np.asarray(Image.open(tmp_path / rows.loc["forest/scan", "reference_path"]))
    assert np.array_equal(seen[..., 0], np.round(values * (255 / 65535)).astype(np.uint8))


def test_a_floating_point_image_is_refused():
    image = Image.fromarray(np.zeros((8, 8), np.float32), "F")
    with pytest.raises(ValueError, match="floating-point images .* no defined range"):
        to_model_input(image, 8)


def test_exif_orientation_is_applied_and_recorded(tmp_path):
    upright = rgb(24, 40)  # 24 rows, 40 columns
    stored = np.rot90(upright, k=1)  # what a camera held sideways stores: [40, 24]
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "photo.png"
    Image.fromarray(np.ascontiguousarray(stored)).save(path, exif=exif)
    out, note = to_model_input(Image.open(path), 40)
    assert note == "exif orientation 6 applied; resize 40x24->40x40 bicubic"  # the displayed size, not the stored
    expected = np.asarray(Image.fromarray(upright).resize((40, 40), Image.BICUBIC))
    assert np.array_equal(out, expected)


DEER = [{"text": "A deer", "subject": "deer"}]


def test_file_names_give_safe_distinct_ids(tmp_path):
    names = ["a.jpg", "a.png", "été 2.jpg", "..x.png", "-dash.png", "ok_01.jpg", "résumé.jpeg", "résume.jpeg"]
    root = places_folder(tmp_path / "data", {n: Image.fromarray(rgb(8, 8)) for n in names})
    dataset = Places365Scenes(
        "places365",
        {
            "name": "p",
            "subcategories": [
                {"category": "natural", "subcategory": "forest", "prompts": [{"text": "A deer", "subject": "deer"}]}
            ],
        },
        str(root),
        layout="folders",
        images_per_subcategory=len(names),
    )
    ids = [r.image_id for r in dataset.references()]
    assert len(set(ids)) == len(names)
    assert all(re.fullmatch(r"forest/[A-Za-z0-9][A-Za-z0-9._-]*", i) for i in ids), ids
    assert "forest/ok_01" in ids  # a plain, unique stem stays as it was
    assert [m["image_id"] for m in dataset.manifest()] == ids
    units = plan_work(dataset.references(), [1], 0, 1)  # every key is a safe relative path
    refs = load_references(units, 16, "bicubic")
    assert len(refs) == len(names)


OLD_SLUG = lambda prompt: re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")  # noqa: E731 - today's rule


def test_ascii_prompts_keep_their_slug_and_every_other_alphabet_gets_a_distinct_safe_one():
    protocol = compose_cfg([]).protocol
    for entry in protocol.subcategories:
        for prompt in entry.prompts:
            assert prompt_slug(prompt.text) == OLD_SLUG(prompt.text)  # existing outputs keep their paths
    assert sample_key("forest/00003", "Deer roaming", 51828) == "forest/00003/deer_roaming/s51828"
    others = [
        "Cerf en forêt",
        "Cerf en foret",
        "森の鹿",
        "森の猫",
        "Олень",
        "Олени",
        "!!!",
        "???",
        "",
        "a" * 300,
        "a" * 301,
    ]
    slugs = [prompt_slug(p) for p in others]
    assert len(set(slugs)) == len(others)
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9_]*(-[0-9a-f]{12})?", s) and len(s) <= 100 for s in slugs), slugs
    assert prompt_slug("Cerf en foret") == "cerf_en_foret" and prompt_slug("Cerf en forêt").startswith("cerf_en_for")
    assert prompt_slug("tab\there") != prompt_slug("tab here")  # control characters are not plain ASCII


def test_a_non_ascii_prompt_runs_end_to_end(tmp_path):
    cfg = compose_cfg(["method=txt2img", *minimal_run()], tmp_path)
    forest = next(e for e in cfg.protocol.subcategories if e.subcategory == "forest")
    forest.prompts = [{"text": "Cerf en forêt", "subject": "Cerf"}]
    rows = pd.read_csv(run_benchmark(cfg)["samples_csv"])
    key = rows["sample_key"].iloc[0]
    assert rows["status"].tolist() == ["ok"] and key.startswith("forest/00000/cerf_en_for_t-")
    assert (tmp_path / rows["image_path"].iloc[0]).is_file() and Path(rows["image_path"].iloc[0]).parts[
        -1
    ] == "s51828.png"


def test_the_native_reference_of_fid64_pair_is_upright_and_scaled_too(tmp_path):
    from bench.metrics.paper_io import as_rgb_array

    values = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
    assert np.array_equal(as_rgb_array(Image.fromarray(values))[..., 1], np.round(values * (255 / 65535)))
    upright = rgb(12, 20)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, k=1))).save(tmp_path / "p.png", exif=exif)
    assert np.array_equal(as_rgb_array(Image.open(tmp_path / "p.png")), upright)


def test_a_fifo_named_like_an_image_is_never_opened(tmp_path):
    root = places_folder(tmp_path / "data", {"a.jpg": Image.fromarray(rgb(16, 16))})
    os.mkfifo(root / "natural/forest/b.jpg")  # reading it would block forever
    summary = run_on(tmp_path, root, 1)
    assert pd.read_csv(summary["samples_csv"])["image_id"].tolist() == ["forest/a"]
