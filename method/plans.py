"""The general path's cost, counted before anything runs: both sides of one scoring call's Jacobian.

The Jacobian of the scored target [M = C*h*w rows] with respect to the subject columns of the chosen
layers' attention probabilities [sum over layers of heads x queries x subject tokens] is computed
exactly from either side (method.gradsam.general_path):

    rows     one VJP per output element: ceil(M / chunk) batched backward passes
    columns  one JVP per (layer, head, query, token): sum_l ceil(columns_l / chunk) batched forward passes

`score.general_mode=auto` takes the side with fewer estimated forward-equivalents (`GeneralPlan.
forward_equivalents`: products weighted by their measured cost, plus the columns' primal forward per pass).
`score.general_chunk_size=auto` takes `auto_chunk` products per pass. `describe_general_plans` is what
`dry_run=true` prints for every layer set of the model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from method.attention import layer_resolutions, resolve_layers
from method.tail import TailNotApplicable, tail_modules

if TYPE_CHECKING:  # annotations only (importing diffusers costs seconds)
    from diffusers import UNet2DConditionModel

# Estimated cost of one product in conditional UNet forwards at batch 1, measured on the CPU on the toy UNet
# (res8, one subject token, interleaved in one process; docs/method.md "Cost"): a VJP row about half a forward
# (the backward needs input gradients only and runs the fused attention kernels), a JVP column about one
# (forward-mode attention runs unfused, explicit softmax). A columns pass also recomputes the primal forward.
ROW_COST, COLUMN_COST = 0.5, 1.0
SIDES = ("rows", "columns")
# score.general_chunk_size=auto: the largest power of two up to AUTO_CHUNK_CAP whose explicit attention
# probabilities fit AUTO_CHUNK_BYTES at the UNet's largest attention map (a columns pass holds heads x queries x
# keys floats per product there): 8 at SD1.5's 512 px (8 heads, 4096 x 4096: 512 MiB a product), the cap on the
# toy model (2 heads, 256 x 256). On the toy model's res8 set 32-128 columns a pass took half the time of 8
# (fewer primal forwards, less per-pass overhead; bench.perf gradsam); beyond 64 nothing more was gained.
AUTO_CHUNK_BYTES = 4 * 2**30
AUTO_CHUNK_CAP = 64
TEXT_TOKENS = 77  # the keys of a cross-attention map (CLIP's window)


@dataclass(frozen=True)
class GeneralPlan:
    """The general path's two exact sides for one scoring call, and the one taken (`mode`).

    A pass is one batched UNet call of up to `chunk` products; a columns pass never mixes layers.
    """

    rows: int  # M = C*h*w output elements
    columns: dict[str, int]  # layer -> heads x queries x subject tokens, in execution order
    chunk: int  # products per batched pass (score.general_chunk_size)
    mode: str  # rows or columns

    def passes(self, mode: str | None = None) -> int:
        """Batched passes of `mode` (default: the one taken)."""
        if (mode or self.mode) == "rows":
            return math.ceil(self.rows / self.chunk)
        return sum(math.ceil(count / self.chunk) for count in self.columns.values())

    def products(self, mode: str | None = None) -> int:
        """VJPs (rows) or JVPs (columns) of `mode`."""
        return self.rows if (mode or self.mode) == "rows" else sum(self.columns.values())

    def forward_equivalents(self, mode: str | None = None) -> float:
        """Estimated cost in conditional UNet forwards: one recording forward and the products (ROW_COST,
        COLUMN_COST each), plus for columns one primal forward per pass."""
        mode = mode or self.mode
        if mode == "rows":
            return 1 + self.rows * ROW_COST
        return 1 + self.passes(mode) + self.products(mode) * COLUMN_COST


def layer_queries(unet: UNet2DConditionModel, height: int, width: int) -> dict[str, int]:
    """Cross-attention layer -> its queries (h_l x w_l positions of its map) on a `height` x `width` latent."""
    sides = zip(layer_resolutions(unet, height).items(), layer_resolutions(unet, width).values(), strict=True)
    return {name: rows * cols for (name, rows), cols in sides}


def auto_chunk(unet: UNet2DConditionModel, height: int, width: int) -> int:
    """Products per batched pass for `score.general_chunk_size=auto` on a `height` x `width` latent: the largest
    power of two <= AUTO_CHUNK_CAP whose float32 attention probabilities [k, heads, N, max(N, 77)] at the UNet's
    largest map (self-attention: N x N) fit AUTO_CHUNK_BYTES; at least 1."""
    largest = max(
        unet.get_submodule(name).heads * n * max(n, TEXT_TOKENS)
        for name, n in layer_queries(unet, height, width).items()
    )
    chunk = 1
    while chunk * 2 <= AUTO_CHUNK_CAP and chunk * 2 * largest * 4 <= AUTO_CHUNK_BYTES:
        chunk *= 2
    return chunk


def plan_general(
    unet: UNet2DConditionModel,
    layers: Sequence[str],
    grid: tuple[int, int, int],
    tokens: int,
    chunk: int | str,
    mode: str = "auto",
) -> GeneralPlan:
    """Both sides for `layers` on a (C, h, w) latent with `tokens` subject columns, counted without running the
    UNet; `chunk` products per pass (auto: `auto_chunk`); `mode` auto takes the side with fewer estimated
    forwards (rows on a tie), rows or columns forces one."""
    channels, height, width = grid
    chunk = auto_chunk(unet, height, width) if chunk == "auto" else int(chunk)
    queries = layer_queries(unet, height, width)
    columns = {name: unet.get_submodule(name).heads * queries[name] * tokens for name in layers}
    plan = GeneralPlan(channels * height * width, columns, chunk, "rows")
    cheaper = plan.forward_equivalents("columns") < plan.forward_equivalents("rows")
    if mode == "columns" or (mode == "auto" and cheaper):
        return GeneralPlan(plan.rows, columns, chunk, "columns")
    return plan


def layer_sets(unet: UNet2DConditionModel, latent_size: int, configured: str | Sequence[str]) -> dict[str, list[str]]:
    """`last`, `all`, every `res<k>` (largest maps first) and the configured set if it is none of these."""
    sides = sorted(set(layer_resolutions(unet, latent_size).values()), reverse=True)
    names = ["last", "all", *(f"res{k}" for k in sides)]
    sets = {name: resolve_layers(unet, name, latent_size) for name in names}
    chosen = resolve_layers(unet, configured, latent_size)
    if chosen not in sets.values():
        sets["configured"] = chosen
    return sets


def describe_general_plans(
    unet: UNet2DConditionModel,
    grid: tuple[int, int, int],
    tokens: Sequence[int],
    chunk: int | str,
    mode: str = "auto",
    configured: str | Sequence[str] = "last",
    path: str = "auto",
) -> str:
    """One line per layer set and subject-token count: both sides' products, passes and estimated forwards,
    and what a scoring call takes (`path` auto takes the tail path for one layer that has one)."""
    shown = f"auto = {auto_chunk(unet, *grid[1:])}" if chunk == "auto" else chunk
    lines = [
        f"general path per scoring call (score.general_chunk_size={shown}, general_mode={mode}; latent {grid}):",
        f"  {'layer set':10s} {'layers':>6s} {'T':>2s}  {'rows':>8s} {'passes':>7s} {'~fwd':>8s}  "
        f"{'columns':>8s} {'passes':>7s} {'~fwd':>8s}  takes",
    ]
    for label, layers in layer_sets(unet, grid[1], configured).items():
        for count in tokens:
            plan = plan_general(unet, layers, grid, count, chunk, mode)
            rows, columns = (side_cells(plan, side) for side in SIDES)
            taken = takes(unet, layers, plan, path)
            lines.append(f"  {label:10s} {len(layers):6d} {count:2d}  {rows}  {columns}  {taken}")
    lines.append("  (T = subject tokens of the planned prompts; ~fwd = estimated conditional UNet forwards, an order")
    lines.append("  of magnitude; `python -m bench.perf gradsam` measures the seconds of both sides)")
    return "\n".join(lines)


def side_cells(plan: GeneralPlan, side: str) -> str:
    """products, passes and estimated forwards of one side, right-aligned."""
    return f"{plan.products(side):8d} {plan.passes(side):7d} {plan.forward_equivalents(side):8.0f}"


def takes(unet: UNet2DConditionModel, layers: Sequence[str], plan: GeneralPlan, path: str) -> str:
    """`general <side>`, or `tail` where `path` (auto or tail) takes the exact tail path: one layer that has one."""
    if path != "general" and len(layers) == 1:
        try:
            tail_modules(unet, layers[0])
            return "tail (about 1.3 forwards)"
        except TailNotApplicable:
            pass
    return f"general {plan.mode}"
