"""One smoke maps run of the attribution study per test session, shared by the end-to-end tests as private copies.

The maps stage (`python -m bench.attribution --stage maps --profile smoke` on two samples, ball and cone) is the
costliest part of the study's end-to-end tests: two Hydra jobs, each a subprocess that imports and loads the tiny
backbone. It runs once per session; under pytest-xdist the first worker that needs it builds it under a FileLock in
the session's shared temporary folder and the other waits and reuses it (pytest-xdist's documented pattern). Each
test gets its own copy of the root folder (rows hold paths relative to it), so a later stage writes only there.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock

from bench.config import REPO_ROOT
from tests.warm_cli import run_python_module

# The maps stage on the smoke profile with a second subcategory: two samples (ball in a forest, cone by the ocean),
# so the sanity stage can pair their subject words.
SMOKE_MAPS = ["--stage", "maps", "--profile", "smoke", "--shards", "1", "dataset.subcategories=[forest,ocean]"]


@dataclass(frozen=True)
class MapsRun:
    root: Path  # the copy's root folder (outputs/ and results/ under it)
    stdout: str  # what the maps stage printed (the verdict at its end)

    @property
    def folder(self) -> Path:
        return self.root / "results" / "attribution"


def study_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT), "OMP_WAIT_POLICY": "PASSIVE"}


def build_maps_run(place: Path) -> None:
    """Run the smoke maps stage with its root at place/root; its stdout to place/stdout.txt, and place/done last
    (a failure leaves place/failed with the output, so a waiting worker fails with the same message, not a rerun)."""
    root = place / "root"
    root.mkdir(parents=True)
    proc = run_python_module("bench.attribution", [*SMOKE_MAPS, "--root-dir", str(root)], root, study_env(), 1200)
    (place / "stdout.txt").write_text(proc.stdout)
    if proc.returncode != 0:
        (place / "failed").write_text(f"exit {proc.returncode}\n{proc.stdout[-3000:]}{proc.stderr[-5000:]}")
    else:
        (place / "done").write_text("")


@pytest.fixture(scope="session")
def smoke_maps_place(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder holding the session's one smoke maps run (root/, stdout.txt), built once for all workers."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # xdist: the session's folder
    place = shared / "attribution-smoke-maps"
    with FileLock(str(place) + ".lock"):
        if not (place / "done").exists() and not (place / "failed").exists():
            build_maps_run(place)
    if (place / "failed").exists():
        pytest.fail(f"the shared smoke maps stage failed: {(place / 'failed').read_text()}", pytrace=False)
    return place


@pytest.fixture
def smoke_maps(smoke_maps_place: Path, tmp_path: Path) -> MapsRun:
    """A private copy of the session's smoke maps run: its root folder is tmp_path/study."""
    root = shutil.copytree(smoke_maps_place / "root", tmp_path / "study", symlinks=True)
    return MapsRun(root, (smoke_maps_place / "stdout.txt").read_text())
