"""Throughput on the tiny model: samples/s per method, Inception images/s, a second aggregation on warm caches.

`python -m bench.perf throughput [--samples 4] [--out results/perf]` writes perf.csv (long format) and
perf.md (the command, the machine, the figures and the ratios of this one run). Timings are wall-clock
on whatever else the machine is doing: the load average is recorded beside them. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from bench.config import CONF_DIR, REPO_ROOT, build
from bench.records import atomic_write_text, git_state, write_csv
from bench.reporting.aggregate import markdown_table
from bench.sd.diffusion import SamplingConfig
from bench.task import load_references, plan_work, run_benchmark

COLUMNS = ["section", "item", "setting", "value", "unit", "note"]


def compose_bench(overrides: list[str]) -> DictConfig:
    """conf/bench.yaml on the tiny model and the procedural scenes (what these figures measure), plus `overrides`."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("bench", overrides=["model=tiny", "dataset=synthetic_places", *overrides])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts(device: torch.device) -> dict:
    facts = {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "none",
        "python": platform.python_version(),
        "platform": platform.platform(),
        **{pkg: metadata.version(pkg) for pkg in ("torch", "diffusers", "transformers", "torch-fidelity")},
        **git_state(),
    }
    return facts


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def record(section: str, item: str, setting: str, value: float, unit: str, note: str = "") -> dict:
    return dict(zip(COLUMNS, [section, item, setting, value, unit, note], strict=True))


def method_throughput(method_name: str, backbone, n_samples: int, batch_size: int, device: torch.device) -> list[dict]:
    """samples/s of one method's `generate` on the first n work units (after one untimed warm-up sample)."""
    invariant = batch_size == 1
    cfg = compose_bench([f"method={method_name}", f"sampling.batch_invariant={invariant}"])
    setting = f"{cfg.model.image_size}px, {cfg.sampling.num_inference_steps} steps, batch {batch_size}" + (
        "" if invariant else " (batch_invariant=false)"
    )
    method = build(cfg.method)
    sampling = SamplingConfig(**cfg.sampling)
    units = plan_work(build(cfg.dataset).references(), list(cfg.seeds), 0, 1)[: n_samples + 1]
    refs = load_references(units, cfg.model.image_size, cfg.dataset.get("resample", "bicubic"))
    samples = [u.sample(refs[u.image.image_id][0]) for u in units]
    method.generate(backbone, samples[:1], sampling)  # warm-up: first-call allocations, lazy imports
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    results = []
    for k in range(1, len(samples), batch_size):
        results += method.generate(backbone, samples[k : k + batch_size], sampling)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    failed = sum(r.failure is not None for r in results)
    note = f"{len(results)} samples in {seconds:.2f} s" + (f"; {failed} failed" if failed else "")
    out = [record("generation", method_name, setting, len(results) / seconds, "samples/s", note)]
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        out.append(record("memory", method_name, setting, peak, "MB", "torch.cuda.max_memory_allocated"))
    return out


def inception_throughput(n_images: int, size: int, device: torch.device) -> list[dict]:
    """Images/s through the FID InceptionV3 (2048-d features), weights already loaded."""
    from bench.metrics.inception import load_inception

    start = time.perf_counter()
    net = load_inception(device=str(device))
    load_s = time.perf_counter() - start
    images = np.random.default_rng(0).integers(0, 256, (n_images, size, size, 3), dtype=np.uint8)
    net(images[:1], "2048")  # warm-up
    start = time.perf_counter()
    for k in range(0, n_images, 16):
        net(images[k : k + 16], "2048")
    seconds = time.perf_counter() - start
    setting = f"{size}px uint8 -> 299, batch 16, 2048-d"
    return [
        record("inception", "feature extraction", setting, n_images / seconds, "images/s", f"{n_images} images"),
        record("inception", "weights load", "first use in this process", load_s, "s", net.provenance),
    ]


def aggregation_speedup(device: torch.device) -> list[dict]:
    """Wall time of `python -m bench.aggregate` on a fresh task with empty caches, then again on warm caches.

    The task: sdedit and txt2img on one image and one prompt of each of the 10 scenes (20 samples).
    """
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as tmp:
        root = Path(tmp)
        size = ["dataset.images_per_subcategory=1", "dataset.prompts_per_subcategory=1", f"device={device.type}"]
        n = 0
        for method in ("sdedit", "txt2img"):
            n += run_benchmark(compose_bench([f"method={method}", f"paths.root_dir={root}", *size, "metrics=none"]))[
                "planned"
            ]
        cmd = [sys.executable, "-m", "bench.aggregate", "--results-dir", str(root / "results"), "--root-dir", str(root)]
        env = {**os.environ, "BENCH_CACHE_DIR": str(root / ".cache")}
        times = []
        for _ in range(2):
            start = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, cwd=REPO_ROOT, capture_output=True, text=True)
            times.append(time.perf_counter() - start)
        cached = sum(1 for p in (root / ".cache").rglob("*") if p.is_file())
    setting = f"{n} samples (2 methods), one process per aggregation"
    note = f"{cached} cache files after the first run"
    return [
        record("aggregation", "cold caches", setting, times[0], "s", note),
        record("aggregation", "warm caches", setting, times[1], "s", note),
        record("aggregation", "speedup warm/cold", setting, times[0] / times[1], "x", note),
    ]


def method_names() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))


def run(
    methods: list[str], n_samples: int, batch_sizes: list[int], inception_images: int
) -> tuple[list[dict], list[str], dict]:
    """Every section, and the machine; a section or method that fails is skipped with a note naming the error."""
    backbone = build(compose_bench([]).model)
    facts = machine_facts(backbone.device)
    rows, notes = [], []
    for name in methods:
        for batch in batch_sizes:
            try:
                timed = method_throughput(name, backbone, n_samples, batch, backbone.device)
                rows += timed
                print(f"perf: {name} batch {batch}: {timed[0]['note']}", file=sys.stderr, flush=True)
            except Exception as exc:  # a method that cannot run here is reported, not fatal
                notes.append(f"method {name} (batch {batch}) skipped: {type(exc).__name__}: {exc}")
    rows.append(record("memory", "peak RSS", "after generation", peak_rss_mb(), "MB", "ru_maxrss of this process"))
    for section, fn in (
        ("inception", lambda: inception_throughput(inception_images, 256, backbone.device)),
        ("aggregation", lambda: aggregation_speedup(backbone.device)),
    ):
        try:
            rows += fn()
        except Exception as exc:
            notes.append(f"{section} skipped: {type(exc).__name__}: {exc}")
    # ru_maxrss never decreases, so one figure after generation and one for the whole process.
    rows.append(record("memory", "peak RSS", "whole benchmark", peak_rss_mb(), "MB", "ru_maxrss of this process"))
    return rows, notes, facts


def ratios(rows: list[dict]) -> list[str]:
    """Ratios within this run: each method against txt2img (plain sampling), batch 4 against batch 1."""
    speed = {(r["item"], r["setting"]): r["value"] for r in rows if r["section"] == "generation"}
    out = []
    base = {s: v for (m, s), v in speed.items() if m == "txt2img"}
    for (method, setting), value in sorted(speed.items()):
        if method != "txt2img" and setting in base:
            out.append(f"{method}: {base[setting] / value:.2f}x the time per sample of txt2img ({setting})")
    for (method, setting), value in sorted(speed.items()):
        if "batch 1" in setting:
            batched = [v for (m, s), v in speed.items() if m == method and "batch 1" not in s]
            out += [f"{method}: batching gives {b / value:.2f}x the samples/s of batch 1" for b in batched]
    return out


def write_results(out_dir: Path, rows: list[dict], facts: dict, notes: list[str], command: str) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=COLUMNS)
    write_csv(frame, out_dir / "perf.csv")
    shown = frame.assign(value=frame["value"].map(lambda v: f"{v:.4g}"))
    titles = {
        "generation": "Generation (`method.generate` on the tiny model, after one untimed warm-up sample)",
        "inception": "FID Inception features (bench.metrics.inception)",
        "aggregation": "Aggregation (`python -m bench.aggregate`: tables, FID/KID, figures), first on empty "
        "caches, then again",
        "memory": "Memory",
    }
    figures = []
    for section, title in titles.items():
        part = shown[shown["section"] == section].drop(columns="section")
        if len(part):
            figures += [f"### {title}", "", markdown_table(part), ""]
    md = [
        "# Throughput on the tiny model",
        "",
        f"Command: `{command}`",
        "",
        f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC. Wall-clock figures; the machine may be "
        "shared (load average below). Compare figures within one run, not across machines.",
        "",
        "## Machine",
        "",
        markdown_table(pd.DataFrame({"fact": list(facts), "value": [str(v) for v in facts.values()]})),
        "",
        "## Figures",
        "",
        *figures,
        "## Ratios (this run)",
        "",
        *[f"- {r}" for r in ratios(rows)],
    ]
    if notes:
        md += ["", "## Skipped", "", *[f"- {n}" for n in notes]]
    atomic_write_text(out_dir / "perf.md", "\n".join(md) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.perf throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4, help="timed samples per method and batch size")
    parser.add_argument("--batch-sizes", default="1,4", help="comma-separated; 1 runs batch-invariant")
    parser.add_argument("--methods", default=",".join(method_names()), help="comma-separated conf/method names")
    parser.add_argument("--inception-images", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is stable on a shared machine)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "perf")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python -m bench.perf throughput " + shlex.join(argv or [])
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows, notes, facts = run(args.methods.split(","), args.samples, batch_sizes, args.inception_images)
    facts["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    write_results(args.out, rows, facts, notes, command.strip())
    print((args.out / "perf.md").read_text())


if __name__ == "__main__":
    main()
