"""`make check-scale` (`python -m bench.perf.scale`): every method through the CLI at SD1.5's real size, offline.

1. builds (once, cached in .cache/sd15-random/) a random-weight folder with SD1.5's exact architecture,
   configs and tokenizer files (bench/perf/sd15_folder.py);
2. runs each method of conf/method/ as `python -m bench.run model=sd15 model.path=<folder> method=...` at 512
   px with a short schedule, one forest reference and one prompt, metrics off, outputs under outputs/check-scale/;
3. checks that each run completed its sample, that Grad-SAM samplers' rows took the exact tail path
   (`score_path`), and that every mask of a method that makes one (`Method.makes_mask`) has the latent's
   shape (64x64 per channel);
4. writes wall time and peak RSS (of the run's process, from wait4) per method to `--out`.

`--reduced` (CI, .ci/run; `make check-scale REDUCED=1`): gradsam and sdedit only, reported to
outputs/check-scale/scale-reduced.md unless `--out` says otherwise. Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.utils import get_object
from omegaconf import OmegaConf
from PIL import Image

from bench.config import CONF_DIR, REPO_ROOT
from bench.perf.sd15_folder import DEFAULT_DIR, ensure_folder
from bench.records import atomic_write_text
from method.sampler import GradSAM

# Optional extra overrides per conf/method option (a method not named here runs at its YAML defaults): SDEdit at
# the proposed method's start time, and one noise draw for DiffEdit's mask (check-scale times it, never scores it).
EXTRA: dict[str, tuple[str, ...]] = {"sdedit": ("method.strength=0.9",), "diffedit": ("method.mask_noise_draws=1",)}
REDUCED = ("gradsam", "sdedit_0.9")  # CI's reduced form: run labels


@dataclass(frozen=True)
class MethodRun:
    """One method of check-scale, derived from its conf/method/<option>.yaml and its class."""

    name: str  # the run's method.label; its run folder is <label>+none
    overrides: tuple[str, ...]  # method=<option>, then what fits the short schedule, then EXTRA
    tail: bool  # a Grad-SAM sampler (GradSAM or a subclass): its row must report score_path=tail
    masked: bool  # Method.makes_mask: its masks must be latent x latent per channel


def method_run(option: str) -> MethodRun:
    """The check-scale run of conf/method/<option>.yaml: a Grad-SAM sampler scores at index 1 (strength 0.9 of
    a 3-step schedule keeps 2 steps: one injection, at index 1); the label is the YAML's with the overrides."""
    node = OmegaConf.load(CONF_DIR / "method" / f"{option}.yaml")
    target = get_object(node._target_)
    tail = isinstance(target, type) and issubclass(target, GradSAM)
    fit = (f"method.{target.indices_key}=[1]",) if tail else ()
    overrides = (*fit, *EXTRA.get(option, ()))
    node.merge_with_dotlist([o.removeprefix("method.") for o in overrides])
    masked = bool(getattr(target, "makes_mask", False))
    return MethodRun(str(node.label), (f"method={option}", *overrides), tail, masked)


@functools.cache
def methods() -> dict[str, MethodRun]:
    """Every conf/method option's run, by its label (a new method file adds one; nothing here to edit)."""
    runs = [method_run(path.stem) for path in sorted((CONF_DIR / "method").glob("*.yaml"))]
    return {run.name: run for run in runs}


@dataclass
class Outcome:
    name: str
    seconds: float
    peak_rss_gb: float
    returncode: int
    problems: list[str] = field(default_factory=list)
    row: dict = field(default_factory=dict)
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after


def latent_size(folder: Path, image_size: int) -> int:
    """The latent grid of the folder's VAE at `image_size` (64 for SD1.5 at 512 px)."""
    vae = json.loads((folder / "vae" / "config.json").read_text())
    return image_size // 2 ** (len(vae["block_out_channels"]) - 1)


def run_method(name: str, folder: Path, work: Path, steps: int, timeout: int, image_size: int = 512) -> Outcome:
    """One CLI run as a child process; its wall time and peak RSS (ru_maxrss of that child alone)."""
    args = [
        sys.executable,
        "-m",
        "bench.run",
        "model=sd15",
        f"model.path={folder}",
        "dataset=synthetic_places",
        f"model.image_size={image_size}",
        "device=cpu",
        "task_name=check_scale",
        f"sampling.num_inference_steps={steps}",
        "metrics=none",
        "dataset.subcategories=[forest]",
        "dataset.images_per_subcategory=1",
        "dataset.prompts_per_subcategory=1",
        f"paths.output_dir={work / 'outputs'}",
        f"paths.results_dir={work / 'results'}",
        *methods()[name].overrides,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO_ROOT)}
    log = (work / f"{name}.log").open("w")
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _, status, usage = wait_with_timeout(proc, timeout)
    finally:
        log.close()
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    outcome = Outcome(name, seconds, usage.ru_maxrss / 2**20, code)  # ru_maxrss is in KiB on Linux
    if code != 0:
        outcome.problems.append(f"exit code {code} (log: {work / f'{name}.log'})")
    return outcome


def wait_with_timeout(proc: subprocess.Popen, timeout: int):
    """os.wait4 on the child (its own rusage), killing it after `timeout` seconds; polled every 0.1 s (the
    reported wall time overshoots the child's end by at most that: 0.5 s once, a few percent of a reduced run)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return pid, status, usage
        if time.monotonic() > deadline and proc.returncode is None:
            proc.kill()
            proc.returncode = -9  # marks the kill; the real status comes from wait4
        time.sleep(0.1)


def check_outputs(outcome: Outcome, work: Path, latent: int) -> None:
    """The run's one row is `ok`, gradsam-like rows used the tail path, masks are latent x latent per channel."""
    rows = sorted((work / "outputs" / "check_scale").glob(f"sd15/*/{label_glob(outcome.name)}/rows/**/*.json"))
    if len(rows) != 1:
        outcome.problems.append(f"expected one row, found {len(rows)}")
        return
    row = outcome.row = json.loads(rows[0].read_text())
    if row.get("status") != "ok":
        outcome.problems.append(f"row status {row.get('status')}: {row.get('failure')}")
    run = methods()[outcome.name]
    if run.tail and row.get("score_path") != "tail":
        outcome.problems.append(f"score_path={row.get('score_path')!r}, expected 'tail'")
    masks = sorted((REPO_ROOT / row["masks_dir"]).glob("*.png")) if row.get("masks_dir") else []
    if run.masked and not masks:
        outcome.problems.append("no masks written")
    for path in masks:
        height, width = Image.open(path).size[::-1]  # channels lie side by side: [h, C*w]
        if height != latent or width % latent:
            outcome.problems.append(f"mask {path.name} is {height}x{width}, not {latent}x(C*{latent})")


def label_glob(name: str) -> str:
    """The run folder's `<method.label>+<ablation>` (every run here is keyed by its label, ablation none)."""
    return f"{name}+none"


def report(outcomes: list[Outcome], steps: int, size: tuple[int, int], folder_s: float, total_s: float) -> str:
    """results/perf/scale.md: one line per method."""
    lines = [
        "# check-scale: every method through the CLI at SD1.5's real size",
        "",
        "`make check-scale` (`python -m bench.perf.scale`): a random-weight folder with SD1.5's exact "
        "architecture (UNet 859,520,964 parameters, VAE 83,653,863, text encoder 123,060,480; float32 "
        "safetensors, built once into .cache/sd15-random/), each method run as `python -m bench.run "
        f"model=sd15 model.path=<folder>` at {size[0]} px ({size[1]}x{size[1]}x4 latents), {steps} inference "
        "steps, one reference and one prompt, metrics off. Peak RSS: the run process's own ru_maxrss (wait4).",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (torch threads {torch.get_num_threads()}), "
        f"torch {torch.__version__}; shared with other jobs (load average at the end "
        f"{os.getloadavg()[0]:.1f}), so times are indicative. "
        f"Folder build/check: {folder_s:.0f} s; all runs: {total_s / 60:.1f} min.",
        "",
        "| method | overrides | wall time (s) | peak RSS (GB) | load before/after | score_path | masks | result |",
        "|---|---|---:|---:|---|---|---|---|",
    ]
    for o in outcomes:
        masks = f"{size[1]}x{size[1]} per channel" if methods()[o.name].masked and not o.problems else "-"
        result = "ok" if not o.problems else "FAILED: " + "; ".join(o.problems)
        extra = " ".join(f"`{a}`" for a in methods()[o.name].overrides[1:]) or "-"
        path = o.row.get("score_path", "-") or "-"
        load = f"{o.load[0]:.1f}/{o.load[1]:.1f}"
        cells = [o.name, extra, f"{o.seconds:.0f}", f"{o.peak_rss_gb:.2f}", load, path, masks, result]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(methods()), help=f"comma-separated, of {list(methods())}")
    parser.add_argument("--reduced", action="store_true", help=f"CI: {', '.join(REDUCED)} only")
    parser.add_argument("--steps", type=int, default=3, help="sampling.num_inference_steps (at least 3)")
    parser.add_argument("--image-size", type=int, default=512, help="model.image_size (pixels)")
    parser.add_argument("--folder", type=Path, help=f"an existing diffusers folder (default: built into {DEFAULT_DIR})")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "outputs" / "check-scale")
    parser.add_argument("--out", type=Path, help="default: results/perf/scale.md (reduced: under --work)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per method")
    args = parser.parse_args(argv)
    names = list(REDUCED) if args.reduced else args.methods.split(",")
    if args.out is None:
        args.out = args.work / "scale-reduced.md" if args.reduced else REPO_ROOT / "results" / "perf" / "scale.md"
    unknown = sorted(set(names) - set(methods()))
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {list(methods())}")
    start = time.perf_counter()
    folder = args.folder or ensure_folder(DEFAULT_DIR)
    folder_s = time.perf_counter() - start
    print(f"check-scale: folder {folder} ({folder_s:.0f} s)", flush=True)
    outcomes = []
    for name in names:
        clear_run(args.work, name)
        load = os.getloadavg()[0]
        outcome = run_method(name, folder, args.work, args.steps, args.timeout, args.image_size)
        outcome.load = (load, os.getloadavg()[0])
        if not outcome.problems:
            check_outputs(outcome, args.work, latent_size(folder, args.image_size))
        state = "ok" if not outcome.problems else "FAILED " + "; ".join(outcome.problems)
        peak = f"peak RSS {outcome.peak_rss_gb:.2f} GB"
        print(f"check-scale: {name}: {outcome.seconds:.0f} s, {peak}: {state}", flush=True)
        outcomes.append(outcome)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    size = (args.image_size, latent_size(folder, args.image_size))
    atomic_write_text(args.out, report(outcomes, args.steps, size, folder_s, time.perf_counter() - start))
    print(f"check-scale: wrote {args.out}")
    if any(o.problems for o in outcomes):
        sys.exit(1)


def clear_run(work: Path, name: str) -> None:
    """Remove an earlier run of this method, so that the run is timed from scratch (runs resume otherwise)."""
    for run_dir in (work / "outputs" / "check_scale").glob(f"sd15/*/{label_glob(name)}"):
        shutil.rmtree(run_dir)
    work.mkdir(parents=True, exist_ok=True)


if __name__ == "__main__":
    main()
