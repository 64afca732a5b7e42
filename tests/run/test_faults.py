"""Faults: SIGKILL mid-run, a NaN latent, a full disk, an unreachable W&B. No result already written is lost."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from baselines.sdedit import SDEdit
from bench.config import REPO_ROOT
from bench.datasets.base import sample_key
from bench.records import StorageError, merge_samples, write_row
from bench.reporting.tables import summarize
from bench.task import run_benchmark
from tests.conftest import FAST, PIXEL_ONLY, compose_cfg, with_test_profile

# One CPU thread everywhere: the subprocess and in-process runs then make the same bits (conf/bench.yaml).
BASE = [*FAST, *PIXEL_ONLY, "model.image_size=32", "method=sdedit", "cpu_threads=1"]
RUN_DIR = "outputs/demo/tiny/synthetic_places/sdedit_0.6+none"
POISONED = "forest/00000/deer_roaming/s1"


def result_files(root: Path) -> dict[str, bytes]:
    """Every image, mask and row of the run, and samples.csv, by relative path (temporary files included)."""
    run_dir = root / RUN_DIR
    files = [p for sub in ("images", "masks", "rows") for p in (run_dir / sub).rglob("*") if p.is_file()]
    files.append(root / "results/demo/samples.csv")
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def row_files(root: Path) -> list[Path]:
    return sorted((root / RUN_DIR / "rows").rglob("*.json"))


def test_sigkill_mid_run_then_rerun_equals_an_uninterrupted_run(tmp_path):
    overrides = [*BASE, "seeds=[1,2,3,4]"]  # 8 samples
    run_benchmark(compose_cfg(overrides, tmp_path / "uninterrupted"))
    expected = result_files(tmp_path / "uninterrupted")

    killed = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "bench.run", *with_test_profile(overrides), f"paths.root_dir={killed}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(row_files(killed)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before the kill: nothing was interrupted"
    done = row_files(killed)
    assert 2 <= len(done) < 8
    for row in done:  # a row is written last: each counted sample has its image
        key = str(row.relative_to(killed / RUN_DIR / "rows").with_suffix(""))
        assert (killed / RUN_DIR / "images" / f"{key}.png").is_file()
    # What a kill inside an atomic write leaves for a sample not done: temporary files, never counted.
    row_of = lambda image: killed / image.replace("/images/", "/rows/").replace(".png", ".json")  # noqa: E731
    pending_png = killed / next(k for k in expected if k.endswith(".png") and not row_of(k).exists())
    in_flight = killed / RUN_DIR / "rows/forest/00000/deer_roaming/.s9.json.x1y2.tmp"  # not this plan's sample
    leftovers = [pending_png.parent / f".{pending_png.name}.x1y2.tmp", in_flight]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")

    summary = run_benchmark(compose_cfg(overrides, killed))
    assert summary["pending"] == 8 - len(done)
    # No other run of the task was alive (records.task_writers): every leftover was an orphan, deleted.
    assert not any(path.exists() for path in leftovers)
    assert result_files(killed) == expected


class NaNInjectingSDEdit(SDEdit):
    """SDEdit whose UNet puts one NaN into its noise prediction for one sample (a forward hook, removed after)."""

    def __init__(self, poison_key: str, **kwargs):
        super().__init__(**kwargs)
        self.poison_key = poison_key

    def generate(self, backbone, samples, sampling):
        out = []
        for sample in samples:
            poisoned = sample_key(sample.image_id, sample.prompt, sample.seed) == self.poison_key
            handle = backbone.unet.register_forward_hook(_first_value_nan) if poisoned else None
            try:
                out += super().generate(backbone, [sample], sampling)
            finally:
                if handle is not None:
                    handle.remove()
        return out


def _first_value_nan(module, args, output):
    output.sample[0, 0, 0, 0] = float("nan")  # eps [2, C, h, w] (cond; uncond) of this sample's call
    return output


def test_nan_latent_marks_that_sample_failed_and_the_run_goes_on(tmp_path):
    overrides = [*BASE, "seeds=[1]"]
    run_benchmark(compose_cfg(overrides, tmp_path / "clean"))
    poison = [f"method._target_={__name__}.NaNInjectingSDEdit", f"+method.poison_key={POISONED}"]
    run_benchmark(compose_cfg([*overrides, *poison], tmp_path / "nan"))

    samples = pd.read_csv(tmp_path / "nan/results/demo/samples.csv", keep_default_na=False, na_values=[""])
    failed = samples[samples["sample_key"] == POISONED].iloc[0]
    assert failed["status"] == "failed" and pd.isna(failed["image_path"])
    assert failed["failure"].startswith("non-finite latent (") and "NaN/inf values" in failed["failure"]
    assert not (tmp_path / "nan" / RUN_DIR / "images" / f"{POISONED}.png").exists()
    ok = samples[samples["sample_key"] != POISONED]
    assert len(ok) == 1 and ok["status"].tolist() == ["ok"]
    other = ok["image_path"].iloc[0]  # the next sample is untouched by its neighbour's NaN
    assert (tmp_path / "nan" / other).read_bytes() == (tmp_path / "clean" / other).read_bytes()

    table = summarize(samples, intervals=False)
    assert table[["N", "failures"]].to_dict("records") == [{"N": 1, "failures": 1}]
    assert table["pixel_mad_mean"].iloc[0] == pytest.approx(ok["pixel_mad"].iloc[0])


def test_full_disk_keeps_what_was_written_and_the_rerun_completes(tmp_path, monkeypatch):
    overrides = [*BASE, "seeds=[1,2]"]  # 4 samples
    run_benchmark(compose_cfg(overrides, tmp_path / "reference"))
    expected = result_files(tmp_path / "reference")

    root = tmp_path / "full"
    real_fsync = os.fsync

    def fsync_on_a_disk_that_fills_after_two_samples(fd: int) -> None:
        if len(row_files(root)) >= 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_on_a_disk_that_fills_after_two_samples)
    with pytest.raises(StorageError) as failure:
        run_benchmark(compose_cfg(overrides, root))
    message = str(failure.value)
    assert "No space left on device" in message and str(root / RUN_DIR) in message
    assert "intact" in message and "rerun the same command" in message
    kept = row_files(root)
    assert len(kept) == 2
    for path in kept:  # each kept sample is whole: its row and image equal the reference run's
        rel = str(path.relative_to(root))
        image = rel.replace("/rows/", "/images/").replace(".json", ".png")
        assert path.read_bytes() == expected[rel] and (root / image).read_bytes() == expected[image]
    assert not list(root.rglob("*.tmp"))

    monkeypatch.setattr(os, "fsync", real_fsync)  # space freed
    assert run_benchmark(compose_cfg(overrides, root))["pending"] == 2
    assert result_files(root) == expected

    # The disk fills again while samples.csv is rebuilt: the old table stays whole.
    samples_csv = root / "results/demo/samples.csv"
    before = samples_csv.read_bytes()
    write_row(root / RUN_DIR, "extra/00000/x/s9", {"model": "tiny", "dataset": "d", "label": "l", "ablation": "a"})
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(OSError, match="No space left"):
        merge_samples(root / "outputs/demo", samples_csv)
    assert samples_csv.read_bytes() == before
    assert not list(samples_csv.parent.glob("*.tmp"))


def closed_port() -> int:
    """A local TCP port with no server behind it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_wandb_is_a_warning_and_results_are_written(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)  # a well-formed key no server knows
    cfg = compose_cfg([*BASE, "seeds=[1]", "logger=wandb", "logger.init_timeout=3"], tmp_path)
    with caplog.at_level("WARNING", logger="bench.tracking"):
        run_benchmark(cfg)
    assert "W&B init failed" in caplog.text
    samples = pd.read_csv(tmp_path / "results/demo/samples.csv")
    assert len(samples) == 2 and set(samples["status"]) == {"ok"}
    assert all((tmp_path / p).is_file() for p in samples["image_path"])
