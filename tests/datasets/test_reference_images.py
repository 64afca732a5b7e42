"""Reference images of any mode and size are converted as the config says and the conversion is recorded;
an unreadable or truncated file stops the run before anything is generated, naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFile

from bench.datasets.base import DatasetError, to_model_input
from bench.task import run_benchmark
from tests.conftest import compose_cfg, minimal_run

RNG = np.random.default_rng(7)


def rgb(h: int, w: int) -> np.ndarray:
    return (RNG.random((h, w, 3)) * 255).astype(np.uint8)


def test_grayscale_is_replicated_to_three_channels():
    gray = (RNG.random((32, 32)) * 255).astype(np.uint8)
    out, note = to_model_input(Image.fromarray(gray, "L"), 32)
    assert note == "mode L->RGB" and out.shape == (32, 32, 3)
    assert all(np.array_equal(out[..., c], gray) for c in range(3))


def test_rgba_is_composited_on_white():
    color, alpha = rgb(32, 32), (RNG.random((32, 32)) * 255).astype(np.uint8)
    out, note = to_model_input(Image.fromarray(np.dstack([color, alpha]), "RGBA"), 32)
    a = alpha[..., None] / 255.0
    expected = a * color + (1 - a) * 255.0  # "over" a white background, computed in floating point
    assert note == "mode RGBA->RGB"
    assert np.abs(out.astype(float) - expected).max() <= 1.0


def test_palette_images_use_their_palette_and_transparency():
    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    index = RNG.integers(0, 256, (32, 32), dtype=np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(palette.flatten().tolist())
    out, note = to_model_input(image, 32)
    assert note == "mode P->RGB" and np.array_equal(out, palette[index])
    image.info["transparency"] = int(index[0, 0])  # one palette entry is transparent: white shows through
    out, _ = to_model_input(image, 32)
    transparent = index == index[0, 0]
    assert (out[transparent] == 255).all() and np.array_equal(out[~transparent], palette[index][~transparent])


def test_other_sizes_are_resized_with_the_configured_filter_and_noted():
    constant = np.full((30, 48, 3), (10, 200, 90), np.uint8)
    out, note = to_model_input(Image.fromarray(constant), 32, "lanczos")
    assert out.shape == (32, 32, 3) and note == "resize 48x30->32x32 lanczos"
    assert (out == (10, 200, 90)).all()  # any interpolating filter keeps a constant image constant
    _, cmyk_note = to_model_input(Image.fromarray(constant).convert("CMYK"), 32)
    assert cmyk_note == "mode CMYK->RGB; resize 48x30->32x32 bicubic"
    assert to_model_input(Image.fromarray(rgb(32, 32)), 32)[1] == "none"


def places_folder(root: Path, files: dict[str, Image.Image | bytes]) -> Path:
    folder = root / "natural" / "forest"
    folder.mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            content.save(folder / name)
    return root


def run_on(tmp_path: Path, root: Path, n: int, *overrides: str) -> dict:
    cfg = compose_cfg(
        # No subject truth: CLIPSeg's weights cannot be here (its fail-fast is tested in tests/truth).
        ["dataset=places365", "truth_record.enabled=false", f"dataset.root={root}", "method=txt2img", *minimal_run(n)]
        + list(overrides),
        tmp_root=tmp_path,
    )
    return run_benchmark(cfg)


def test_every_mode_runs_and_its_conversion_is_in_the_row(tmp_path):
    rgba = Image.fromarray(np.dstack([rgb(40, 40), np.full((40, 40), 128, np.uint8)]), "RGBA")
    root = places_folder(
        tmp_path / "data",
        {
            "gray.jpg": Image.fromarray(rgb(30, 40)).convert("L"),
            "alpha.png": rgba,
            "palette.png": Image.fromarray(rgb(32, 32)).convert("P"),
            "plain.jpg": Image.fromarray(rgb(32, 32)),
        },
    )
    summary = run_on(tmp_path, root, 4, "dataset.resample=bilinear")
    rows = pd.read_csv(summary["samples_csv"]).set_index("image_id")
    assert (rows.status == "ok").all()
    assert rows.loc["forest/gray", "reference_conversion"] == "mode L->RGB; resize 40x30->32x32 bilinear"
    assert rows.loc["forest/alpha", "reference_conversion"] == "mode RGBA->RGB; resize 40x40->32x32 bilinear"
    assert rows.loc["forest/palette", "reference_conversion"] == "mode P->RGB"
    assert rows.loc["forest/plain", "reference_conversion"] == "none"
    seen = np.asarray(Image.open(tmp_path / rows.loc["forest/gray", "reference_path"]))
    expected = np.asarray(
        Image.open(root / "natural" / "forest" / "gray.jpg").convert("RGB").resize((32, 32), Image.BILINEAR)
    )
    assert np.array_equal(seen, expected)


@pytest.mark.parametrize("damage", ["truncated", "not_an_image"])
def test_a_bad_file_stops_the_run_before_generation_naming_it(tmp_path, damage):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # nobody may switch PIL to padding truncated files
    Image.fromarray(rgb(64, 64)).save(tmp_path / "good.jpg", quality=95)
    good = (tmp_path / "good.jpg").read_bytes()
    bad = good[: len(good) // 2] if damage == "truncated" else b"this is not a JPEG"
    root = places_folder(tmp_path / "data", {"a_good.jpg": good, "b_bad.jpg": bad})
    with pytest.raises(DatasetError) as info:
        run_on(tmp_path, root, 2)
    message = str(info.value)
    assert str(root / "natural" / "forest" / "b_bad.jpg") in message and "nothing was generated" in message
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.png"))
    assert not list((tmp_path / "outputs").rglob("config.yaml"))  # the backbone was never built
