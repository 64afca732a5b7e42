"""One safetensors-only folder locator, shared by the SD1.5 and CLIPSeg loaders.

A model's weights are a folder of named files (configs and `.safetensors` weights; a pickled
`pytorch_model.bin` is never read), found before anything is built, in this order:
    1. a local folder (`model.path`, `truth.path`);
    2. the Hugging Face cache (HF_HOME / HF_HUB_CACHE, or a `cache_dir`) at the pinned revision, or, with no
       revision, the one cached snapshot that holds every required file;
    3. the hub, when online: the loader's own `resolve` probes it and names the commit to download.
Anything missing ends in one `AssetMissingError` naming the weights, what is missing and the loader's ways to
provide them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants as hf_constants
from huggingface_hub import snapshot_download

from bench.sd.errors import AssetMissingError, ConfigError

log = logging.getLogger(__name__)

HUB_PROBE_TIMEOUT_S = 10.0  # a loader's first hub request: an unreachable hub fails in seconds, not after retries
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")  # pickled weights: never loaded, named when a folder holds only them


@dataclass(frozen=True)
class SafetensorsFolder:
    """The weights folder a loader looks for, and how its messages name it."""

    title: str  # the weights in a message, e.g. "Stable Diffusion v1-5 weights"
    repo_id: str
    revision: str | None  # a commit, tag or branch; None: the one complete cached snapshot, or `resolve`'s commit
    required: tuple[str, ...]  # every file a complete folder holds, relative to it
    how_to_provide: str  # the ways to provide the weights, ending every message
    path_key: str  # the config key of a local folder, e.g. "model.path"
    revision_key: str  # the config key that pins the revision, e.g. "truth.revision"
    cache_dir: str | None = None  # None: the Hugging Face cache (HF_HOME / HF_HUB_CACHE)
    also_fetch: tuple[str, ...] = ()  # optional files (patterns) a download fetches beside `required`
    unpinned: str = "main"  # how a revision of None is named in messages
    missing_hint: str = ""  # appended when files are missing, e.g. which setting selects other file names

    @property
    def pinned(self) -> str:
        """repo@revision as messages name it."""
        return f"{self.repo_id}@{self.revision or self.unpinned}"

    @property
    def cache(self) -> str:
        return self.cache_dir or hf_constants.HF_HUB_CACHE


def locate_folder(spec: SafetensorsFolder, path: str | None, resolve: Callable[[], str]) -> tuple[Path, str]:
    """(folder holding every required file, its source: the local path or repo@commit).

    `resolve()` is called only online with nothing cached: it probes the hub and returns the commit to
    download, raising the loader's own errors when the hub cannot answer.
    """
    if path is not None:
        folder = Path(path).expanduser()
        check_folder(spec, folder, f"{spec.title} folder {spec.path_key}={folder}")
        return folder, str(folder)
    cached = cached_snapshot(spec)
    if cached is not None:
        return cached, f"{spec.repo_id}@{cached.name}"
    if hf_constants.is_offline_mode():
        raise AssetMissingError(
            f"{spec.title} {spec.pinned} are not in the Hugging Face cache ({spec.cache}) and HF_HUB_OFFLINE=1 "
            "forbids downloading them. " + spec.how_to_provide
        )
    commit = resolve()
    folder = download_snapshot(spec, commit)
    check_folder(spec, folder, f"{spec.title} folder {folder} ({spec.repo_id}@{commit})")
    if spec.revision is None:
        log.warning("%s: using %s@%s; pin it with %s=%s", spec.title, spec.repo_id, commit, spec.revision_key, commit)
    return folder, f"{spec.repo_id}@{commit}"


def check_folder(spec: SafetensorsFolder, folder: Path, what: str) -> None:
    """Refuse a folder that lacks a required file, naming the missing files and any pickle found in their place."""
    if not folder.is_dir():
        raise AssetMissingError(f"{what} is not a folder. " + spec.how_to_provide)
    missing = [f for f in spec.required if not (folder / f).is_file()]
    if not missing:
        return
    pickles = sorted(
        p.relative_to(folder).as_posix()
        for parent in {(folder / f).parent for f in missing}
        if parent.is_dir()
        for p in parent.iterdir()
        if p.suffix in PICKLE_SUFFIXES and p.is_file()
    )
    held = f" (it holds {', '.join(pickles)}, pickled weights, which are never loaded)" if pickles else ""
    raise AssetMissingError(
        f"{what} lacks {missing}{held}{spec.missing_hint}. Only safetensors weights are loaded. " + spec.how_to_provide
    )


def complete(spec: SafetensorsFolder, folder: Path) -> bool:
    return all((folder / f).is_file() for f in spec.required)


def cached_snapshot(spec: SafetensorsFolder) -> Path | None:
    """The cached snapshot holding every required file (no network); revision None: the only such snapshot."""
    if spec.revision is not None:
        try:
            folder = Path(
                snapshot_download(spec.repo_id, revision=spec.revision, cache_dir=spec.cache_dir, local_files_only=True)
            )
        except (OSError, ValueError):  # LocalEntryNotFoundError is both
            return None
        return folder if complete(spec, folder) else None
    snapshots = Path(spec.cache) / f"models--{spec.repo_id.replace('/', '--')}" / "snapshots"
    found = sorted(d for d in snapshots.glob("*") if complete(spec, d))
    if len(found) > 1:
        raise ConfigError(
            f"the Hugging Face cache holds {len(found)} snapshots of {spec.repo_id} with every file of "
            f"{list(spec.required)} ({[d.name for d in found]}); pin one with {spec.revision_key}=<commit>."
        )
    return found[0] if found else None


def download_snapshot(spec: SafetensorsFolder, commit: str) -> Path:
    """Fetch the required (and optional) files of `commit` into the cache; never a pickle."""
    try:
        patterns = [*spec.required, *spec.also_fetch]
        return Path(snapshot_download(spec.repo_id, revision=commit, cache_dir=spec.cache_dir, allow_patterns=patterns))
    except (OSError, ValueError) as exc:  # LocalEntryNotFoundError, HTTP errors, disk full
        raise AssetMissingError(
            f"downloading {spec.repo_id}@{commit} into {spec.cache} failed: {exc}. " + spec.how_to_provide
        ) from exc
