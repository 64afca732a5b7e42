"""Per-sample rows, atomic files and provenance.

A sample is done when its row file exists. The image and masks are written first, each through a
temporary file and an atomic rename, then the row; so a run killed at any instant leaves either a
complete sample or nothing of it that counts, and a rerun redoes exactly the missing ones.
Rows hold no timing, host or shard information, so any split of the work gives the same rows.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from filelock import FileLock
from PIL import Image

from bench.config import REPO_ROOT
from bench.sd.maps import LatentRecord, MapRecord

# Leading columns of samples.csv, in this order; every other column follows sorted by name.
KEY_COLUMNS = ["model", "dataset", "label", "ablation", "image_id", "prompt", "seed"]
LEADING_COLUMNS = [
    "task",
    *KEY_COLUMNS,
    "method",
    "category",
    "subcategory",
    "subject",
    "status",
    "failure",
    "image_path",
]
PACKAGES = [
    "torch",
    "torchvision",
    "diffusers",
    "transformers",
    "open_clip_torch",
    "torch-fidelity",
    "torchmetrics",
    "hydra-core",
    "pandas",
    "numpy",
    "wandb",
]


class StorageError(RuntimeError):
    """Results could not be written (disk full, quota, permissions); what was written before is intact."""


@contextmanager
def writing(target: Path) -> Iterator[None]:
    """Turn an OSError while writing `target` into a StorageError that says what survived and how to resume."""
    try:
        yield
    except OSError as exc:
        raise StorageError(
            f"cannot write {target}: {exc}. Every sample recorded before this is intact (atomic writes); "
            "free space or fix permissions, then rerun the same command: it redoes only the missing samples."
        ) from exc


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_png(path: str | Path, array: np.ndarray) -> None:
    """Save uint8 [H, W, 3] or [H, W] as PNG, atomically."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def mask_to_png(mask: np.ndarray) -> np.ndarray:
    """[h, w] or [C, h, w] mask in [0, 1] -> uint8 [h, C*w] (channels side by side)."""
    mask = np.asarray(mask, dtype=np.float32)
    if mask.ndim == 3:
        mask = np.concatenate(list(mask), axis=1)
    return (np.clip(mask, 0, 1) * 255).round().astype(np.uint8)


def relative_to_root(path: str | Path, root: str | Path) -> str:
    """`path` relative to `root` (paths.root_dir) as rows record it; the path as given when it lies outside."""
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


MAPS_FILE = "maps.npz"  # a sample's recorded subject maps, beside its masks


def maps_to_npz(records: list[MapRecord], latents: list[LatentRecord] = ()) -> bytes:
    """Recorded maps (and the chain's latents) -> compressed .npz bytes that load with allow_pickle=False
    (`maps_from_npz` and `latents_from_npz` read them).

    Each map is stored as float16 of map / scale with scale = its largest |value| (so tiny scores do not
    underflow); `scale` [N] float32 gives map = maps[n] * scale[n]. `layer` and `layer_set` are
    fixed-width unicode arrays in which "" stands for None. Latents are kept exactly (float32).
    """
    arrays = np.stack([np.asarray(r.values, dtype=np.float32) for r in records])  # [N, C, h, w]
    scale = np.abs(arrays).reshape(len(records), -1).max(axis=1)
    scale[scale == 0] = 1.0
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        maps=(arrays / scale[:, None, None, None]).astype(np.float16),
        scale=scale.astype(np.float32),
        kind=np.array([r.kind for r in records]),
        layer=np.array([r.layer or "" for r in records]),
        layer_set=np.array([r.layer_set or "" for r in records]),
        index=np.array([r.index for r in records], dtype=np.int64),
        timestep=np.array([r.timestep for r in records], dtype=np.int64),
        side=np.array([r.side for r in records], dtype=np.int64),
        **latent_arrays(latents),
    )
    return buffer.getvalue()


def latent_arrays(latents: list[LatentRecord]) -> dict[str, np.ndarray]:
    """The npz arrays of the chain's latents (none when nothing was recorded)."""
    if not latents:
        return {}
    return {
        "latents": np.stack([np.asarray(r.values, dtype=np.float32) for r in latents]),  # [L, C, h, w]
        "latent_index": np.array([r.index for r in latents], dtype=np.int64),
        "latent_timestep": np.array([r.timestep for r in latents], dtype=np.int64),
    }


def latents_from_npz(path: str | Path) -> list[LatentRecord]:
    """The chain's latents of a maps.npz, in step order ([] when the run did not keep them)."""
    with np.load(path, allow_pickle=False) as data:
        if "latents" not in data.files:
            return []
        fields = zip(data["latent_index"], data["latent_timestep"], data["latents"], strict=True)
        return [LatentRecord(int(i), int(t), np.array(values)) for i, t, values in fields]


def maps_from_npz(path: str | Path) -> list[MapRecord]:
    """The records of a maps.npz written by `maps_to_npz`, in their recorded order (values as float32)."""
    with np.load(path, allow_pickle=False) as data:
        if "layer_set" not in data.files:
            raise StorageError(
                f"{path} was written by an older version (no layer_set field). Delete the run folder's maps and "
                "rerun the job that recorded them (method.attribution.record=true)."
            )
        values = data["maps"].astype(np.float32) * data["scale"][:, None, None, None]
        names = ("kind", "layer", "layer_set", "index", "timestep", "side")
        fields = zip(*(data[name] for name in names), strict=True)
        return [
            MapRecord(str(kind), str(layer) or None, str(layer_set) or None, int(k), int(t), int(side), v)
            for (kind, layer, layer_set, k, t, side), v in zip(fields, values, strict=True)
        ]


def row_path(run_dir: str | Path, key: str) -> Path:
    return Path(run_dir) / "rows" / f"{key}.json"


def write_row(run_dir: str | Path, key: str, row: dict) -> None:
    atomic_write_text(row_path(run_dir, key), json.dumps(row, sort_keys=True, default=_json_default) + "\n")


WRITERS_LOCK = ".writers.lock"


@contextmanager
def task_writers(lock_dir: Path, folders: Iterable[Path]) -> Iterator[int]:
    """Hold a shared lock on `lock_dir`/.writers.lock while a run writes; yield how many leftovers were deleted.

    Every run of a task holds the shared lock (flock: the kernel drops it when the process dies, even by
    SIGKILL). Before writing, a run tries for the exclusive lock without waiting: it gets it only when
    no other live process of the task holds the lock, so every temporary file (`.*.tmp`, left by an
    atomic write that was killed) under `folders` is an orphan and is deleted; then the lock is shared.
    When another run of the task is alive, nothing is deleted: its files may be in flight.
    """
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / WRITERS_LOCK, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            removed = 0  # another live run of this task: leave every temporary file alone
        except OSError:  # a filesystem without locks: never delete, run unlocked
            yield 0
            return
        else:
            removed = remove_temporary_files(folders)
        fcntl.flock(handle, fcntl.LOCK_SH)  # held until the run ends (or dies)
        try:
            yield removed
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_temporary_files(folders: Iterable[Path]) -> int:
    """Delete every `.*.tmp` (an atomic write's temporary file) under `folders`; how many were deleted."""
    removed = 0
    for folder in folders:
        for path in Path(folder).rglob(".*.tmp") if Path(folder).is_dir() else []:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"row value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def read_rows(folders: Iterable[str | Path]) -> list[dict]:
    """Every row file under the given folders (skipping temporary files)."""
    rows = []
    for folder in folders:
        for path in sorted(Path(folder).rglob("rows/**/*.json")):
            try:
                rows.append(json.loads(path.read_text()))
            except (ValueError, UnicodeDecodeError) as exc:  # never written so by the harness (atomic writes)
                raise StorageError(
                    f"row file {path} is damaged ({exc}); it was changed outside the harness. Delete it and "
                    "rerun the same command: that one sample is redone, every other is kept."
                ) from exc
    return rows


def rows_to_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows -> a DataFrame with a fixed column order and a fixed row order (byte-stable CSV)."""
    if not rows:
        return pd.DataFrame(columns=LEADING_COLUMNS)
    frame = pd.DataFrame(rows)
    leading = [c for c in LEADING_COLUMNS if c in frame.columns]
    rest = sorted(c for c in frame.columns if c not in leading)
    frame = frame[leading + rest]
    return frame.sort_values(KEY_COLUMNS, kind="mergesort").reset_index(drop=True)


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    """Atomic CSV write with a fixed float format, so unchanged data gives identical bytes."""
    atomic_write_text(path, frame.to_csv(index=False, lineterminator="\n", float_format="%.6g"))


def merge_samples(task_output_dir: str | Path, samples_csv: str | Path) -> pd.DataFrame:
    """Rebuild results/<task>/samples.csv from every row of the task (under a lock: shards may race)."""
    samples_csv = Path(samples_csv)
    samples_csv.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(samples_csv) + ".lock"):
        frame = rows_to_frame(read_rows([task_output_dir]))
        write_csv(frame, samples_csv)
    return frame


def git_state() -> dict:
    """Commit SHA and whether the work tree differs from it (None outside a git checkout)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_sha": sha, "git_dirty": None if status is None else bool(status)}


def package_versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment_manifest(device: torch.device) -> dict:
    """What produced a run: code version, packages, device and threads."""
    return {
        **git_state(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
