"""`python -m bench.perf gradsam --scale sd15`: Grad-SAM's cost and exactness at SD1.5's real size, in one run.

On the random-weight SD1.5 folder (bench/perf/sd15_folder.py; real architecture, 64x64x4 latents at
512 px) it prints and writes to `--out`:
1. one conditional UNet forward (the unit), one exact tail scoring call in forwards, each part's share;
2. the naive per-element loop (the reference code's: one backward pass per latent element on the
   [cond; uncond] batch): `--naive-rows` rows timed, extrapolated to C*h*w rows;
3. exactness in the same run: those brute-force autograd rows against the tail call's scores;
4. gradsam / sdedit 0.9 end to end at equal steps (one 512 px image each, `--steps` inference steps,
   3 injections), projected to 45 denoising steps with the per-step time measured in the same runs;
5. the `upcast` scoring option: scores of the same call with the UNet's weights rounded to bfloat16
   (the sampling UNet cast to float32 in place, as model.gradient_unet=upcast does) against float32.
"""

from __future__ import annotations

import functools
import importlib
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from baselines.sdedit import SDEdit
from bench.config import CONF_DIR
from bench.datasets.base import WorkUnit, to_model_input
from bench.perf.general_modes import sampled_costs
from bench.perf.sd15_folder import ensure_folder
from bench.sd.diffusion import SamplingConfig, encode_text
from method.attention import recording_attention, resolve_layers
from method.config import MaskConfig, ScoreConfig
from method.gradsam import ScoreInputs, scores_and_path
from method.masks import union_mask
from method.plans import layer_sets
from method.sampler import GradSAM
from method.tokens import subject_tokens

TIMES: dict[str, float] = defaultdict(float)
PAPER_STEPS = 45  # 50 steps at strength 0.9
T_SCORE = 780  # the paper's first injection timestep


def timed(name: str, fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name] += time.perf_counter() - start

    return wrapper


def instrument(unet) -> Callable[[], None]:
    """Time the tail call's parts (module attributes wrapped); returns the undo."""
    tail, post, gradsam = (importlib.import_module(f"method.{m}") for m in ("tail", "post_jacobian", "gradsam"))
    saved = [(unet, "forward", unet.forward)]
    unet.forward = timed("UNet forward with attention recording", unet.forward)
    parts = [("position_jacobian", "d u / d A (position_jacobian)"), ("linearize_head", "head linearisation")]
    for name, part in parts:
        saved.append((tail, name, getattr(tail, name)))
        setattr(tail, name, timed(part, getattr(tail, name)))
    for module, name, part in [
        (tail, "check_rebuilt", "rebuilt-tail check"),
        (tail, "check_rows", "head rows vs autograd (once per head)"),
        (post.HeadProducts, "__init__", "head products setup"),
        (post.HeadProducts, "contract", "row products + weighted sums"),
    ]:
        saved.append((module, name, getattr(module, name)))
        setattr(module, name, timed(part, getattr(module, name)))
    saved.append((gradsam, "tail_scores", gradsam.tail_scores))
    gradsam.tail_scores = tail.tail_scores

    def undo() -> None:
        for module, name, value in reversed(saved):
            if name == "forward":
                del module.forward
            else:
                setattr(module, name, value)

    return undo


def load_backbone(folder: Path):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("bench", overrides=["device=cpu", "model=sd15", f"model.path={folder}"])
        data = compose(
            "bench",
            overrides=[
                "dataset=synthetic_places",
                "dataset.images_per_subcategory=1",
                "dataset.subcategories=[forest]",
            ],
        )
    backbone = instantiate(cfg.model, _convert_="all")
    return backbone, instantiate(data.dataset, _convert_="all").references()[0]


def naive_rows(unet, z, t, cond, uncond, positions, rows: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """Brute-force scores [S, len(rows)] (one autograd.grad per row, [cond; uncond] batch), forward s, s per row."""
    layer = resolve_layers(unet, "last")[0]
    with recording_attention(unet, [layer]) as store, torch.enable_grad():
        start = time.perf_counter()
        eps = unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([cond, uncond])).sample[0].flatten()
        forward_s = time.perf_counter() - start
        probs = store.records[layer].probs  # [2, H, N, 77]
        a = probs.detach()[0][..., positions]
        out = torch.zeros(len(positions), len(rows))
        start = time.perf_counter()
        for i, m in enumerate(rows.tolist()):
            (grad,) = torch.autograd.grad(eps[m], probs, retain_graph=True)
            out[:, i] = (a * grad[0][..., positions].abs()).sum(dim=(0, 1))
        per_row = (time.perf_counter() - start) / len(rows)
    return out, forward_s, per_row


def score(unet, z, t, cond, positions):
    return scores_and_path(ScoreInputs(unet, z, t, cond, tuple(positions)), ScoreConfig(path="tail"))


@dataclass(frozen=True)
class Call:
    """One scoring call's inputs: z_t [1, 4, 64, 64] at t = T_SCORE, the prompt's and the empty prompt's states."""

    z: torch.Tensor
    t: torch.Tensor
    cond: torch.Tensor
    uncond: torch.Tensor
    positions: list[int]
    text: str


def call_inputs(backbone, prompt) -> Call:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, backbone.latent_size, backbone.latent_size, generator=g)
    cond, uncond = encode_text(backbone, [prompt.text]).float(), encode_text(backbone, [""]).float()
    positions = list(subject_tokens(backbone.tokenizer, prompt.text, prompt.subject).positions)
    return Call(z, torch.tensor(T_SCORE), cond, uncond, positions, prompt.text)


def plain_forward(unet, call: Call) -> float:
    """Seconds of one plain no-grad conditional forward (diffusers' default attention, nothing recorded)."""
    start = time.perf_counter()
    with torch.no_grad():
        unet(call.z, call.t, encoder_hidden_states=call.cond)
    return time.perf_counter() - start


def scoring_call(unet, call: Call) -> tuple[float, dict[str, float], torch.Tensor, str]:
    """Seconds of one exact tail scoring call, its parts' seconds, its scores and path."""
    TIMES.clear()
    undo = instrument(unet)
    try:
        start = time.perf_counter()
        scores, path = score(unet, call.z, call.t, call.cond, call.positions)
        return time.perf_counter() - start, dict(TIMES), scores, path
    finally:
        undo()


def interleaved_part(unet, call: Call, repeats: int, lines: list[str]) -> tuple[torch.Tensor, float]:
    """Item 1: plain forwards and scoring calls interleaved (a load swing hits both); the median ratio, its range."""
    first, _, scores, path = scoring_call(unet, call)  # pays the once-per-head check of the closed-form head rows
    pairs = []
    for _ in range(repeats):
        forward = plain_forward(unet, call)
        total, parts, scores, path = scoring_call(unet, call)
        pairs.append((forward, total, parts))
    size = call.z.numel()
    lines += [
        f"latent {tuple(call.z.shape[1:])} = {size} rows, t = {T_SCORE}, {call.text!r} (subject columns "
        f"{call.positions}), torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}",
        f"first scoring call (path {path}, with the once-per-head check of the head rows): {first:.1f} s",
        f"{repeats} interleaved pairs (plain no-grad conditional forward, then one scoring call):",
    ]
    ratios = [total / forward for forward, total, _ in pairs]
    for (forward, total, parts), ratio in zip(pairs, ratios, strict=True):
        inner = parts["UNet forward with attention recording"]
        lines.append(
            f"  forward {forward:6.1f} s   call {total:6.1f} s = {ratio:.2f} plain forwards "
            f"({total / inner:.2f} of the forward inside it, which took {inner / forward:.2f} plain forwards)"
        )
    lines.append(
        f"scoring call / plain forward: median {statistics.median(ratios):.2f}, "
        f"range {min(ratios):.2f}-{max(ratios):.2f}"
    )
    _, total, parts = pairs[ratios.index(statistics.median_low(ratios))]
    lines.append(f"parts of the median call ({total:.1f} s):")
    for name, secs in parts.items():
        lines.append(f"  {name:40s} {secs:7.2f} s  {100 * secs / total:5.1f}%")
    rest = total - sum(parts.values())
    lines.append(f"  {'rest (tail assembly, chunk loop)':40s} {rest:7.2f} s  {100 * rest / total:5.1f}%")
    return scores, total


def naive_part(unet, call: Call, scores: torch.Tensor, naive_count: int, call_s: float, lines: list[str]) -> None:
    """Items 2-3: the naive loop on `naive_count` rows, extrapolated; those rows against the call's scores."""
    size = call.z.numel()
    rows = sample_rows(size, naive_count)
    brute, naive_forward, per_row = naive_rows(unet, call.z, call.t, call.cond, call.uncond, call.positions, rows)
    naive_total = naive_forward + per_row * size
    lines += [
        f"naive loop: forward {naive_forward:.1f} s + {per_row:.2f} s per row, timed on {len(rows)} rows; "
        f"extrapolated to {size} rows: {naive_total:.0f} s = {naive_total / call_s:.0f}x the tail call",
    ]
    ours = scores.flatten(1)[:, rows]
    diff = (ours - brute).abs().max().item()
    rel_row = ((ours - brute).abs() / brute.abs().clamp_min(1e-30)).max().item()
    lines.append(
        f"exactness on those {len(rows)} rows (brute-force autograd): max |diff| {diff:.3g}, "
        f"relative to max |score| {diff / brute.abs().max().item():.3g}, largest per-element relative {rel_row:.3g}"
    )


def sample_rows(size: int, count: int) -> torch.Tensor:
    """Corners and the middle, then seeded random rows."""
    fixed = torch.tensor([0, 1, size // 2, size - 1])
    rest = torch.randperm(size, generator=torch.Generator().manual_seed(1))[: max(0, count - len(fixed))]
    return torch.cat([fixed, rest])[:count]


def end_to_end(backbone, reference, steps: int, lines: list[str]) -> None:
    """Item 4: one image each; the per-step time from the guided UNet calls of the same run."""
    diffusion = importlib.import_module("bench.sd.diffusion")
    sampling = SamplingConfig(num_inference_steps=steps)
    image = to_model_input(reference.load(), backbone.image_size)[0]
    sample = WorkUnit(reference, reference.prompts[0], 51828).sample(image)
    length = int(steps * 0.9)  # denoising steps at strength 0.9 (bench.sd.diffusion.truncated_timesteps)
    methods = {"sdedit_0.9": SDEdit(strength=0.9), "gradsam": GradSAM(injection_indices=tuple(range(1, 4)))}
    measured = {}
    original = diffusion.guided_noise
    for name, method in methods.items():
        TIMES.clear()
        diffusion.guided_noise = timed("guided", original)
        try:
            start = time.perf_counter()
            method.generate(backbone, [sample], sampling)
            total = time.perf_counter() - start
        finally:
            diffusion.guided_noise = original
        measured[name] = (total, TIMES["guided"] / length)
    project(measured, steps, length, backbone.image_size, lines)


def project(measured: dict[str, tuple[float, float]], steps: int, length: int, size: int, lines: list[str]) -> None:
    """Each method's time = its own non-step work + 45 guided steps; both steps are the same UNet calls, so
    one per-step time (the mean of the two runs') serves both and load swings between the runs cancel."""
    step = sum(s for _, s in measured.values()) / len(measured)
    lines.append(f"end to end, one {size} px image, {steps} inference steps at strength 0.9 = {length} denoising steps")
    projected = {}
    for name, (total, own_step) in measured.items():
        other = total - length * own_step  # VAE, text encoder, and for gradsam the 3 scoring calls and masks
        projected[name] = other + PAPER_STEPS * step
        lines.append(
            f"  {name:10s} {total:7.1f} s ({own_step:.1f} s per guided step, {other:.1f} s of other work); "
            f"projected to {PAPER_STEPS} steps at {step:.1f} s per step: {projected[name]:.0f} s"
        )
    lines.append(f"  load average after: {os.getloadavg()[0]:.1f}")
    ratio = measured["gradsam"][0] / measured["sdedit_0.9"][0]
    ahead = projected["gradsam"] / projected["sdedit_0.9"]
    lines.append(f"  gradsam / sdedit 0.9: {ratio:.2f} measured; {ahead:.3f} projected to 45 steps, 3 injections")


def upcast_part(backbone, scores: torch.Tensor, call: tuple, lines: list[str]) -> None:
    """Item 5: the same call with the UNet's weights in bfloat16 (cast to float32 in place for the call)."""
    z, t, cond, positions = call
    backbone.unet.to(torch.bfloat16)
    low, _ = score(backbone.unet, z, t, cond, positions)
    assert backbone.unet.dtype == torch.bfloat16  # cast back after the call
    diff = (low - scores).abs()
    masks = [union_mask(s.sum(dim=0, keepdim=True), MaskConfig()) for s in (scores, low)]
    agree = (masks[0] == masks[1]).float().mean().item()
    lines.append(
        "upcast scoring (bfloat16 weights, float32 arithmetic) vs float32 weights, same call: max |diff| / max |score| "
        f"{diff.max().item() / scores.abs().max().item():.3g}, median relative "
        f"{(diff / scores.abs().clamp_min(1e-30)).median().item():.3g}; "
        f"default masks agree on {100 * agree:.2f}% of elements"
    )


def general_part(backbone, call: Call, sets: list[str], products: int, lines: list[str]) -> None:
    """Item 4: the general path's two sides per layer set, from `products` products of each, extrapolated."""
    unet = backbone.unet
    inputs = ScoreInputs(unet, call.z, call.t, call.cond, tuple(call.positions))
    forward = plain_forward(unet, call)
    lines.append(
        f"general path at this size (score.general_chunk_size={products}): one batched pass of {products} rows and "
        f"one of {products} columns (of the set's earliest layer) per layer set, whole calls extrapolated from them; "
        f"plain forward {forward:.1f} s"
    )
    for label, layers in layer_sets(unet, backbone.latent_size, "last").items():
        if label not in sets:
            continue
        cost = sampled_costs(inputs, label, layers, products)
        plan = cost.plan
        lines.append(
            f"  {label}: {len(layers)} layer(s); rows {plan.products('rows')} in {plan.passes('rows')} passes, "
            f"columns {plan.products('columns')} in {plan.passes('columns')} passes (auto: {plan.mode})"
        )
        lines.append(
            f"    rows: forward with graph {cost.recording_forward_s:.1f} s, one pass of {products} rows "
            f"{cost.row_pass_s:.1f} s ({cost.row_pass_s / products / forward:.2f} forwards a row); "
            f"whole call extrapolated {cost.extrapolated('rows', forward):.0f} s"
        )
        lines.append(
            f"    columns: one pass of {products} columns {cost.column_pass_s:.1f} s (primal forward included; "
            f"{(cost.column_pass_s - forward) / products / forward:.2f} forwards a column after it); "
            f"whole call extrapolated {cost.extrapolated('columns', forward):.0f} s"
        )
        lines.append(
            f"    the {products}x{products} Jacobian entries both passes computed: max |rows - columns| / max |J| "
            f"{cost.relative_difference:.2g}"
        )


def run(args) -> list[str]:
    folder = ensure_folder()
    backbone, reference = load_backbone(folder)
    lines = [f"SD1.5 architecture, random weights ({folder.name}), float32 on the CPU"]
    call = call_inputs(backbone, reference.prompts[0])
    scores, call_s = interleaved_part(backbone.unet, call, args.repeats, lines)
    print("\n".join(lines), flush=True)
    if args.naive_rows:
        naive_part(backbone.unet, call, scores, args.naive_rows, call_s, lines)
        print("\n".join(lines[-2:]), flush=True)
    if args.general_sets:
        general_part(backbone, call, args.general_sets.split(","), args.general_products, lines)
        print("\n".join(lines[-1 - 5 * len(args.general_sets.split(",")) :]), flush=True)
    if args.steps:
        end_to_end(backbone, reference, args.steps, lines)
        print("\n".join(lines[-5:]), flush=True)
    upcast_part(backbone, scores, (call.z, call.t, call.cond, call.positions), lines)
    print(lines[-1], flush=True)
    return lines
