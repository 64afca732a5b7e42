"""The general path's two sides, timed: rows (batched VJPs) and columns (batched JVPs) per layer set.

Used by `python -m bench.perf gradsam` (the toy model: whole scoring calls; SD1.5 size: a few products of each
side, extrapolated) and `python -m bench.perf gpu`. Two measurements:

    full_calls      one whole `importance_scores_per_layer` call per layer set and side, the two sides' maps
                    compared in the same run (largest difference relative to the largest score)
    sampled_costs   one batched pass of k products of each side (rows spread over the latent; columns of the
                    set's earliest layer, whose tangents cross the most of the UNet), and the k x k Jacobian
                    entries both passes share, compared: the same numbers from the two sides
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from method.attention import recording_attention
from method.columns import column_products, one_hot_columns
from method.gradsam import JacobianPass, ScoreInputs, batched_vjp, float32, importance_scores_per_layer, score_config
from method.plans import SIDES, GeneralPlan, layer_sets


def clock(sync: Callable[[], None] | None = None) -> float:
    """perf_counter after the device has finished its queued work (`sync`: e.g. torch.cuda.synchronize)."""
    if sync is not None:
        sync()
    return time.perf_counter()


@dataclass
class FullCall:
    """One layer set: both sides' plans, seconds of one whole scoring call each, and their agreement."""

    label: str
    plan: GeneralPlan
    seconds: dict[str, float]
    relative_difference: float  # max |rows - columns| / max |rows| over every layer's map


def full_calls(
    inputs: ScoreInputs,
    chunk: int,
    sets: list[str] | None = None,
    sync: Callable[[], None] | None = None,
    sides: tuple[str, ...] = SIDES,
) -> list[FullCall]:
    """Each layer set (default: last, all, every res<k>) scored whole by each of `sides`, timed; with both
    sides, their maps compared (else the difference is NaN)."""
    unet, size = inputs.unet, inputs.latents.shape[-2]
    out = []
    for label, layers in layer_sets(unet, size, "last").items():
        if sets is not None and label not in sets:
            continue
        config = score_config({"layers": tuple(layers), "general_chunk_size": chunk})
        seconds, maps = {}, {}
        for side in sides:
            start = clock(sync)
            maps[side] = importance_scores_per_layer(inputs, {**vars(config), "general_mode": side})
            seconds[side] = clock(sync) - start
        plan = JacobianPass.of(inputs, config).plan(config)
        out.append(FullCall(label, plan, seconds, relative_difference(maps, layers)))
    return out


def relative_difference(maps: dict[str, dict[str, torch.Tensor]], layers: list[str]) -> float:
    """max |rows - columns| / max |rows| over every layer's map; NaN unless both sides ran."""
    if set(maps) != set(SIDES):
        return float("nan")
    diff = max((maps["rows"][n] - maps["columns"][n]).abs().max().item() for n in layers)
    return diff / max(max(maps["rows"][n].abs().max().item() for n in layers), 1e-30)


@dataclass
class SampledCosts:
    """One batched pass of k products of each side for one layer set, and the entries both computed."""

    label: str
    plan: GeneralPlan
    recording_forward_s: float  # the rows' forward with the autograd graph
    row_pass_s: float  # one batched backward pass of k rows
    column_pass_s: float  # one batched JVP pass of k columns (its primal forward included)
    k: int
    relative_difference: float  # max |J_rows - J_columns| / max |J| over the k x k shared entries

    def extrapolated(self, side: str, plain_forward_s: float) -> float:
        """Seconds of a whole call at chunk k: one forward plus every pass (columns: primal forwards included)."""
        if side == "rows":
            return self.recording_forward_s + self.plan.passes("rows") * self.row_pass_s
        return plain_forward_s + self.plan.passes("columns") * self.column_pass_s


def sampled_costs(
    inputs: ScoreInputs, label: str, layers: list[str], k: int, sync: Callable[[], None] | None = None
) -> SampledCosts:
    """Time k rows and k columns (of the set's earliest layer) of `layers`; compare their shared entries. A side
    with fewer than k rows or columns is timed on all of them (one pass covers it at chunk k)."""
    config = score_config({"layers": tuple(layers), "general_chunk_size": k})
    jacobian = JacobianPass.of(inputs, config)
    z, cond = jacobian.forward_inputs()
    size, positions = jacobian.size, jacobian.positions
    k_rows = min(k, size)
    rows_at = [(2 * i + 1) * size // (2 * k_rows) for i in range(k_rows)]  # spread over the latent
    with float32(inputs.unet), torch.enable_grad(), recording_attention(inputs.unet, jacobian.layers) as store:
        start = clock(sync)
        y = inputs.unet(z, inputs.timestep, encoder_hidden_states=cond).sample.float().flatten()
        forward_s = clock(sync) - start
        probs = [store.records[name].probs for name in jacobian.layers]
        cotangents = torch.zeros(k_rows, size, device=y.device)
        cotangents[torch.arange(k_rows), rows_at] = 1.0
        start = clock(sync)
        grads = batched_vjp(y, probs, cotangents)
        row_s = clock(sync) - start
    first = grads[0][:, 0][..., positions].flatten(1)  # d y_m / d A_l0 at the subject columns [k_rows, H*N*T]
    weights = probs[0].detach()[0][..., positions]  # [H, N, T]
    k_columns = min(k, weights.numel())
    start_column = min(weights.numel() // 2, weights.numel() - k_columns)  # from the middle, inside the layer
    columns_at = range(start_column, start_column + k_columns)
    with float32(inputs.unet), column_products(jacobian, jacobian.layers[0]) as products:
        start = clock(sync)
        columns = products(one_hot_columns(columns_at.start, columns_at.stop, weights))  # [k_columns, M]
        column_s = clock(sync) - start
    from_rows, from_columns = first[:, list(columns_at)], columns[:, rows_at].T  # [k_rows, k_columns] each
    scale = max(first.abs().max().item(), columns.abs().max().item(), 1e-30)
    diff = (from_rows - from_columns).abs().max().item() / scale
    plan = jacobian.plan(config)
    return SampledCosts(label, plan, forward_s, row_s, column_s, k, diff)
