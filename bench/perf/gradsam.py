"""`python -m bench.perf.gradsam`: what the exact fast Jacobian buys (docs/paper.md B12), on the tiny offline model.

`--scale sd15` measures instead at SD1.5's real size (bench/perf/gradsam_sd15.py: the scoring call in
UNet forwards with each part's share, fast vs naive per row, exactness on sampled rows, gradsam / sdedit
0.9 end to end projected to 45 steps, the upcast option's agreement) and writes results/perf/gradsam_sd15.md.

Prints, from one run:
1. Grad-SAM scores of one injection: the exact tail path (method/tail.py) and the general batched
   path against a naive per-element backward loop like the reference code's (one autograd.grad per
   latent element through the UNet output, on the [cond; uncond] batch), with the largest difference;
2. the wall time of one gradsam image against one sdedit image with the same steps (strength 0.9).

A script, not a test: timings depend on the machine and its load; each figure is the best of
`--repeats` runs after warm-up calls (the naive loop warms itself up: it is one call of many passes).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from baselines.sdedit import SDEdit
from bench.config import CONF_DIR, REPO_ROOT
from bench.datasets.base import WorkUnit, to_model_input
from bench.records import atomic_write_text
from bench.sd.diffusion import SamplingConfig, encode_text
from method.attention import recording_attention, resolve_layers
from method.gradsam import ScoreInputs, scores_and_path
from method.sampler import GradSAM
from method.tokens import subject_tokens


def best_time(fn: Callable[[], object], repeats: int, warmup: int = 0) -> tuple[float, object]:
    """Smallest wall time of `repeats` calls after `warmup` untimed ones, and the last result."""
    for _ in range(warmup):  # first calls pay one-off costs (kernel selection, autograd caches)
        fn()
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def naive_scores(unet, z, t, cond, uncond, positions: list[int]) -> torch.Tensor:
    """The reference code's computation with one backward pass per latent element (identity cotangents)."""
    layer = resolve_layers(unet, "last")[0]
    with recording_attention(unet, [layer]) as store, torch.enable_grad():
        eps_cond = unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([cond, uncond])).sample[0].flatten()
        probs = store.records[layer].probs  # [2, H, N, 77]
        a = probs.detach()[0][..., positions]  # [H, N, S]
        scores = torch.zeros(len(positions), eps_cond.numel())
        for m in range(eps_cond.numel()):
            (grad,) = torch.autograd.grad(eps_cond[m], probs, retain_graph=True)
            scores[:, m] = (a * grad[0][..., positions].abs()).sum(dim=(0, 1))
    return scores.view(len(positions), *z.shape[1:])


def jacobian_figures(backbone, prompt, repeats: int) -> None:
    """Time one injection's scores three ways on the backbone's latent grid and print them."""
    unet, size = backbone.unet, backbone.latent_size
    z = torch.randn(1, backbone.latent_channels, size, size)
    t = torch.tensor(800)
    cond = encode_text(backbone, [prompt.text]).float()
    uncond = encode_text(backbone, [""]).float()
    positions = list(subject_tokens(backbone.tokenizer, prompt.text, prompt.subject).positions)
    elements = z.numel()

    def forward():
        with torch.no_grad():
            unet(z, t, encoder_hidden_states=cond)

    forward_s, _ = best_time(forward, repeats, warmup=3)
    inputs = ScoreInputs(unet, z, t, cond, tuple(positions))
    fast_s, (fast, path) = best_time(lambda: scores_and_path(inputs, {"path": "tail"}), repeats, warmup=3)
    general = {"path": "general", "general_chunk_size": 64}
    general_s, (general, _) = best_time(lambda: scores_and_path(inputs, general), repeats, warmup=1)
    naive_s, naive = best_time(lambda: naive_scores(unet, z, t, cond, uncond, positions), 1)
    scale = naive.abs().max().item()

    def line(name: str, seconds: float, scores: torch.Tensor) -> str:
        diff = (scores - naive).abs().max().item()
        return (
            f"  {name:34s} {seconds:8.3f} s  {naive_s / seconds:6.1f}x faster end to end, "
            f"{(naive_s - forward_s) / max(seconds - forward_s, 1e-9):6.1f}x on the Jacobian alone; "
            f"max |diff| {diff:.2e} (relative {diff / scale:.2e})"
        )

    print(f"tiny model, {backbone.image_size} px: latent {tuple(z.shape[1:])} = {elements} elements, {prompt.text!r}")
    print(f"  {'one UNet forward pass (in each)':34s} {forward_s:8.3f} s")
    print(f"  {f'naive loop ({elements} backward passes)':34s} {naive_s:8.3f} s")
    print(line(f"exact tail path ({path})", fast_s, fast))
    print(line("general path (batched VJPs, 64 rows)", general_s, general))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=["tiny", "sd15"], default="tiny", help="the model (sd15: real size)")
    parser.add_argument("--image-sizes", default="64,128", help="tiny model resolutions (64 px -> 16x16 latent)")
    parser.add_argument("--steps", type=int, help="sampling.num_inference_steps for the image timing (tiny 50, sd15 5)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (tiny: 1, stable on a shared machine; sd15: 2)")
    parser.add_argument("--naive-rows", type=int, default=16, help="sd15: naive rows timed and checked")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "perf" / "gradsam_sd15.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or (2 if args.scale == "sd15" else 1))
    if args.scale == "sd15":
        args.steps = 5 if args.steps is None else args.steps
        write_sd15(args)
        return
    args.steps = 50 if args.steps is None else args.steps
    torch.manual_seed(0)
    print(f"torch threads: {torch.get_num_threads()}")
    sizes = [int(s) for s in args.image_sizes.split(",")]
    for image_size in sizes:
        backbone, reference = tiny_backbone(image_size)
        jacobian_figures(backbone, reference.prompts[0], args.repeats)

    # One image: gradsam against sdedit with the same 45 steps (strength 0.9), at the first size.
    backbone, reference = tiny_backbone(sizes[0])
    sampling = SamplingConfig(num_inference_steps=args.steps)
    sample = WorkUnit(reference, reference.prompts[0], 51828).sample(to_model_input(reference.load(), sizes[0])[0])
    methods = {"sdedit": SDEdit(strength=0.9), "gradsam": GradSAM()}
    best = {name: float("inf") for name in methods}
    for _ in range(args.repeats):  # interleaved, so that a load spike hits both
        for name, method in methods.items():
            seconds, _ = best_time(lambda m=method: m.generate(backbone, [sample], sampling), 1)
            best[name] = min(best[name], seconds)
    print(f"one image at {sizes[0]} px, {args.steps} steps at strength 0.9 (45 denoising steps):")
    print(f"  sdedit  {best['sdedit']:8.3f} s")
    ratio = best["gradsam"] / best["sdedit"]
    print(f"  gradsam {best['gradsam']:8.3f} s   ({ratio:.2f}x sdedit; 3 exact score passes)")


def write_sd15(args: argparse.Namespace) -> None:
    """The SD1.5-scale figures, printed and written to args.out."""
    from bench.perf.gradsam_sd15 import run  # noqa: PLC0415 (loads the 4.3 GB folder)

    start = time.perf_counter()
    lines = run(args)
    title = "# Grad-SAM at SD1.5 scale (`python -m bench.perf gradsam --scale sd15`)"
    footer = f"whole run: {(time.perf_counter() - start) / 60:.1f} min"
    atomic_write_text(args.out, "\n".join([title, "", "```", *lines, footer, "```", ""]))
    print(f"wrote {args.out}")


def tiny_backbone(image_size: int):
    """The offline tiny backbone at `image_size` and one synthetic forest reference."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "bench",
            overrides=["model=tiny", "dataset=synthetic_places", "device=cpu", f"model.image_size={image_size}"],
        )
    backbone = instantiate(cfg.model, _convert_="all")
    dataset = instantiate(cfg.dataset, _convert_="all", images_per_subcategory=1, subcategories=["forest"])
    return backbone, dataset.references()[0]


if __name__ == "__main__":
    main()
