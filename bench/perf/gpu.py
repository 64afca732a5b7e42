"""`python -m bench.perf gpu`: the prepared GPU measurement, one run of under 8 minutes on one GPU.

On the random-weight SD1.5 folder (bench/perf/sd15_folder.py: SD1.5's exact architecture, configs and
tokenizer; built once into .cache/sd15-random/) at 512 px, float16 sampling, it measures and writes to
results/perf/gpu.md:

1. seconds per sample of every Table 1 row (conf/row/*.yaml, the protocol's 50 steps; the first sample of a
   row pays one-off costs, so the second is reported beside it) and each row's peak GPU memory;
2. the exact tail scoring call in plain forwards: a plain no-grad conditional forward of the float16 sampling
   UNet, one of the float32 UNet the call uses, and the call itself, interleaved (`--repeats` each): the
   median ratio and its range;
3. the general path per layer set (last, all, res64 ... res8) and side (rows: batched VJPs; columns:
   batched JVPs): products, passes at `--chunk`, seconds of one sampled pass of each side and the whole call
   extrapolated from it, the whole call measured where the extrapolation fits the time left, the two sides'
   shared Jacobian entries compared, peak memory;
4. the machine, the versions and the whole run's time.

Random weights make the images meaningless; the times and memory are those of the real architecture.
`--device cpu --size tiny` runs the same sections on the tiny random model (model=tiny) at 32 px (8x8 latent;
at 64 px the general path's whole calls, about 16 times dearer, took most of the test's time): the CPU test
of this script (tests/perf/test_gpu_script.py); its figures say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_object
from omegaconf import DictConfig

from bench.config import CONF_DIR, REPO_ROOT, build
from bench.datasets.base import WorkUnit, to_model_input
from bench.perf.general_modes import clock, full_calls, sampled_costs
from bench.perf.sd15_folder import DEFAULT_DIR, ensure_folder
from bench.records import atomic_write_text
from bench.sd.config import from_mapping
from bench.sd.diffusion import SamplingConfig, encode_text
from method.gradsam import ScoreInputs, scores_and_path
from method.plans import SIDES, layer_sets
from method.sampler import GradSAM
from method.tokens import subject_tokens

T_SCORE = 780  # the paper's first injection timestep


@dataclass
class Setup:
    """Where and at what size the run measures."""

    size: str  # sd15 or tiny
    label: str  # the model, resolution and precision, in words
    device: torch.device
    overrides: list[str]  # model and device overrides of every composed config
    steps: int  # sampling.num_inference_steps
    chunk: int  # general_chunk_size of the general path's passes
    deadline: float  # time.monotonic() after which optional whole calls are skipped

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def left(self) -> float:
        return self.deadline - time.monotonic()


def make_setup(args: argparse.Namespace, start: float) -> Setup:
    device = torch.device(args.device)
    if args.size == "sd15":
        folder = args.folder or ensure_folder(DEFAULT_DIR)
        overrides = ["model=sd15", f"model.path={folder}", "model.image_size=512"]
        label = f"SD1.5 architecture, random weights ({folder}), 512 px, model.dtype=auto (float16 on CUDA)"
    else:
        overrides = ["model=tiny", "model.image_size=32"]
        label = "model=tiny (random weights), 32 px, float32: the script's CPU test, nothing about a GPU"
    overrides += [f"device={args.device}", "dataset=synthetic_places", "metrics=none"]
    return Setup(args.size, label, device, overrides, args.steps, args.chunk, start + args.budget_s)


def compose_row(setup: Setup, row: str | None = None) -> DictConfig:
    extra = [f"row={row}"] if row else []
    overrides = [*setup.overrides, f"sampling.num_inference_steps={setup.steps}", *extra]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("bench", overrides=overrides)


def fit_schedule(cfg: DictConfig, steps: int) -> None:
    """Short schedules (the CPU test): a Grad-SAM sampler scores at index 1, as make check-scale does."""
    target = get_object(cfg.method._target_)
    if steps < 50 and isinstance(target, type) and issubclass(target, GradSAM):
        cfg.method[target.indices_key] = [1]


def peak_memory(setup: Setup) -> str:
    """Peak GPU memory since the last reset (CUDA), or the process's peak RSS (CPU), in GB."""
    if setup.device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(setup.device) / 2**30:.2f} GB GPU"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB RSS (process peak)"


def reset_peak(setup: Setup) -> None:
    if setup.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(setup.device)


def rows_part(backbone, reference, setup: Setup, rows: list[str], samples: int, lines: list[str]) -> None:
    """Section 1: seconds per sample of each Table 1 row: every row's first sample, then later ones while
    the time lasts (a first sample pays one-off costs)."""
    lines += ["", "## Seconds per sample, every Table 1 row", ""]
    lines += ["| row | first sample (s) | later (s) | peak |", "|---|---:|---:|---|"]
    image = to_model_input(reference.load(), backbone.image_size)[0]
    runs = {}
    for round_ in range(samples):
        for row in rows:
            if round_ and (setup.left() < 0 or row not in runs):
                continue
            if row not in runs:
                runs[row] = row_runner(setup, row)
            sample = WorkUnit(reference, reference.prompts[0], 51828 + round_).sample(image)
            if not runs[row].run(backbone, sample, setup):
                runs.pop(row)
                lines.append(f"| {row} | {runs_failure(setup)} | - | - |")
    for row, runner in runs.items():
        later = f"{statistics.mean(runner.times[1:]):.2f}" if len(runner.times) > 1 else "-"
        later += " (time ran out)" if len(runner.times) < samples else ""
        lines.append(f"| {row} | {runner.times[0]:.2f} | {later} | {runner.peak} |")
    print("\n".join(lines[-len(rows) :]), flush=True)


@dataclass
class RowRunner:
    """One Table 1 row's method, its sampling settings, and the seconds and peak memory of its samples."""

    method: object
    sampling: SamplingConfig
    times: list[float]
    peak: str = "-"

    def run(self, backbone, sample, setup: Setup) -> bool:
        """One sample, timed; False when the device ran out of memory."""
        reset_peak(setup)
        try:
            start = clock(setup.sync)
            (result,) = self.method.generate(backbone, [sample], self.sampling)
            self.times.append(clock(setup.sync) - start)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return False
        if result.failure:
            raise RuntimeError(f"a sample failed: {result.failure}")
        self.peak = peak_memory(setup)
        return True


def row_runner(setup: Setup, row: str) -> RowRunner:
    cfg = compose_row(setup, row)
    fit_schedule(cfg, setup.steps)
    return RowRunner(build(cfg.method), from_mapping(SamplingConfig, cfg.sampling, "sampling"), [])


def runs_failure(setup: Setup) -> str:
    return f"out of device memory ({peak_memory(setup)} at the failure)"


@dataclass(frozen=True)
class Call:
    """One scoring call's inputs on the device: z_t, t, the prompt's text states, the subject's columns."""

    z: torch.Tensor
    t: torch.Tensor
    cond: torch.Tensor
    positions: tuple[int, ...]


def call_inputs(backbone, reference, device: torch.device) -> Call:
    prompt = reference.prompts[0]
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, backbone.latent_channels, backbone.latent_size, backbone.latent_size, generator=g)
    positions = subject_tokens(backbone.tokenizer, prompt.text, prompt.subject).positions
    cond = encode_text(backbone, [prompt.text]).float()
    return Call(z.to(device), torch.tensor(T_SCORE, device=device), cond, positions)


def forward_seconds(unet, call: Call, setup: Setup) -> float:
    """One plain no-grad conditional forward of `unet` in its own dtype."""
    z, cond = call.z.to(unet.dtype), call.cond.to(unet.dtype)
    start = clock(setup.sync)
    with torch.no_grad():
        unet(z, call.t, encoder_hidden_states=cond)
    return clock(setup.sync) - start


def scoring_part(backbone, call: Call, setup: Setup, repeats: int, lines: list[str]) -> None:
    """Section 2: the tail scoring call against plain forwards, interleaved; median ratios and ranges."""
    scorer = backbone.float32_unet()
    inputs = ScoreInputs(scorer, call.z, call.t, call.cond, call.positions)

    def scoring() -> float:
        start = clock(setup.sync)
        _, path = scores_and_path(inputs, {"path": "tail"})
        assert path == "tail"
        return clock(setup.sync) - start

    scoring(), forward_seconds(backbone.unet, call, setup)  # warm-up: kernel choices, the head-row check
    reset_peak(setup)
    runs = [
        (forward_seconds(backbone.unet, call, setup), forward_seconds(scorer, call, setup), scoring())
        for _ in range(repeats)
    ]
    lines += ["", "## The scoring call in plain forwards", ""]
    lines.append(
        f"{repeats} interleaved repetitions: plain forward ({backbone.unet.dtype}), plain forward (float32), tail call"
    )
    for plain, plain32, total in runs:
        lines.append(f"- {plain:.3f} s, {plain32:.3f} s, {total:.3f} s")
    for label, index in (("sampling UNet's", 0), ("float32 UNet's", 1)):
        ratios = [run[2] / run[index] for run in runs]
        lines.append(
            f"- call / the {label} plain forward: median {statistics.median(ratios):.2f}, "
            f"range {min(ratios):.2f}-{max(ratios):.2f}"
        )
    lines.append(f"- peak during these calls: {peak_memory(setup)}")
    print("\n".join(lines[-repeats - 4 :]), flush=True)


def general_part(backbone, call: Call, setup: Setup, sets: list[str] | None, lines: list[str]) -> None:
    """Section 3: per layer set, both sides of the general path: one sampled pass each, whole calls if they fit."""
    scorer = backbone.float32_unet()
    inputs = ScoreInputs(scorer, call.z, call.t, call.cond, call.positions)
    plain = min(forward_seconds(scorer, call, setup) for _ in range(2))
    lines += ["", "## The general path per layer set and side", ""]
    lines.append(
        f"score.general_chunk_size={setup.chunk}; float32 plain forward {plain:.3f} s; `sampled` = one pass of "
        f"{setup.chunk} products (columns: of the set's earliest layer), `whole` = one whole scoring call (run only "
        "when the extrapolation fits the time left); `agree` = max |rows - columns| / max |J| on the entries both "
        "sampled passes computed"
    )
    lines += [
        "",
        "| set | layers | side | products | passes | sampled pass (s) | whole, extrapolated (s) | whole, "
        "measured (s) | peak | agree |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for label, layers in layer_sets(scorer, backbone.latent_size, "last").items():
        if sets is not None and label not in sets:
            continue
        reset_peak(setup)
        try:
            cost = sampled_costs(inputs, label, layers, setup.chunk, setup.sync)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            lines.append(f"| {label} | {len(layers)} | both | - | - | {runs_failure(setup)} | - | - | - | - |")
            continue
        sampled_peak = peak_memory(setup)
        for side in SIDES:
            pass_s = cost.row_pass_s if side == "rows" else cost.column_pass_s
            estimate = cost.extrapolated(side, plain)
            measured = whole_call(inputs, label, side, setup, estimate)
            mark = " (auto)" if side == cost.plan.mode else ""
            lines.append(
                f"| {label} | {len(layers)} | {side}{mark} | {cost.plan.products(side)} | {cost.plan.passes(side)} | "
                f"{pass_s:.3f} | {estimate:.1f} | {measured} | {sampled_peak} | {cost.relative_difference:.1e} |"
            )
            print(lines[-1], flush=True)


def whole_call(inputs: ScoreInputs, label: str, side: str, setup: Setup, estimate: float) -> str:
    """Seconds and peak memory of one whole call of `side` on layer set `label`, or why it was skipped."""
    if estimate > setup.left() / 2:
        return f"skipped ({estimate:.0f} s > half of the {max(setup.left(), 0):.0f} s left)"
    reset_peak(setup)
    try:
        (call,) = full_calls(inputs, setup.chunk, [label], setup.sync, sides=(side,))
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return runs_failure(setup)
    return f"{call.seconds[side]:.1f} ({peak_memory(setup)})"


def machine(setup: Setup) -> str:
    gpu = torch.cuda.get_device_name(setup.device) if setup.device.type == "cuda" else "none"
    return (
        f"device {setup.device} ({gpu}); {platform.machine()}, {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}; {setup.label}; {setup.steps} inference steps in section 1"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --size tiny: the CPU test)")
    parser.add_argument("--size", choices=["sd15", "tiny"], default="sd15")
    parser.add_argument("--folder", type=Path, help=f"an SD1.5-shaped diffusers folder (default: {DEFAULT_DIR})")
    parser.add_argument("--steps", type=int, default=50, help="sampling.num_inference_steps of section 1")
    parser.add_argument("--rows", help="comma-separated conf/row names (default: every row)")
    parser.add_argument("--samples", type=int, default=2, help="samples per row (the first pays one-off costs)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions of section 2")
    parser.add_argument("--chunk", type=int, default=8, help="score.general_chunk_size of section 3")
    parser.add_argument("--sets", help="comma-separated layer sets of section 3 (default: last, all, every res<k>)")
    parser.add_argument("--budget-s", type=float, default=420, help="whole calls of section 3 stop being run then")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 with --device cpu)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "perf" / "gpu.md")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device; on a CPU machine use --device cpu --size tiny")
    if args.threads or args.device == "cpu":  # a second thread on shared cores can be many times slower
        torch.set_num_threads(args.threads or 1)
    start = time.monotonic()
    setup = make_setup(args, start)
    rows = args.rows.split(",") if args.rows else sorted(p.stem for p in (CONF_DIR / "row").glob("*.yaml"))
    cfg = compose_row(setup)
    backbone = build(cfg.model)
    dataset = build(cfg.dataset, images_per_subcategory=1, subcategories=["forest"])
    reference = dataset.references()[0]
    lines = ["# The prepared GPU measurement (`python -m bench.perf gpu`)", "", machine(setup)]
    print(lines[-1], flush=True)
    call = call_inputs(backbone, reference, setup.device)
    scoring_part(backbone, call, setup, args.repeats, lines)
    general_part(backbone, call, setup, args.sets.split(",") if args.sets else None, lines)
    rows_part(backbone, reference, setup, rows, args.samples, lines)
    lines += ["", f"Whole run: {(time.monotonic() - start) / 60:.1f} min (model loading and folder check included)."]
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
