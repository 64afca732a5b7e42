"""Per-sample rows, atomic files and provenance.

A sample is done when its row file is sound and every file it points at is whole (`inspect_sample`).
The image and masks are written first, each through a temporary file and an atomic rename, then the
row; so a run killed at any instant leaves either a complete sample or nothing of it that counts, and a
rerun redoes exactly the missing ones. A file damaged outside the harness (a truncated image, a row
without a sample's fields) makes its sample not done: the rerun names the file and redoes that sample.
Rows hold no timing, host or shard information, so any split of the work gives the same rows.
Every CSV goes through `write_csv` (formula-safe cells) and is read back by `read_csv` (docs/guarantees.md).
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import logging
import os
import platform
import subprocess
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from filelock import FileLock
from PIL import Image

from bench.config import REPO_ROOT
from bench.sd.maps import LatentRecord, MapRecord

log = logging.getLogger(__name__)

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


def new_file_mode() -> int:
    """The mode `open()` gives a new file in this process: 0o666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, new_file_mode())  # mkstemp's 0o600 would make results unreadable to the user's group
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
    """The records of a maps.npz written by `maps_to_npz`, in their recorded order (values as float32).

    A damaged file raises StorageError naming it (`read_npz`).
    """
    data = read_npz(path)
    if "layer_set" not in data:
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


NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)
DAMAGED_FIX = (
    "Rerun the command that wrote it (the same `python -m bench.run ...`): a rerun redoes every sample whose "
    "files are damaged, and keeps every other."
)


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file (no pickles); a missing, truncated or corrupt file raises StorageError naming it."""
    arrays, problem = _load_npz(path)
    if problem:
        raise StorageError(f"{problem}. {DAMAGED_FIX}")
    return arrays


def _load_npz(path: str | Path) -> tuple[dict[str, np.ndarray], str]:
    """(arrays, "") or ({}, why the file cannot be read)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}, ""
    except FileNotFoundError:
        return {}, f"{path} is missing"
    except NPZ_ERRORS as exc:
        return {}, f"{path} is damaged ({type(exc).__name__}: {exc})"


PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk that closes every PNG file


def png_problem(path: str | Path) -> str:
    """Why `path` is not a whole PNG file ("" when it is): missing, truncated (even by its last bytes) or corrupt."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - len(PNG_END)))
            if handle.read() != PNG_END:
                return f"{path} is truncated (it does not end with the PNG end chunk)"
        with Image.open(path) as image:
            image.verify()  # every chunk's CRC, without decoding the pixels
    except FileNotFoundError:
        return f"{path} is missing"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"{path} is damaged ({type(exc).__name__}: {exc})"
    return ""


def npz_problem(path: str | Path) -> str:
    """Why `path` is not a whole .npz file ("" when it is): every array is read, so every CRC is checked."""
    return _load_npz(path)[1]


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


NO_ROW = "no row yet"  # `inspect_sample`: the sample was never finished (not damage)
ROW_IDENTITY = ("sample_key", "image_id", "prompt", "seed")  # what a row must hold, equal to its sample's
ROW_STATUSES = ("ok", "failed")


def parse_row(path: Path) -> tuple[dict, str]:
    """(row, "") for a row file holding a JSON object; ({}, NO_ROW) when it does not exist; ({}, why) when damaged."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}, NO_ROW
    try:
        row = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        return {}, f"{path} is not a row: {type(exc).__name__}: {exc}"
    if not isinstance(row, dict):
        return {}, f"{path} is not a row: it holds a JSON {type(row).__name__}, not an object"
    return row, ""


def row_problem(row: Mapping, key: str) -> str:
    """Why a parsed row cannot be sample `key`'s ("" when it can): missing identity fields, another sample's
    key, or a status other than ok/failed."""
    missing = [field for field in (*ROW_IDENTITY, "status") if field not in row]
    if missing:
        return f"it lacks the sample's fields {missing}"
    if row["sample_key"] != key:
        return f"it records sample_key {row['sample_key']!r}, not {key!r} (another sample's row?)"
    if row["status"] not in ROW_STATUSES:
        return f"its status {row['status']!r} is neither 'ok' nor 'failed'"
    return ""


@dataclass(frozen=True)
class SampleFiles:
    """Where one sample's files must be (the run folder's layout, bench.task.RunPaths) and who it is."""

    row: Path  # rows/<key>.json
    image: Path  # images/<key>.png
    masks: Path  # masks/<key>/: the mask PNGs, maps.npz and truth.npz
    root: Path  # paths.root_dir: rows hold paths relative to it
    identity: Mapping  # sample_key, image_id, prompt, seed as the plan has them


def inspect_sample(files: SampleFiles) -> tuple[dict, str]:
    """(row, "") when the sample is done: a sound row of this very sample whose files are whole.

    ({}, NO_ROW) when it has no row yet; ({}, why) when anything is damaged (damaged means not done).
    """
    row, problem = parse_row(files.row)
    if problem:
        return {}, problem
    problem = row_problem(row, str(files.identity["sample_key"]))
    for field in ROW_IDENTITY:
        if not problem and str(row[field]) != str(files.identity[field]):
            problem = f"its {field} {row[field]!r} is not this sample's {files.identity[field]!r}"
    problem = problem or (sample_files_problem(row, files) if row["status"] == "ok" else "")
    return ({}, f"{files.row}: {problem}") if problem else (row, "")


def sample_files_problem(row: Mapping, files: SampleFiles) -> str:
    """Why the files of a successful row are not whole ("" when they are): its image, its masks and their .npz."""
    image = row.get("image_path")
    if not isinstance(image, str) or not image or (files.root / image).resolve() != files.image.resolve():
        return f"its image_path {image!r} is not this sample's image {files.image}"
    problem = png_problem(files.image)
    problem = problem or next(filter(None, map(png_problem, sorted(files.masks.glob("*.png")))), "")
    problem = problem or next(filter(None, map(npz_problem, sorted(files.masks.glob("*.npz")))), "")
    truth = row.get("truth_path")
    if not problem and isinstance(truth, str) and truth:
        problem = npz_problem(files.root / truth)
    return problem


def read_rows(folders: Iterable[str | Path]) -> list[dict]:
    """Every sound row file under the given folders (skipping temporary files).

    A damaged row (not a JSON object, without a sample's fields, another sample's key, an unknown status) is
    left out with a warning that names it: damaged means not done, and the rerun of its job redoes it.
    """
    rows = []
    for folder in folders:
        for path in sorted(Path(folder).rglob("rows/**/*.json")):
            parts = path.relative_to(folder).with_suffix("").parts
            key = "/".join(parts[parts.index("rows") + 1 :])  # rows/<key>.json under the run folder
            row, problem = parse_row(path)
            problem = problem or (f"{path}: {row_problem(row, key)}" if row_problem(row, key) else "")
            if problem:
                log.warning("left out of samples.csv: %s. %s", problem, DAMAGED_FIX)
                continue
            rows.append(row)
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


# Text that a spreadsheet runs as a formula ("CSV injection"): a cell starting with = + - @, a tab or a carriage
# return. `write_csv` shows such a cell as text by a leading ' (the spreadsheet convention); `read_csv` removes it.
# A number (-1.5, +inf) and a lone + or - run nothing and stay as they are.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def formula_like(text: str) -> bool:
    """Whether a spreadsheet would run `text` as a formula, or it is such a text already quoted by a leading '."""
    if text.startswith("'"):
        return formula_like(text[1:])
    if not text.startswith(FORMULA_START):
        return False
    if text[0] in "+-":
        try:
            float(text)
            return False  # a plain number
        except ValueError:
            return len(text) > 1
    return True


def spreadsheet_text(value):
    """A cell as `write_csv` writes it: formula-like text gets a leading ' (reversed by `from_spreadsheet_text`)."""
    return "'" + value if isinstance(value, str) and formula_like(value) else value


def from_spreadsheet_text(value):
    """A cell as `read_csv` returns it: the leading ' that `spreadsheet_text` added is removed."""
    if isinstance(value, str) and value.startswith("'") and formula_like(value[1:]):
        return value[1:]
    return value


def _map_text(frame: pd.DataFrame, cell) -> pd.DataFrame:
    """`frame` with `cell` applied to every header and every text cell (numeric columns are left as they are)."""
    out = frame.rename(columns={c: cell(c) for c in frame.columns if isinstance(c, str)})
    for index in _text_columns(out):
        out.isetitem(index, out.iloc[:, index].map(cell))
    return out


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    """Atomic CSV write with a fixed float format, so unchanged data gives identical bytes; formula-like text is
    written as text (`spreadsheet_text`), so a prompt such as '=1+1' never runs in a spreadsheet.

    A carriage return inside a cell is quoted like a newline (the csv module quotes only the line terminator):
    such a table quotes every text cell, so that a reader never splits that row.
    """
    safe = _map_text(frame, spreadsheet_text)
    texts = [*safe.columns, *(v for i in _text_columns(safe) for v in safe.iloc[:, i])]
    quoting = csv.QUOTE_NONNUMERIC if any(isinstance(v, str) and "\r" in v for v in texts) else csv.QUOTE_MINIMAL
    atomic_write_text(path, safe.to_csv(index=False, lineterminator="\n", float_format="%.6g", quoting=quoting))


def _text_columns(frame: pd.DataFrame) -> list[int]:
    dtypes = frame.dtypes
    return [i for i, d in enumerate(dtypes) if pd.api.types.is_object_dtype(d) or pd.api.types.is_string_dtype(d)]


def read_csv(path: str | Path, **kwargs) -> pd.DataFrame:
    """A CSV written by `write_csv`, as it was before writing: only empty cells are missing (a prompt 'NA' or
    'null' stays text) and formula-like text loses the leading ' that made it safe. `kwargs` go to pd.read_csv."""
    return _map_text(pd.read_csv(path, keep_default_na=False, na_values=[""], **kwargs), from_spreadsheet_text)


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
