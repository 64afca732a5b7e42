"""Temporary files of killed writes (#15): deleted by the next run of the task, never while another
live process of the task may own them (records.task_writers: a shared flock per run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.config import REPO_ROOT
from bench.records import WRITERS_LOCK, atomic_write_text, task_writers
from bench.task import run_benchmark
from tests.conftest import FAST, PIXEL_ONLY, compose_cfg, with_test_profile

HOLDER = (
    "import fcntl, sys\n"
    "handle = open(sys.argv[1], 'a')\n"
    "fcntl.flock(handle, fcntl.LOCK_SH)\n"
    "print('holding', flush=True)\n"
    "sys.stdin.read()\n"
)


def plant(task_dir: Path) -> list[Path]:
    """What a SIGKILL inside atomic writes leaves: dot-prefixed .tmp files next to their targets."""
    paths = [
        task_dir / "tiny/d/m+none/rows/forest/00000/deer/.s1.json.ab12.tmp",
        task_dir / "tiny/d/m+none/images/forest/00000/deer/.s1.png.cd34.tmp",
        task_dir / "references/tiny/d/32px/forest/.00000.png.ef56.tmp",
    ]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
    return paths


def test_leftovers_are_deleted_when_no_other_run_of_the_task_is_alive(tmp_path):
    task_dir = tmp_path / "outputs/demo"
    leftovers = plant(task_dir)
    atomic_write_text(task_dir / "tiny/d/m+none/rows/forest/00000/deer/s2.json", "{}\n")  # a finished row
    with task_writers(task_dir, [task_dir]) as removed:
        assert removed == len(leftovers)
    assert not any(p.exists() for p in leftovers)
    assert (task_dir / "tiny/d/m+none/rows/forest/00000/deer/s2.json").read_text() == "{}\n"


def test_a_live_run_of_the_task_keeps_every_temporary_file(tmp_path):
    task_dir = tmp_path / "outputs/demo"
    leftovers = plant(task_dir)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(task_dir / WRITERS_LOCK)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"  # the other run is alive and writing
        with task_writers(task_dir, [task_dir]) as removed:
            assert removed == 0
            atomic_write_text(task_dir / "x.txt", "written while the other run lives\n")  # both may write
        assert all(p.exists() for p in leftovers)
    finally:
        holder.stdin.close()
        holder.wait()
    with task_writers(task_dir, [task_dir]) as removed:  # the other run ended: its leftovers are orphans
        assert removed == len(leftovers)
    assert (task_dir / "x.txt").is_file()


def test_the_same_config_twice_at_once_equals_one_run(tmp_path):
    """Two processes on one shard: wasted work, never corruption (docs/scaling.md, Concurrency guarantees)."""
    args = [*FAST, *PIXEL_ONLY, "model.image_size=32", "method=sdedit", "cpu_threads=1", "seeds=[1,2]"]
    # The one run in this process (no CLI start-up to pay; at one thread it makes the CLI's bits, as
    # tests/run/test_submitit.py checks): the two at once below are real `python -m bench.run` processes.
    run_benchmark(compose_cfg(args, tmp_path / "single"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "bench.run", *with_test_profile(args), f"paths.root_dir={tmp_path / 'twice'}"]
    procs = [
        subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    errors = [proc.communicate(timeout=600)[1].decode() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], errors
    single, twice = result_files(tmp_path / "single"), result_files(tmp_path / "twice")
    assert twice == single and any(k.endswith(".png") for k in twice)
    assert not list((tmp_path / "twice").rglob("*.tmp"))


def result_files(root: Path) -> dict[str, bytes]:
    """Rows, images and samples.csv by relative path."""
    files = [p for p in (root / "outputs").rglob("*") if p.is_file() and {"rows", "images"} & set(p.parts)]
    return {str(p.relative_to(root)): p.read_bytes() for p in [*files, root / "results/demo/samples.csv"]}
