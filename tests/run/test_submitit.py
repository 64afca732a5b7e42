"""Hydra's submitit launcher: 2 shards as 2 local processes at once equal 1 process; the Slurm GPU config submits."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import torch

from bench.task import run_benchmark
from tests.conftest import FAST, compose_cfg, run_cli

PIXEL_ONLY = ["metrics=none", "+metrics.per_sample.pixel_mad._target_=bench.metrics.pixel.PixelMAD"]
# cpu_threads=1 in both runs: on the CPU the thread count changes float rounding (conf/bench.yaml).
OVERRIDES = [*FAST, *PIXEL_ONLY, "model.image_size=32", "seeds=[1,2]", "cpu_threads=1"]
RUN_DIR = "outputs/demo/tiny/synthetic_places/sdedit_0.6+none"


def result_files(root: Path) -> dict[str, bytes]:
    files = [p for sub in ("images", "rows") for p in (root / RUN_DIR / sub).rglob("*") if p.is_file()]
    files.append(root / "results/demo/samples.csv")
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def test_submitit_local_two_shards_equal_one_process(tmp_path):
    threads = torch.get_num_threads()
    try:
        run_benchmark(compose_cfg(OVERRIDES, tmp_path / "one"))
    finally:
        torch.set_num_threads(threads)
    expected = result_files(tmp_path / "one")
    assert sum(k.endswith(".png") for k in expected) == 4

    two = tmp_path / "two"
    sweep = ["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=20", "shard.count=2", "shard.index=0,1"]
    proc = run_cli([*sweep, *OVERRIDES, f"paths.root_dir={two}"], cwd=tmp_path, timeout=600)
    got = result_files(two)
    differ = sorted(k for k in got.keys() | expected.keys() if got.get(k) != expected.get(k))
    assert not differ, f"the 2-shard run differs from the 1-process run in {differ}"

    # Each shard ran as its own submitit job and kept its own Hydra record next to the shared rows.
    assert len(list((two / "outputs/demo/.submitit").glob("*/*_0_result.pkl"))) == 2
    for k in (0, 1):
        overrides = (two / RUN_DIR / f".hydra/shard-{k}-of-2/overrides.yaml").read_text()
        assert f"shard.index={k}" in overrides
        assert (two / RUN_DIR / f"run-shard-{k}-of-2.log").is_file()
        assert (two / RUN_DIR / f"environment-shard-{k}-of-2.json").is_file()
    # The launching process prints one summary over both jobs (each job's own is in its submitit log).
    assert "sweep of 2 jobs: 4 made, 0 skipped (already done), 0 failed" in proc.stdout
    assert not (two / "outputs/.sweeps").exists()


def test_slurm_gpu_launcher_submits_one_gpu_array_task_per_shard(tmp_path, monkeypatch):
    """Up to the cluster's edge: fake `srun` and `sbatch` (no Slurm here) capture the job script submitit writes."""
    bin_dir, script = tmp_path / "bin", tmp_path / "submitted.sh"
    bin_dir.mkdir()
    fakes = {
        "srun": "#!/bin/sh\nexit 0\n",
        "sbatch": f'#!/bin/sh\ncp "$1" {script}\necho "sbatch: error: no cluster here" >&2\nexit 1\n',
    }
    for name, text in fakes.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    launcher = ["-m", "hydra/launcher=slurm_gpu", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90"]
    proc = run_cli(
        [*launcher, *FAST, "shard.count=4", "shard.index=range(4)", f"paths.root_dir={tmp_path}"],
        cwd=tmp_path,
        check=False,
        timeout=300,
    )
    assert proc.returncode != 0 and "no cluster here" in proc.stderr + proc.stdout
    lines = script.read_text().splitlines()
    for flag in [
        "--array=0-3%4",  # one array task per shard, all at once (array_parallelism 16)
        "--gpus-per-node=1",
        "--ntasks-per-node=1",
        "--cpus-per-task=8",
        "--mem=32GB",
        "--time=90",
        "--partition=gpu",
        "--job-name=bench-demo",
        "--signal=USR2@120",  # submitit's preemption/timeout signal: checkpoint, then requeue
    ]:
        assert f"#SBATCH {flag}" in lines, f"{flag} missing from the job script"
    assert any(line.startswith("srun ") and "submitit.core._submit" in line for line in lines)
    assert not (tmp_path / "outputs/demo/tiny").exists()  # nothing ran: submission failed cleanly
