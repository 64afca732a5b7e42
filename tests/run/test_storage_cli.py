"""Storage faults at the command line (#15): a read-only folder (before Hydra opens its log there) and a
full disk give one message naming the path and what to do, no traceback; earlier work stays intact.

Real file systems: a tmpfs mounted read-only, or with too few inodes (root only, else skipped; without
root a read-only folder is made with chmod)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bench.task import run_benchmark
from tests.conftest import FAST, PIXEL_ONLY, compose_cfg, run_cli

ARGS = [*FAST, *PIXEL_ONLY, "model.image_size=32", "method=sdedit", "cpu_threads=1", "seeds=[1]"]


def mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


@pytest.fixture
def mounts():
    mounted: list[Path] = []
    yield mounted
    for where in reversed(mounted):
        subprocess.run(["umount", str(where)], check=False)


def files_of(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and ".hydra" not in p.parts
    }


def test_read_only_folder_is_one_message_and_earlier_work_is_intact(tmp_path, mounts):
    root = tmp_path / "disk"
    if os.geteuid() == 0:
        mount_tmpfs(root, "size=64m")
        mounts.append(root)
    run_benchmark(compose_cfg(ARGS, root))  # the earlier work, made in this process (no CLI start-up to pay)
    before = files_of(root)
    assert any(k.endswith(".png") for k in before)
    if os.geteuid() == 0:
        subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
    else:
        for path in [root, *root.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
    proc = run_cli([*ARGS, "seeds=[1,2]", f"paths.root_dir={root}"], cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "cannot write the run folder" in proc.stderr and str(root / "outputs") in proc.stderr
    assert "paths.output_dir=" in proc.stderr and "Traceback" not in proc.stderr
    sweep = run_cli(["-m", *ARGS, "method=sdedit,txt2img", f"paths.root_dir={root}"], cwd=tmp_path, check=False)
    assert sweep.returncode == 2 and "cannot write the run folder" in sweep.stderr, sweep.stderr
    assert str(root / "outputs") in sweep.stderr and "Traceback" not in sweep.stderr
    assert files_of(root) == before


def test_full_disk_is_one_message_and_what_was_written_is_whole(tmp_path, mounts):
    reference = tmp_path / "reference"
    run_cli([*ARGS, "seeds=[1,2]", f"paths.root_dir={reference}"], cwd=tmp_path)
    needed = sum(1 for _ in reference.rglob("*"))  # files and folders: one inode each
    root = tmp_path / "full"
    mount_tmpfs(root, f"size=64m,nr_inodes={needed - 2}")  # the disk fills before the run is done
    mounts.append(root)
    proc = run_cli([*ARGS, "seeds=[1,2]", f"paths.root_dir={root}"], cwd=tmp_path, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "error: cannot write" in proc.stderr and "No space left on device" in proc.stderr
    assert "rerun the same command" in proc.stderr and "Traceback" not in proc.stderr
    expected = files_of(reference)
    for rel, data in files_of(root).items():  # every file there is whole: byte-equal to the full run's
        if "/rows/" in rel or "/images/" in rel:
            assert data == expected[rel], rel
    assert not list(root.rglob("*.tmp"))
