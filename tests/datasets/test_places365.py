"""dataset=places365: the authors' folder layout and torchvision's layout, the seeded choice, the manifest."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.config import ConfigError, build
from bench.datasets.base import DatasetError
from bench.task import run_benchmark
from tests.conftest import compose_cfg, minimal_run

# A few lines of Places365's categories file: the two classes the protocol maps forest and ocean to, and
# neighbours that must never be picked.
CATEGORIES = ["/f/forest/broadleaf", "/f/forest/needleleaf", "/f/forest_path", "/o/ocean", "/o/office"]


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(path, quality=90)


@pytest.fixture
def authors_root(tmp_path) -> Path:
    """<root>/<category>/<subcategory>/*.jpg with 5 forest and 4 ocean images."""
    root = tmp_path / "DATA-1"
    for k in range(5):
        write_jpeg(root / "natural" / "forest" / f"forest_{k:03d}.jpg", seed=k)
    for k in range(4):
        write_jpeg(root / "natural" / "ocean" / f"sea_{k:03d}.jpg", seed=100 + k)
    return root


@pytest.fixture
def torchvision_root(tmp_path) -> Path:
    """categories_places365.txt, places365_val.txt and val_256/ as torchvision's Places365 leaves them."""
    root = tmp_path / "places365"
    (root / "val_256").mkdir(parents=True)
    (root / "categories_places365.txt").write_text("".join(f"{c} {i}\n" for i, c in enumerate(CATEGORIES)))
    lines = []
    for k in range(1, 31):
        label = k % len(CATEGORIES)
        name = f"Places365_val_{k:08d}.jpg"
        write_jpeg(root / "val_256" / name, seed=k, size=(32, 32))
        lines.append(f"{name} {label}\n")
    (root / "places365_val.txt").write_text("".join(lines))
    return root


PLACES365_RUN = ["dataset=places365", "truth_record.enabled=false"]


def dataset(root: Path, *overrides: str):
    cfg = compose_cfg(["dataset=places365", f"dataset.root={root}", "dataset.subcategories=[forest,ocean]", *overrides])
    return build(cfg.dataset)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_authors_layout_picks_n_per_folder_and_the_manifest_checksums_match(authors_root):
    data = dataset(authors_root, "dataset.images_per_subcategory=3")
    refs = data.references()
    assert data.resolved_layout() == "folders"
    assert [r.subcategory for r in refs] == ["ocean"] * 3 + ["forest"] * 3  # protocol order
    assert len({r.image_id for r in refs}) == 6 and all(r.category == "natural" for r in refs)
    assert [p.text for p in refs[-1].prompts][:2] == ["Deer roaming", "Bear roaming"]
    manifest = data.manifest()
    for ref, row in zip(refs, manifest, strict=True):
        file = authors_root / row["file"]
        assert file.parent == authors_root / "natural" / ref.subcategory
        assert row["image_id"] == ref.image_id == f"{ref.subcategory}/{file.stem}"
        assert row["sha256"] == sha256(file) and row["bytes"] == file.stat().st_size
        assert np.array_equal(np.asarray(ref.load()), np.asarray(Image.open(file).convert("RGB")))


def test_the_choice_is_seeded_stable_and_grows_by_prefix(authors_root):
    ids = lambda *o: [r.image_id for r in dataset(authors_root, *o).references() if r.subcategory == "forest"]  # noqa: E731
    three, four = ids("dataset.images_per_subcategory=3"), ids("dataset.images_per_subcategory=4")
    assert three == ids("dataset.images_per_subcategory=3") and four[:3] == three
    only_forest = [
        r.image_id
        for r in dataset(
            authors_root, "dataset.subcategories=[forest]", "dataset.images_per_subcategory=3"
        ).references()
    ]
    assert only_forest == three  # independent of which other subcategories are asked for
    by_seed = {tuple(ids("dataset.images_per_subcategory=3", f"dataset.seed={s}")) for s in range(6)}
    assert len(by_seed) > 1
    assert sorted(ids("dataset.images_per_subcategory=5", "dataset.subcategories=[forest]")) == [
        f"forest/forest_{k:03d}" for k in range(5)
    ]


def test_torchvision_layout_reads_only_the_mapped_classes(torchvision_root):
    data = dataset(torchvision_root, "dataset.images_per_subcategory=4")
    assert data.resolved_layout() == "torchvision"
    labels = {
        line.split()[0]: int(line.split()[1])
        for line in (torchvision_root / "places365_val.txt").read_text().splitlines()
    }
    manifest = pd.DataFrame(data.manifest())
    assert len(manifest) == 8
    for row in manifest.itertuples():
        expected = {"forest": "/f/forest/broadleaf", "ocean": "/o/ocean"}[row.subcategory]
        assert row.places365_class == expected and row.split == "val"
        assert CATEGORIES[labels[Path(row.file).name]] == expected  # the file list's label, read independently
        assert row.file.startswith("val_256/") and row.sha256 == sha256(torchvision_root / row.file)


def test_a_run_writes_the_manifest_of_the_files_it_used(tmp_path, torchvision_root):
    cfg = compose_cfg(
        # No subject truth: CLIPSeg's weights cannot be here (its fail-fast is tested in tests/truth).
        [*PLACES365_RUN, f"dataset.root={torchvision_root}", "method=txt2img", *minimal_run(2)],
        tmp_root=tmp_path,
    )
    summary = run_benchmark(cfg)
    manifest = pd.read_csv(Path(summary["run_dir"]) / "manifest.csv")
    rows = pd.read_csv(summary["samples_csv"])
    assert sorted(manifest.image_id) == sorted(rows.image_id) and len(rows) == 2
    for row in manifest.itertuples():
        assert row.sha256 == sha256(torchvision_root / row.file)
    assert set(rows.reference_source) == set(manifest.file)


def test_no_data_offline_is_one_clear_error(tmp_path):
    with pytest.raises(DatasetError) as info:
        dataset(tmp_path / "nothing").references()
    message = str(info.value)
    assert str(tmp_path / "nothing") in message and "dataset.download=true" in message
    assert "categories_places365.txt" in message and "<root>/<category>/<subcategory>/*.jpg" in message


def test_download_unreachable_is_the_same_clear_error(tmp_path, monkeypatch):
    # torchvision downloads with urllib over http; a refusing proxy stands in for "no internet".
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.raises(DatasetError, match="downloading failed") as info:
        dataset(tmp_path / "fresh", "dataset.download=true").references()
    assert "dataset.root" in str(info.value)


def test_mapping_and_counts_are_checked_before_any_work(torchvision_root, authors_root):
    with pytest.raises(ConfigError, match=r"'/f/forest/broadleaf'.*close"):
        (torchvision_root / "categories_places365.txt").write_text("/f/forest/broad_leaf 0\n/o/ocean 1\n")
        dataset(torchvision_root).references()
    with pytest.raises(DatasetError, match="has 4 images for subcategory ocean"):
        dataset(authors_root, "dataset.images_per_subcategory=5").references()
    with pytest.raises(ConfigError, match="dataset.split='test'"):
        dataset(authors_root, "dataset.split=test")
