"""Places365 scenes for the protocol (docs/paper.md §4.1): N images per subcategory, chosen by seed, with a manifest.

`root` holds the images in one of two layouts:
    torchvision: categories_places365.txt, places365_<split>.txt and val_256/ (data_256_standard/ for
        train-standard), as `torchvision.datasets.Places365(root, split, small=True, download=True)`
        leaves them. Each subcategory reads the Places365 class the protocol maps it to
        (conf/protocol/places34.yaml, `places365_class`).
    folders: <root>/<category>/<subcategory>/*.jpg, like the authors' DATA-1 folder.
The choice is deterministic: a subcategory's candidate files sorted by name, a permutation drawn from
(seed, subcategory), its first N. Raising N keeps the first N images. `manifest()` lists every file
used with its sha256.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bench.datasets.base import (
    Dataset,
    DatasetError,
    ReferenceImage,
    file_sha256,
    open_bounded,
    protocol_subcategories,
    safe_image_ids,
)
from bench.sd.errors import ConfigError

LAYOUTS = ("auto", "torchvision", "folders")
LABELLED_SPLITS = ("val", "train-standard", "train-challenge")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CATEGORIES_FILE = "categories_places365.txt"


@dataclass(frozen=True)
class SelectedImage:
    entry: dict  # the protocol subcategory (category, subcategory, prompts, places365_class)
    path: Path
    places365_class: str  # "" in the folders layout


def file_list_name(split: str) -> str:
    return f"places365_{split}.txt"


def images_dir_name(split: str, small: bool) -> str:
    """torchvision's folder of the split's images."""
    size = "256" if small else "large"
    if split.startswith("train"):
        return f"data_{size}_{'challenge' if 'challenge' in split else 'standard'}"
    return f"{split}_{size}"


def read_image(path: Path) -> Image.Image:
    """Decode the whole file now (PIL is lazy), so a truncated, corrupt or oversized file raises here, naming it."""
    return open_bounded(path)


class Places365Scenes(Dataset):
    """The protocol's subcategories, each with N Places365 images.

    The Hydra `_target_` of conf/dataset/places365.yaml: the constructor's keywords are that file's keys.
    """

    # Real images: where a generated subject is can only be found by a segmenter, so a run records its
    # subject truth by default (truth_record.enabled=auto; bench/truth).
    records_truth = True

    def __init__(
        self,
        name: str,
        protocol: Mapping,
        root: str,
        layout: str = "auto",
        split: str = "val",
        small: bool = True,
        download: bool = False,
        images_per_subcategory: int = 10,
        seed: int = 0,
        subcategories: Sequence[str] | None = None,
        prompts_per_subcategory: int | None = None,
        resample: str = "bicubic",
    ):
        if layout not in LAYOUTS:
            raise ConfigError(f"dataset.layout={layout!r}; expected one of {LAYOUTS}.")
        if split not in LABELLED_SPLITS:
            raise ConfigError(
                f"dataset.split={split!r}; expected one of {LABELLED_SPLITS} (the test split has no labels)."
            )
        if images_per_subcategory < 1:
            raise ConfigError(f"dataset.images_per_subcategory={images_per_subcategory}; expected >= 1.")
        self.name, self.root, self.layout = name, Path(root).expanduser(), layout
        self.split, self.small, self.download = split, small, download
        self.images_per_subcategory, self.seed, self.resample = images_per_subcategory, seed, resample
        self.entries = protocol_subcategories(protocol, subcategories, prompts_per_subcategory)
        self._selected: list[SelectedImage] | None = None
        self._layout: str | None = None

    # --- public ------------------------------------------------------------------------------------------------

    def references(self) -> list[ReferenceImage]:
        """Every chosen image, in protocol order, then in order of choice."""
        return [
            ReferenceImage(
                image_id=image_id,
                category=s.entry["category"],
                subcategory=s.entry["subcategory"],
                prompts=s.entry["prompts"],
                source=self.relative(s.path),
                loader=lambda p=s.path: read_image(p),
            )
            for s, image_id in zip(self.selected(), self.image_ids(), strict=True)
        ]

    def image_ids(self) -> list[str]:
        """Per chosen image, "<subcategory>/<id>": the file's stem when plain and unique, else a safe hashed id."""
        chosen = self.selected()
        ids = [""] * len(chosen)
        for sub in dict.fromkeys(s.entry["subcategory"] for s in chosen):
            where = [i for i, s in enumerate(chosen) if s.entry["subcategory"] == sub]
            for i, safe in zip(where, safe_image_ids([chosen[i].path.name for i in where]), strict=True):
                ids[i] = f"{sub}/{safe}"
        return ids

    def manifest(self) -> list[dict]:
        """One row per image used: id, class, file (relative to root) and the sha256 of its bytes."""
        return [
            {
                "image_id": image_id,
                "category": s.entry["category"],
                "subcategory": s.entry["subcategory"],
                "places365_class": s.places365_class,
                "layout": self.resolved_layout(),
                "split": self.split if self.resolved_layout() == "torchvision" else "",
                "file": self.relative(s.path),
                "bytes": s.path.stat().st_size,
                "sha256": file_sha256(s.path),
            }
            for s, image_id in zip(self.selected(), self.image_ids(), strict=True)
        ]

    def selected(self) -> list[SelectedImage]:
        if self._selected is None:
            layout = self.resolved_layout()
            per_entry = self._torchvision_candidates() if layout == "torchvision" else self._folder_candidates()
            self._selected = [
                SelectedImage(entry, path, cls)
                for entry, (cls, candidates) in zip(self.entries, per_entry, strict=True)
                for path in self._choose(entry, candidates, cls)
            ]
        return self._selected

    def resolved_layout(self) -> str:
        """The layout found under root (once); downloads torchvision's when asked to and nothing is there."""
        if self._layout is None:
            self._layout = self._find_layout()
        return self._layout

    def _find_layout(self) -> str:
        if self.layout != "auto":
            if self.layout == "torchvision" and not self._has_torchvision_layout():
                self._download_or_fail()
            return self.layout
        if self._has_torchvision_layout():
            return "torchvision"
        if any((self.root / e["category"] / e["subcategory"]).is_dir() for e in self.entries):
            return "folders"
        self._download_or_fail()
        return "torchvision"

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    # --- layouts -----------------------------------------------------------------------------------------------

    def _has_torchvision_layout(self) -> bool:
        return (self.root / CATEGORIES_FILE).is_file() and (self.root / file_list_name(self.split)).is_file()

    def _download_or_fail(self) -> None:
        if self.download:
            try:
                from torchvision.datasets import Places365

                Places365(str(self.root), split=self.split, small=self.small, download=True)
            except Exception as exc:  # URLError, HTTP errors, checksum RuntimeError, disk full
                raise DatasetError(self._missing_message(f"downloading failed ({type(exc).__name__}: {exc})")) from exc
            if self._has_torchvision_layout():
                return
        raise DatasetError(self._missing_message("nothing there and dataset.download=false"))

    def _missing_message(self, reason: str) -> str:
        images = images_dir_name(self.split, self.small)
        return (
            f"Places365 images not found under dataset.root={self.root}: {reason}. Expected torchvision's layout "
            f"({CATEGORIES_FILE}, {file_list_name(self.split)}, {images}/) or the authors' layout "
            "<root>/<category>/<subcategory>/*.jpg. Provide them in one of three ways: "
            "(1) online, pass dataset.download=true (torchvision fetches the file lists and "
            f"{images}.tar, about 0.5 GB for val_256, into dataset.root); "
            "(2) point dataset.root (or BENCH_DATA_DIR, whose places365/ folder is the default root) at a copy "
            "already in torchvision's layout; "
            "(3) put your own images in <root>/<category>/<subcategory>/*.jpg (e.g. natural/forest/001.jpg)."
        )

    def _torchvision_candidates(self) -> list[tuple[str, list[Path]]]:
        """Per protocol entry: (class name, its images of the split sorted by name)."""
        class_to_idx = {}
        for line in (self.root / CATEGORIES_FILE).read_text().splitlines():
            if line.strip():
                cls, idx = line.split()
                class_to_idx[cls] = int(idx)
        wanted = {}
        for e in self.entries:
            cls = e.get("places365_class")
            if cls not in class_to_idx:
                close = difflib.get_close_matches(str(cls), list(class_to_idx), n=3)
                raise ConfigError(
                    f"subcategory {e['subcategory']} maps to places365_class={cls!r}, which {CATEGORIES_FILE} "
                    f"does not list (close: {close}). Fix the mapping in conf/protocol/."
                )
            wanted[class_to_idx[cls]] = cls
        images_dir = self.root / images_dir_name(self.split, self.small)
        by_class: dict[str, list[Path]] = {cls: [] for cls in wanted.values()}
        for line in (self.root / file_list_name(self.split)).read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and int(parts[1]) in wanted:
                by_class[wanted[int(parts[1])]].append(images_dir / parts[0].lstrip("/"))
        return [(e["places365_class"], sorted(by_class[e["places365_class"]])) for e in self.entries]

    def _folder_candidates(self) -> list[tuple[str, list[Path]]]:
        out = []
        for e in self.entries:
            folder = self.root / e["category"] / e["subcategory"]
            # Regular files only: a FIFO or device named x.jpg would block or never end when read.
            files = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            files = files if folder.is_dir() else []
            out.append(("", files))
        return out

    def _choose(self, entry: dict, candidates: list[Path], cls: str) -> list[Path]:
        """The first N of a permutation drawn from (seed, subcategory); every chosen file must exist."""
        n = self.images_per_subcategory
        where = f"class {cls}" if cls else f"folder {self.root / entry['category'] / entry['subcategory']}"
        if len(candidates) < n:
            raise DatasetError(
                f"{where} has {len(candidates)} images for subcategory {entry['subcategory']}, fewer than "
                f"dataset.images_per_subcategory={n}. Lower it or add images."
            )
        digest = hashlib.sha256(f"places365|{self.seed}|{entry['subcategory']}".encode()).digest()
        order = np.random.default_rng(int.from_bytes(digest[:8], "little")).permutation(len(candidates))
        chosen = [candidates[i] for i in order[:n]]
        missing = [str(p) for p in chosen if not p.is_file()]
        if missing:
            raise DatasetError(
                f"{len(missing)} chosen images of {where} are listed but missing, e.g. {missing[0]}. "
                "The image archive is incomplete: extract it again or pass dataset.download=true."
            )
        return chosen
