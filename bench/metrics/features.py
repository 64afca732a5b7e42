"""Per-image feature cache, keyed by the content of the image as fed and by the extractor.

A feature file lives at <cache_dir>/features/<extractor_id>/<layer>/<sha[:2]>/<sha>.npy, where sha is the
sha256 of the uint8 array (shape and bytes) that entered the network. The same pixels under the same
extractor, weights and library version are therefore never pushed through the network twice, whatever
run, method or file name they came from. Files are written atomically and read with allow_pickle=False;
a file damaged outside the harness is recomputed and rewritten, with a warning naming it.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bench.config import REPO_ROOT
from bench.records import atomic_write_bytes

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """paths.cache_dir's default outside a Hydra run: <repo>/.cache."""
    return REPO_ROOT / ".cache"


def image_digest(image: np.ndarray) -> str:
    """sha256 of a uint8 image's shape and bytes."""
    image = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{image.dtype}{image.shape}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class FeatureCache:
    """Features of `extractor(images [B, H, W, 3] uint8, layer) -> [B, D]`, cached on disk and in memory."""

    def __init__(self, extractor: Callable[[np.ndarray, str], np.ndarray], extractor_id: str, cache_dir: str | Path):
        self.extractor = extractor
        self.root = Path(cache_dir) / "features" / extractor_id
        self.memory: dict[tuple[str, str], np.ndarray] = {}
        self.hits = 0
        self.misses = 0

    def path(self, layer: str, digest: str) -> Path:
        return self.root / layer / digest[:2] / f"{digest}.npy"

    def get(self, images: Sequence[np.ndarray], layer: str, batch_size: int = 8) -> np.ndarray:
        """[N, D] features of N uint8 [H, W, 3] images (sizes may differ); extracts only the missing ones."""
        digests = [image_digest(img) for img in images]
        found = {d: self._lookup(layer, d) for d in dict.fromkeys(digests)}
        first = {d: i for i, d in reversed(list(enumerate(digests)))}  # digest -> its first index
        missing = sorted(i for d, i in first.items() if found[d] is None)
        self.hits += len(digests) - len(missing)
        self.misses += len(missing)
        for batch in _same_size_batches(missing, images, batch_size):
            feats = self.extractor(np.stack([images[i] for i in batch]), layer)  # [b, D]
            for i, f in zip(batch, feats, strict=True):
                found[digests[i]] = self._store(layer, digests[i], f)
        return np.stack([found[d] for d in digests]) if digests else np.zeros((0, 0), np.float32)

    def _lookup(self, layer: str, digest: str) -> np.ndarray | None:
        key = (layer, digest)
        if key in self.memory:
            return self.memory[key]
        path = self.path(layer, digest)
        if not path.is_file():
            return None
        try:
            feature = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:  # damaged means not done: extracted again and rewritten
            log.warning("feature cache file %s is damaged (%s: %s); recomputing it", path, type(exc).__name__, exc)
            return None
        self.memory[key] = feature
        return feature

    def _store(self, layer: str, digest: str, feature: np.ndarray) -> np.ndarray:
        feature = np.asarray(feature, dtype=np.float32)
        buf = io.BytesIO()
        np.save(buf, feature, allow_pickle=False)
        atomic_write_bytes(self.path(layer, digest), buf.getvalue())
        self.memory[(layer, digest)] = feature
        return feature


def _same_size_batches(indices: list[int], images: Sequence[np.ndarray], batch_size: int) -> list[list[int]]:
    """Group indices by image shape (a batch must be one size), then cut into batches."""
    by_shape: dict[tuple, list[int]] = {}
    for i in indices:
        by_shape.setdefault(images[i].shape, []).append(i)
    return [group[k : k + batch_size] for group in by_shape.values() for k in range(0, len(group), batch_size)]
