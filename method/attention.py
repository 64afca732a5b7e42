"""Cross-attention probabilities A = softmax(Q K^T / sqrt(d)) from chosen UNet layers (docs/paper.md §2.3, §9).

SDPA does not expose the probabilities, so the chosen layers get `ProbabilityProcessor`, which
computes them explicitly (the stock `AttnProcessor` recipe) and records A and V per layer. Under
grad mode the first recorded A becomes a leaf that requires grad, so every recorded A is in the
autograd graph (later layers' A depend on it through the hidden states: total derivatives, as in
the reference code). `recording_attention` installs the processors with diffusers'
`set_attn_processor`, counts them and restores the previous processors in `finally`.

Layer names are module paths without the `.processor` suffix, e.g.
`up_blocks.3.attentions.2.transformer_blocks.0.attn2` (SD1.5's last cross-attention).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from bench.sd.errors import ConfigError

if TYPE_CHECKING:  # annotations only: importing diffusers costs seconds, and config checks build methods
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import Attention

PROCESSOR_SUFFIX = ".processor"


@dataclass
class LayerRecord:
    """What one forward pass of a patched layer saw (batch B of that pass)."""

    probs: torch.Tensor  # A [B, H, N, K]: N queries (latent positions), K = 77 text tokens; in the graph under grad
    value: torch.Tensor  # V [B, H, K, d], detached


@dataclass
class ProbabilityStore:
    """Records of the patched layers, keyed by layer name (overwritten by each forward pass)."""

    records: dict[str, LayerRecord] = field(default_factory=dict)


class ProbabilityProcessor:
    """diffusers' classic attention with explicit probabilities, recorded into a store."""

    def __init__(self, name: str, store: ProbabilityStore):
        self.name, self.store = name, store

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, seq_len, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))  # [B*H, K, d]
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))  # [B*H, K, d]
        query = attn.head_to_batch_dim(query)  # [B*H, N, d]

        probs = attn.get_attention_scores(query, key, attention_mask)  # softmax(QK^T * scale) [B*H, N, K]
        probs = self._record(probs, value, batch, attn.heads)  # [B, H, N, K]
        hidden_states = torch.bmm(probs.reshape(batch * attn.heads, *probs.shape[2:]), value)  # [B*H, N, d]
        hidden_states = attn.batch_to_head_dim(hidden_states)  # [B, N, H*d]
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _record(self, probs: torch.Tensor, value: torch.Tensor, batch: int, heads: int) -> torch.Tensor:
        """Reshape A to [B, H, N, K] (head_to_batch_dim puts b*H + h first), make it a leaf if needed, store it."""
        probs = probs.view(batch, heads, *probs.shape[1:])
        if torch.is_grad_enabled() and not probs.requires_grad:
            probs = probs.detach().requires_grad_(True)
        value = value.detach().view(batch, heads, *value.shape[1:])  # [B, H, K, d]
        self.store.records[self.name] = LayerRecord(probs=probs, value=value)
        return probs


def cross_attention_layers(unet: UNet2DConditionModel) -> list[str]:
    """Names of the UNet's cross-attention layers in execution order: down blocks, mid block, up blocks.

    `unet.attn_processors` is in registration order, which puts the mid block last; the block
    structure gives the order in which the layers actually run.
    """
    from diffusers.models.attention_processor import Attention  # here: importing diffusers costs seconds

    names = {module: name for name, module in unet.named_modules()}
    blocks = [*unet.down_blocks, *([unet.mid_block] if unet.mid_block is not None else []), *unet.up_blocks]
    ordered = []
    for block in blocks:
        for transformer in getattr(block, "attentions", None) or []:
            for tblock in getattr(transformer, "transformer_blocks", []):
                for attn in (getattr(tblock, "attn1", None), getattr(tblock, "attn2", None)):
                    if isinstance(attn, Attention) and attn.is_cross_attention:
                        ordered.append(names[attn])
    everything = {n for n, m in unet.named_modules() if isinstance(m, Attention) and m.is_cross_attention}
    if set(ordered) != everything:
        raise RuntimeError(
            f"cannot order the cross-attention layers of this UNet: the block walk found {len(ordered)}, "
            f"the module tree has {len(everything)} ({sorted(everything - set(ordered))} unplaced). "
            "Name the layers explicitly with method.score.layers=[...]."
        )
    return ordered


def layer_resolutions(unet: UNet2DConditionModel, latent_size: int | None = None) -> dict[str, int]:
    """Cross-attention layer -> side k of its k x k map on a `latent_size` latent (default: the UNet's
    config.sample_size), in execution order.

    SD1 blocks: down block i runs at size / 2^i, the mid block and up block 0 at size / 2^(n-1),
    up block j at size / 2^(n-1-j) (n = number of down blocks).
    """
    size, depth = int(latent_size or unet.config.sample_size), len(unet.down_blocks)
    out = {}
    for name in cross_attention_layers(unet):
        parts = name.split(".")
        if parts[0] == "down_blocks":
            level = int(parts[1])
        elif parts[0] == "mid_block":
            level = depth - 1
        else:
            level = depth - 1 - int(parts[1])
        out[name] = max(1, -(-size // 2**level))  # ceil, as the UNet's stride-2 convolutions
    return out


def describe_layers(unet: UNet2DConditionModel, latent_size: int | None = None) -> str:
    """One line per cross-attention layer, in execution order: `name  k x k`."""
    return "\n".join(f"  {name}  {k}x{k}" for name, k in layer_resolutions(unet, latent_size).items())


def resolve_layers(
    unet: UNet2DConditionModel,
    layers: str | Sequence[str],
    latent_size: int | None = None,
    key: str = "method.score.layers",
) -> list[str]:
    """`last`, `all`, `res<k>` (maps k x k on a `latent_size` latent), or explicit names (with or without
    `.processor`) -> names in execution order. `key` names the setting in a refusal."""
    ordered = cross_attention_layers(unet)
    if isinstance(layers, str) and layers in ("last", "all"):
        return ordered[-1:] if layers == "last" else ordered
    sizes = layer_resolutions(unet, latent_size)
    if isinstance(layers, str) and layers.startswith("res") and layers[3:].isdigit():
        chosen = [name for name in ordered if sizes[name] == int(layers[3:])]
        if not chosen:
            raise ConfigError(
                f"{key}={layers!r}: no cross-attention layer of this UNet has a "
                f"{layers[3:]}x{layers[3:]} map. Valid: {sorted({f'res{k}' for k in sizes.values()})}, "
                f"`last`, `all`, or names from:\n{describe_layers(unet, latent_size)}"
            )
        return chosen
    wanted = [layers] if isinstance(layers, str) else list(layers)
    wanted = [w.removesuffix(PROCESSOR_SUFFIX) for w in wanted]
    unknown = [w for w in wanted if w not in ordered]
    if unknown or not wanted:
        sets = ", ".join(sorted({f"res{k}" for k in sizes.values()}))
        raise ConfigError(
            f"{key}={list(layers) if not isinstance(layers, str) else layers!r}: {unknown or 'empty'} "
            f"is not a cross-attention layer of this UNet. Use `last`, `all`, {sets}, or names from:\n"
            f"{describe_layers(unet, latent_size)}"
        )
    return [name for name in ordered if name in wanted]


@contextmanager
def recording_attention(unet: UNet2DConditionModel, layer_names: Sequence[str]) -> Iterator[ProbabilityStore]:
    """Install `ProbabilityProcessor` on the named layers for the duration of the block.

    The previous processors come back on exit, also after an exception.
    """
    original = dict(unet.attn_processors)
    keys = [name + PROCESSOR_SUFFIX for name in layer_names]
    missing = [k for k in keys if k not in original]
    if missing:
        raise ConfigError(f"no attention processor named {missing}; see method.attention.resolve_layers.")
    store = ProbabilityStore()
    patched = dict(original)
    for name, key in zip(layer_names, keys, strict=True):
        patched[key] = ProbabilityProcessor(name, store)
    unet.set_attn_processor(patched)  # diffusers pops from the dict it is given: it gets its own copy
    try:
        count = sum(isinstance(p, ProbabilityProcessor) for p in unet.attn_processors.values())
        if count != len(set(keys)):
            raise RuntimeError(f"patched {count} attention layers, expected {len(set(keys))} ({list(layer_names)}).")
        yield store
    finally:
        unet.set_attn_processor(dict(original))
