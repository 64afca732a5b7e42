"""Exact Grad-SAM scores of the LAST cross-attention layer through the network tail (PAPER_SPEC §9, B12).

After the last cross-attention layer of an SD1 UNet, eps depends on its probabilities A only through

    A @ V -> to_out -> + residual -> norm3 -> FF -> + residual -> proj_out -> + block residual   (per position q)
          -> conv_norm_out -> SiLU -> conv_out                                                   (couples positions)

The first part acts on each query position q separately, so d u_q / d A[h, q, s] (u = hidden state
before conv_norm_out, C' channels) for ALL q comes from one forward-mode JVP per (head h, token s).
The second part (the output head) has a closed-form Jacobian, local plus GroupNorm's low-rank
coupling of all positions (method/post_jacobian.py; no locality truncation). Then

    d eps[m] / d A[h, q, s] = sum_c' (d eps[m] / d u[q, c']) (d u[q, c'] / d A[h, q, s])

exactly (the chain rule, nothing dropped), and S_s[m] = sum_{h,q} A[h,q,s] T(factor * that).
The tail inputs (V, the residuals) are captured with hooks during one ordinary forward pass; the
rebuilt tail must reproduce that pass's eps, and rows of the closed-form head Jacobian must match
autograd, before the result is trusted.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from method.post_jacobian import HeadProducts, UnsupportedHead, check_head, linearize_head

LAST_LAYER = re.compile(r"up_blocks\.(\d+)\.attentions\.(\d+)\.transformer_blocks\.(\d+)\.attn2")


class TailNotApplicable(Exception):
    """The layer is not followed by the tail this file writes out (use the general path)."""


@dataclass
class TailModules:
    unet: UNet2DConditionModel
    attn: nn.Module  # the cross-attention layer (diffusers Attention)
    block: nn.Module  # its BasicTransformerBlock
    transformer: nn.Module  # its Transformer2DModel


@dataclass
class TailInputs:
    """What the tail needs from one forward pass, for the conditional sample (batch index 0)."""

    block_residual: torch.Tensor  # hidden state the cross-attention output is added to [N, C']
    transformer_residual: torch.Tensor  # input of the Transformer2DModel [C', h, w]


def tail_modules(unet: UNet2DConditionModel, layer: str) -> TailModules:
    """The modules of `layer`'s tail; raises TailNotApplicable (with the reason) if anything else follows it."""
    match = LAST_LAYER.fullmatch(layer)
    if match is None:
        raise TailNotApplicable(f"{layer} is not an up-block cross-attention (attn2) layer")
    b, a, k = (int(g) for g in match.groups())
    up = unet.up_blocks[b]
    transformer = up.attentions[a]
    block = transformer.transformer_blocks[k]
    checks = {
        "it is not in the last up block": b == len(unet.up_blocks) - 1,
        "it is not the last attention of its block": a == len(up.attentions) - 1 == len(up.resnets) - 1,
        "it is not the last transformer block": k == len(transformer.transformer_blocks) - 1,
        "an upsampler follows it": getattr(up, "upsamplers", None) is None,
        "the transformer input is not continuous": getattr(transformer, "is_input_continuous", False),
        "the block norm is not layer_norm": getattr(block, "norm_type", None) == "layer_norm",
        "the block has positional embeddings": getattr(block, "pos_embed", None) is None,
        "the attention has a residual connection or extra norms": not block.attn2.residual_connection
        and block.attn2.spatial_norm is None
        and block.attn2.group_norm is None,
    }
    failed = [reason for reason, ok in checks.items() if not ok]
    try:
        check_head(unet.conv_norm_out, unet.conv_out)
    except UnsupportedHead as exc:
        failed.append(str(exc))
    if failed:
        raise TailNotApplicable(f"{layer}: " + "; ".join(failed))
    return TailModules(unet=unet, attn=block.attn2, block=block, transformer=transformer)


@contextmanager
def capturing_tail_inputs(mods: TailModules) -> Iterator[dict]:
    """Forward pre-hooks that keep the two residuals of the tail (removed on exit)."""
    captured: dict[str, torch.Tensor] = {}

    def keep_block_residual(module, args):
        captured["block_residual"] = args[0].detach()

    def keep_transformer_residual(module, args, kwargs):
        captured["transformer_residual"] = (args[0] if args else kwargs["hidden_states"]).detach()

    handles = [
        mods.block.norm2.register_forward_pre_hook(keep_block_residual),
        mods.transformer.register_forward_pre_hook(keep_transformer_residual, with_kwargs=True),
    ]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class Tail:
    """eps_cond as a function of the subject columns of A: eps = post(rest(attention_out(a_sub)))."""

    attention_out: Callable[[torch.Tensor], torch.Tensor]  # a_sub [H, N, S] -> hidden after attn2 + residual [N, C']
    rest: Callable[[torch.Tensor], torch.Tensor]  # [N, C'] -> u [N, C'], position by position
    post: Callable[[torch.Tensor], torch.Tensor]  # u [N, C'] -> eps [C*h*w], couples positions
    head: tuple[nn.Module | None, nn.Module | None, nn.Module]  # conv_norm_out, conv_act, conv_out
    grid: tuple[int, int, int]  # (C', h, w) of u

    def position_wise(self, a_sub: torch.Tensor) -> torch.Tensor:
        return self.rest(self.attention_out(a_sub))


def build_tail(
    mods: TailModules, inputs: TailInputs, probs: torch.Tensor, value: torch.Tensor, positions: torch.Tensor
) -> Tail:
    """The tail for the conditional sample: probs A [H, N, K], value V [H, K, d], subject columns `positions`."""
    n = probs.shape[1]
    channels, height, width = inputs.transformer_residual.shape
    rest_probs = probs.detach().clone()
    rest_probs[:, :, positions] = 0
    base = rest_probs @ value  # contribution of the other tokens [H, N, d]
    v_sub = value[:, positions, :]  # [H, S, d]
    residual = inputs.transformer_residual.reshape(channels, n).T  # [N, C']
    attn, block, transformer, unet = mods.attn, mods.block, mods.transformer, mods.unet

    # Both position-wise parts take optional leading batch dimensions (one per tangent direction).
    def attention_out(a_sub: torch.Tensor) -> torch.Tensor:
        out = base + a_sub @ v_sub  # A @ V [..., H, N, d]
        out = out.movedim(-3, -2).flatten(-2)  # batch_to_head_dim [..., N, H*d]
        out = attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor
        return out + inputs.block_residual  # [..., N, C']

    def rest(hidden: torch.Tensor) -> torch.Tensor:
        hidden = block.ff(block.norm3(hidden)) + hidden
        if transformer.use_linear_projection:
            hidden = transformer.proj_out(hidden)
        else:  # 1x1 conv on [B, C', h, w]
            lead = hidden.shape[:-2]
            grid = hidden.reshape(-1, n, channels).transpose(1, 2).reshape(-1, channels, height, width)
            hidden = transformer.proj_out(grid).flatten(2).transpose(1, 2).reshape(*lead, n, channels)
        return hidden + residual  # [..., N, C']

    def post(u: torch.Tensor) -> torch.Tensor:
        x = u.T.reshape(1, channels, height, width)
        if unet.conv_norm_out is not None:
            x = unet.conv_act(unet.conv_norm_out(x))
        return unet.conv_out(x).flatten()  # [C*h*w]

    head = (unet.conv_norm_out, unet.conv_act if unet.conv_norm_out is not None else None, unet.conv_out)
    return Tail(attention_out, rest, post, head, (channels, height, width))


def position_jacobian(tail: Tail, a_sub: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """D[h*S + s, q, :] = d u_q / d A[h, q, s] for all q at once: forward-mode JVPs [H*S, N, C'].

    The tangent "1 at (h, s) for every query" is exact per query because each position's output
    depends only on its own A[:, q, :]. `chunk` directions go through the tail as one batch.
    """
    heads, _, tokens = a_sub.shape
    tangents = torch.zeros(heads * tokens, *a_sub.shape, dtype=a_sub.dtype, device=a_sub.device)
    eye = torch.eye(tokens, dtype=a_sub.dtype, device=a_sub.device)[:, None]  # [S, 1, S]
    for h in range(heads):
        tangents[h * tokens : (h + 1) * tokens, h, :, range(tokens)] = eye
    parts = []
    for part in tangents.split(chunk):
        primal = a_sub.expand(len(part), *a_sub.shape).contiguous()
        parts.append(torch.func.jvp(tail.position_wise, (primal,), (part,))[1])
    return torch.cat(parts)


def tail_scores(
    tail: Tail,
    a_sub: torch.Tensor,
    factor: float,
    transform: Callable[[torch.Tensor], torch.Tensor],
    mix: Callable[[int, int], torch.Tensor | None],
    size: int,
    chunk_size: int,
) -> torch.Tensor:
    """Grad-SAM scores [S, M] of the subject columns a_sub [H, N, S] for the M outputs of the tail.

    `mix(start, stop)` gives the [k, k] cotangent block of outputs start..stop-1 (None: identity);
    chunks start at multiples of `chunk_size`.
    """
    heads, n, tokens = a_sub.shape
    d = position_jacobian(tail, a_sub)  # d u_q / d A[h, q, s] as [H*S, N, C']
    u = tail.position_wise(a_sub)  # [N, C']
    lin = linearize_head(*tail.head, u.T.reshape(tail.grid))
    products = HeadProducts(lin, d.permute(0, 2, 1).contiguous())
    check_rows(tail, u, d, products, size)
    weights = a_sub.permute(1, 0, 2).reshape(1, n, heads * tokens)  # A[h, q, s] as [1, N, H*S]
    scores = torch.empty(tokens, size, dtype=a_sub.dtype, device=a_sub.device)
    for start in range(0, size, chunk_size):
        stop = min(start + chunk_size, size)
        grads = products.rows(start, stop)  # d eps_m / d A[h, q, s] as [k, N, H*S]
        block = mix(start, stop)
        if block is not None:
            grads = torch.einsum("kj,jqx->kqx", block, grads)
        contrib = transform(grads * factor) * weights  # [k, N, H*S]
        scores[:, start:stop] = contrib.view(stop - start, n, heads, tokens).sum(dim=(1, 2)).T
    return scores


VERIFIED_HEADS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # conv_out -> (norm, act) checked


def check_rows(tail: Tail, u: torch.Tensor, d: torch.Tensor, products: HeadProducts, size: int) -> None:
    """Compare three rows of the closed-form head Jacobian with autograd, once per output head.

    The closed form rests on the head's structure (GroupNorm, elementwise activation, 'same'
    convolution), not on its values, so one agreement per head is enough; a wrong assumption fails here.
    """
    norm, act, conv = tail.head
    if VERIFIED_HEADS.get(conv) == (id(norm), id(act)):
        return
    _, vjp_post = torch.func.vjp(tail.post, u)
    for m in (0, size // 2 + 1, size - 1):
        row = torch.zeros(size, dtype=u.dtype, device=u.device)
        row[m] = 1.0
        (j_row,) = vjp_post(row)  # d eps_m / d u [N, C']
        expected = torch.einsum("qc,xqc->qx", j_row, d)
        error = (products.rows(m, m + 1)[0] - expected).abs().max().item()
        if not error <= 1e-4 * max(expected.abs().max().item(), 1e-12):
            raise TailNotApplicable(f"closed-form head Jacobian differs from autograd by {error:.3g} at row {m}")
    VERIFIED_HEADS[conv] = (id(norm), id(act))
