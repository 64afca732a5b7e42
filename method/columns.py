"""The general path's forward mode: Grad-SAM scores from batched JVPs over the Jacobian's columns.

The Jacobian of the scored target y [M = C*h*w rows] with respect to the subject columns of the chosen
layers' attention probabilities has one column per (layer l, head h, query q, subject token s):

    J[:, (l, h, q, s)] = d y / d A_l[h, q, s]
                       = the JVP of the UNet with the tangent e_(h, q, s) added to A_l (A_l's own
                         position in the forward pass: later layers see the change, as in reverse mode)
    S_s[m]             = sum_{l, h, q} A_l[h, q, s] T(factor * J[m, (l, h, q, s)])

so each column's product is used on its own and the Jacobian is never stored. A pass is one forward
call of the UNet under `torch.func.vmap(torch.func.jvp)`: one primal computation and `chunk` tangents
(one-hot columns of one layer). Forward-mode AD has no rule for PyTorch's fused attention kernels
(SDPA's flash and memory-efficient kernels), so during these passes every other attention layer runs
diffusers' `AttnProcessor`, which computes softmax(Q K^T * scale) explicitly; the scores then agree
with the reverse mode's to float32 rounding (~1e-6 relative; tests/method/test_general_modes.py).
The reverse mode (rows) is `method.gradsam.row_path`; `method.gradsam.plan_general` picks the side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from method.attention import PROCESSOR_SUFFIX, ProbabilityProcessor, ProbabilityStore, recording_attention

if TYPE_CHECKING:  # annotations only (importing diffusers costs seconds)
    from diffusers import UNet2DConditionModel

    from method.gradsam import JacobianPass


class PerturbedProbabilities(ProbabilityProcessor):
    """Explicit attention whose probabilities get `delta` [H, N, T] added at the subject columns."""

    def __init__(self, name: str, positions: torch.Tensor):
        super().__init__(name, ProbabilityStore())
        self.positions = positions
        self.delta: torch.Tensor | None = None  # set for the duration of one forward call

    def _record(self, probs: torch.Tensor, value: torch.Tensor, batch: int, heads: int) -> torch.Tensor:
        probs = probs.view(batch, heads, *probs.shape[1:])  # [1, H, N, K]
        if self.delta is None:
            return probs
        return probs.index_add(-1, self.positions, self.delta[None])  # A + delta at the columns s


@contextmanager
def perturbing(unet: UNet2DConditionModel, name: str, positions: torch.Tensor) -> Iterator[PerturbedProbabilities]:
    """`name` gets a PerturbedProbabilities, every other attention layer diffusers' explicit AttnProcessor;
    the previous processors come back on exit, also after an exception."""
    from diffusers.models.attention_processor import AttnProcessor  # here: importing diffusers costs seconds

    original = dict(unet.attn_processors)
    key = name + PROCESSOR_SUFFIX
    if key not in original:
        raise KeyError(f"no attention processor named {key}")
    perturbed = PerturbedProbabilities(name, positions)
    unet.set_attn_processor({k: perturbed if k == key else AttnProcessor() for k in original})
    try:
        yield perturbed
    finally:
        unet.set_attn_processor(dict(original))


def subject_attention(jacobian: JacobianPass) -> dict[str, torch.Tensor]:
    """A_l[h, q, s] [H, N_l, T] of every layer of the pass, from one recording forward call (no graph)."""
    unet, (z, cond) = jacobian.inputs.unet, jacobian.forward_inputs()
    with recording_attention(unet, jacobian.layers) as store, torch.no_grad():
        unet(z, jacobian.inputs.timestep, encoder_hidden_states=cond)
    return {name: store.records[name].probs[0][..., jacobian.positions] for name in jacobian.layers}


def column_path(jacobian: JacobianPass, chunk_size: int) -> dict[str, torch.Tensor]:
    """Per-layer scores {name: [T, M]} from batched JVPs, `chunk_size` columns of one layer per pass."""
    return {
        name: layer_columns(jacobian, name, weights, chunk_size)
        for name, weights in subject_attention(jacobian).items()
    }


def layer_columns(jacobian: JacobianPass, name: str, weights: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """S_s [T, M] of one layer: column c = (h*N + q)*T + s of its subject block weights [H, N, T]."""
    tokens, count = weights.shape[-1], weights.numel()
    token_of = torch.arange(tokens, device=weights.device).repeat(count // tokens)  # [H*N*T]: c -> s
    flat = weights.flatten()  # A_l[h, q, s] in column order
    scores = torch.zeros(tokens, jacobian.size, dtype=torch.float32, device=weights.device)
    with column_products(jacobian, name) as products:
        for start in range(0, count, chunk_size):
            stop = min(start + chunk_size, count)
            columns = products(one_hot_columns(start, stop, weights)) * jacobian.factor  # [k, M]
            columns = jacobian.basis.mix(columns)
            scores.index_add_(0, token_of[start:stop], flat[start:stop, None] * jacobian.transform(columns))
    return scores


@contextmanager
def column_products(jacobian: JacobianPass, name: str) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """Inside the block: tangents [k, H, N, T] on layer `name`'s subject columns -> d eps_cond / d A, [k, M],
    one batched JVP pass each (the other layers run explicit attention until the block ends)."""
    unet, (z, cond), t = jacobian.inputs.unet, jacobian.forward_inputs(), jacobian.inputs.timestep
    with perturbing(unet, name, jacobian.positions) as layer:

        def eps_of(delta: torch.Tensor) -> torch.Tensor:  # eps_cond [M] with A_l + delta at the columns
            layer.delta = delta
            try:
                return unet(z, t, encoder_hidden_states=cond).sample.float().flatten()
            finally:
                layer.delta = None

        yield lambda tangents: batched_jvp(eps_of, torch.zeros_like(tangents[0]), tangents)


def one_hot_columns(start: int, stop: int, like: torch.Tensor) -> torch.Tensor:
    """Unit tangents of columns start..stop-1 of `like` [H, N, T] (flattened order): [k, H, N, T]."""
    tangents = torch.zeros(stop - start, like.numel(), dtype=like.dtype, device=like.device)
    tangents[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
    return tangents.view(stop - start, *like.shape)


def batched_jvp(
    fn: Callable[[torch.Tensor], torch.Tensor], primal: torch.Tensor, tangents: torch.Tensor
) -> torch.Tensor:
    """fn's JVPs at `primal` along each of `tangents` [k, ...]: one vmapped pass [k, M] (a loop if vmap fails)."""

    def along(tangent: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(fn, (primal,), (tangent,))[1]

    try:
        return torch.func.vmap(along)(tangents)
    except (RuntimeError, NotImplementedError):  # an op without a batching rule: same numbers, slower
        return torch.stack([along(tangent) for tangent in tangents])
