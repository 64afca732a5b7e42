"""Grad-SAM importance scores on cross-attention (PAPER_SPEC §2.3): the public entry point.

For every latent element m (C x h x w) and subject token s:

    S_s[m] = sum_{layers} sum_{heads h} sum_{queries q}  A[h, q, s] * T( d y[m] / d A[h, q, s] )

A = softmax(Q K^T / sqrt(d)) of the conditional prompt; T = abs (paper, "Abs-Grad-SAM") or relu
(reference code, B3); y = the target: eps_cond (reference code), eps_cfg, x0_pred or x_prev. For a
fixed z_t every target is eps_cond times a known scalar (the unconditional prediction does not
depend on A_cond, CFG multiplies by w, x0_pred and the DDPM mean are affine in eps), so the
Jacobian of eps_cond is computed once and scaled: with abs the masks coincide, with relu the sign
of the factor selects positive or negative gradients.

Two exact paths: `tail` (the last layer only, method/tail.py: one UNet forward pass plus batched
matrix products) and `general` (any layer set: chunked batched VJPs through the UNet).
`vjp_basis=random_block8` reproduces the reference code's random 8x8 cotangents (B2).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel

from bench.sd.config import from_mapping
from bench.sd.errors import ConfigError
from method.attention import recording_attention, resolve_layers
from method.config import TRANSFORM_NAMES, ScoreConfig
from method.tail import TailInputs, TailNotApplicable, build_tail, capturing_tail_inputs, tail_modules, tail_scores

# The allowed settings (TARGETS, BASES, PATHS, ...) live in method.config; T by name, in its order:
TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = dict(
    zip(TRANSFORM_NAMES, (torch.abs, torch.relu), strict=True)
)
BLOCK = 8  # reference code: 8 consecutive outputs per batched backward pass


def importance_scores(*args: Any, **kwargs: Any) -> torch.Tensor:
    """Grad-SAM scores S [T, C, h, w] of one sample: `score_with_path` (same arguments) without the path taken."""
    scores, _ = score_with_path(*args, **kwargs)
    return scores


def score_with_path(
    unet: UNet2DConditionModel,
    latents: torch.Tensor,
    timestep: torch.Tensor | int,
    text_embeddings: torch.Tensor,
    token_positions: Sequence[int],
    layers: str | Sequence[str] = "last",
    transform: str = "abs",
    target: str = "eps_cond",
    *,
    guidance_scale: float = 8.0,
    scheduler: DDPMScheduler | None = None,
    vjp_basis: str = "identity",
    generator: torch.Generator | None = None,
    path: str = "auto",
    chunk_size: int = 512,
    general_chunk_size: int = 8,
) -> tuple[torch.Tensor, str]:
    """Grad-SAM scores of one sample, exact (identity basis), in float32.

    Args:
        unet: an SD1 UNet; its parameters need not require grad (nothing is trained).
        latents: z_t [1, C, h, w] (or [C, h, w]).
        timestep: t of the UNet call.
        text_embeddings: the conditional prompt's CLIP states [1, 77, D]; the unconditional half is
            not needed (its prediction does not depend on A_cond).
        token_positions: CLIP columns s (0 = <start>).
        layers: `last` (default, the reference code), `all`, or layer names (method.attention).
        transform: `abs` (paper) or `relu` (reference code).
        target: `eps_cond` (reference code), `eps_cfg`, `x0_pred` or `x_prev`.
        guidance_scale: w, for the targets that use CFG.
        scheduler: the DDPM scheduler with its timesteps set; needed for x0_pred and x_prev.
        vjp_basis: `identity` (exact Jacobian rows) or `random_block8` (B2; needs `generator`).
        generator: CPU generator for the random_block8 matrices.
        path: `auto` (tail when possible), `tail` or `general`.
        chunk_size: output rows (latent elements) per chunk on the tail path (memory ~ rows * N * H * T floats).
        general_chunk_size: rows per batched backward pass through the UNet on the general path.

    Returns:
        S [T, C, h, w]: one score map per token position, in the order given, and the path taken
        (`tail` or `general`).

    The settings are validated once, by the rules of `method.config.ScoreConfig` (a ConfigError
    naming `method.score.<key>`); `scores_with_config` is the same computation on a validated config.
    """
    settings = {"layers": layers, "transform": transform, "target": target, "vjp_basis": vjp_basis, "path": path}
    settings |= {"chunk_size": chunk_size, "general_chunk_size": general_chunk_size}
    config = from_mapping(ScoreConfig, settings, "method.score")
    return scores_with_config(
        unet,
        latents,
        timestep,
        text_embeddings,
        token_positions,
        config,
        guidance_scale=guidance_scale,
        scheduler=scheduler,
        generator=generator,
    )


def scores_with_config(
    unet: UNet2DConditionModel,
    latents: torch.Tensor,
    timestep: torch.Tensor | int,
    text_embeddings: torch.Tensor,
    token_positions: Sequence[int],
    config: ScoreConfig,
    *,
    guidance_scale: float = 8.0,
    scheduler: DDPMScheduler | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, str]:
    """`score_with_path` with its settings in a validated ScoreConfig (trusted: built by `from_mapping`).

    `config.kind` is not consulted: these are always Grad-SAM scores (attention_scores is the other kind).
    """
    layers, transform, target, path = config.layers, config.transform, config.target, config.path
    vjp_basis, chunk_size, general_chunk_size = config.vjp_basis, config.chunk_size, config.general_chunk_size
    latents = latents if latents.ndim == 4 else latents[None]
    if latents.shape[0] != 1 or text_embeddings.shape[0] != 1:
        raise ValueError(f"one sample at a time: latents {tuple(latents.shape)}, text {tuple(text_embeddings.shape)}.")
    factor = target_factor(target, timestep, guidance_scale, scheduler)
    names = resolve_layers(unet, layers)
    _, channels, height, width = latents.shape
    size = channels * height * width
    basis = CotangentBasis(size, vjp_basis, generator, latents.device)
    positions = torch.as_tensor(list(token_positions), dtype=torch.long, device=latents.device)
    z, cond = latents.detach().float(), text_embeddings.detach().float()
    with float32(unet), torch.enable_grad():
        if path != "general" and len(names) == 1:
            try:
                scores = _tail_path(unet, z, timestep, cond, names[0], positions, factor, transform, basis, chunk_size)
                return scores.view(-1, channels, height, width), "tail"
            except TailNotApplicable as exc:
                if path == "tail":
                    raise ConfigError(f"method.score.path=tail is not possible: {exc}. Use path=auto.") from exc
        elif path == "tail":
            raise ConfigError(f"method.score.path=tail needs a single layer; got {names}. Use path=auto.")
        scores = _general_path(unet, z, timestep, cond, names, positions, factor, transform, basis, general_chunk_size)
    return scores.view(-1, channels, height, width), "general"


def _tail_path(unet, z, t, cond, layer, positions, factor, transform, basis, chunk_size) -> torch.Tensor:
    """Scores [S, M] of the last layer through its tail; checks the rebuilt tail against the forward pass."""
    mods = tail_modules(unet, layer)
    with recording_attention(unet, [layer]) as store, capturing_tail_inputs(mods) as captured, torch.no_grad():
        eps = unet(z, t, encoder_hidden_states=cond).sample.float()[0]  # [C, h, w]
    record = store.records[layer]
    inputs = TailInputs(captured["block_residual"][0], captured["transformer_residual"][0])
    tail = build_tail(mods, inputs, record.probs[0], record.value[0], positions)
    a_sub = record.probs[0][:, :, positions].detach()  # [H, N, S]
    chunk = max(BLOCK, chunk_size // BLOCK * BLOCK)  # random blocks never straddle two chunks
    try:  # the tail rebuilt from its primal u must reproduce eps (checked inside, before any product)
        return tail_scores(tail, a_sub, factor, TRANSFORMS[transform], basis.within, basis.size, chunk, eps.flatten())
    except TailNotApplicable as exc:
        warnings.warn(f"the tail of {layer}: {exc}; using the general path.", RuntimeWarning, stacklevel=3)
        raise


def _general_path(unet, z, t, cond, names, positions, factor, transform, basis, chunk_size) -> torch.Tensor:
    """Scores [S, M] for any layer set: batched VJPs of the whole UNet output w.r.t. every recorded A."""
    per_layer = _general_layers(unet, z, t, cond, names, positions, factor, transform, basis, chunk_size)
    scores = torch.zeros(len(positions), basis.size, dtype=torch.float32, device=z.device)
    for layer in per_layer.values():
        scores += layer
    return scores


def _general_layers(unet, z, t, cond, names, positions, factor, transform, basis, chunk_size) -> dict:
    """Per-layer scores {name: [S, M]}: the terms of the sum over layers, from one set of VJPs."""
    with recording_attention(unet, names) as store:
        y = unet(z, t, encoder_hidden_states=cond).sample.float().flatten() * factor  # [M]
    probs = [store.records[name].probs for name in names]  # [1, H, N_l, K] each, in the graph
    weights = [p.detach()[0][..., positions] for p in probs]  # A_l[h, q, s] [H, N_l, S]
    out = {name: torch.zeros(len(positions), basis.size, dtype=torch.float32, device=z.device) for name in names}
    for start in range(0, basis.size, chunk_size):
        stop = min(start + chunk_size, basis.size)
        grads = batched_vjp(y, probs, basis.rows(start, stop))
        for name, g, a in zip(names, grads, weights, strict=True):
            g = g[:, 0][..., positions]  # d y_m / d A_l [k, H, N_l, S]
            out[name][:, start:stop] = torch.einsum("khns,hns->sk", TRANSFORMS[transform](g), a)
    return out


def layer_scores(
    unet: UNet2DConditionModel,
    latents: torch.Tensor,
    timestep: torch.Tensor | int,
    text_embeddings: torch.Tensor,
    token_positions: Sequence[int],
    config: ScoreConfig,
    *,
    guidance_scale: float = 8.0,
    scheduler: DDPMScheduler | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Grad-SAM scores per layer of `config.layers` {name: S_l [T, C, h, w]} (general path); their sum
    over layers is the layer set's score."""
    latents = latents if latents.ndim == 4 else latents[None]
    factor = target_factor(config.target, timestep, guidance_scale, scheduler)
    names = resolve_layers(unet, config.layers)
    _, channels, height, width = latents.shape
    basis = CotangentBasis(channels * height * width, config.vjp_basis, generator, latents.device)
    positions = torch.as_tensor(list(token_positions), dtype=torch.long, device=latents.device)
    z, cond = latents.detach().float(), text_embeddings.detach().float()
    with float32(unet), torch.enable_grad():
        out = _general_layers(
            unet, z, timestep, cond, names, positions, factor, config.transform, basis, config.general_chunk_size
        )
    return {name: s.view(-1, channels, height, width) for name, s in out.items()}


def batched_vjp(y: torch.Tensor, inputs: list[torch.Tensor], rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Rows [k, M] times the Jacobian of y w.r.t. each input: one batched backward pass (a loop if vmap fails)."""
    try:
        return torch.autograd.grad(y, inputs, grad_outputs=rows, is_grads_batched=True, retain_graph=True)
    except (RuntimeError, NotImplementedError):  # an op without a batching rule: same numbers, slower
        per_row = [torch.autograd.grad(y, inputs, grad_outputs=row, retain_graph=True) for row in rows]
        return tuple(torch.stack(g) for g in zip(*per_row, strict=True))


def attention_scores(
    unet: UNet2DConditionModel,
    latents: torch.Tensor,
    timestep: torch.Tensor | int,
    text_embeddings: torch.Tensor,
    token_positions: Sequence[int],
    layers: str | Sequence[str] = "last",
) -> torch.Tensor:
    """The subject's cross-attention map alone, no gradient (the authors' earlier variant, PAPER_SPEC §6 (a)).

    S_s[c, i, j] = sum_layers sum_h A[h, q(i, j), s], nearest-upsampled to the latent grid and the
    same for every channel c. Returns [T, C, h, w].
    """
    latents = latents if latents.ndim == 4 else latents[None]
    channels = latents.shape[1]
    maps = attention_maps(unet, latents, timestep, text_embeddings, token_positions, layers)
    total = torch.zeros_like(next(iter(maps.values())))
    for layer_map in maps.values():
        total += layer_map
    return total[:, None].expand(-1, channels, -1, -1).contiguous()


def attention_maps(
    unet: UNet2DConditionModel,
    latents: torch.Tensor,
    timestep: torch.Tensor | int,
    text_embeddings: torch.Tensor,
    token_positions: Sequence[int],
    layers: str | Sequence[str] = "all",
    mode: str = "nearest",
) -> dict[str, torch.Tensor]:
    """Per layer: the subject tokens' attention summed over heads, upsampled to the latent grid {name: [T, h, w]}.

    mode: `nearest` (attention_only) or `bicubic` (DAAM, Tang et al. 2022).
    """
    latents = latents if latents.ndim == 4 else latents[None]
    names = resolve_layers(unet, layers)
    _, _, height, width = latents.shape
    positions = list(token_positions)
    with float32(unet), recording_attention(unet, names) as store, torch.no_grad():
        unet(latents.float(), timestep, encoder_hidden_states=text_embeddings.float())
    out = {}
    for name in names:
        probs = store.records[name].probs[0][..., positions].sum(dim=0)  # [N_l, T]
        h_l, w_l = grid_of(probs.shape[0], height, width)
        maps = probs.T.reshape(1, len(positions), h_l, w_l)
        extra = {} if mode == "nearest" else {"align_corners": False}
        out[name] = F.interpolate(maps, size=(height, width), mode=mode, **extra)[0]
    return out


def noise_difference(
    unet: UNet2DConditionModel,
    latents: torch.Tensor,
    timestep: torch.Tensor | int,
    text_embeddings: torch.Tensor,
    scene_embeddings: torch.Tensor,
) -> torch.Tensor:
    """DiffEdit's map |eps(z_t, prompt) - eps(z_t, scene)| [C, h, w] at one UNet call (no clamp, no threshold)."""
    latents = latents if latents.ndim == 4 else latents[None]
    with float32(unet), torch.no_grad():
        eps_p = unet(latents.float(), timestep, encoder_hidden_states=text_embeddings.float()).sample
        eps_s = unet(latents.float(), timestep, encoder_hidden_states=scene_embeddings.float()).sample
    return (eps_p - eps_s).abs()[0].float()


def grid_of(queries: int, height: int, width: int) -> tuple[int, int]:
    """The (h_l, w_l) grid of a layer with `queries` positions in a UNet on an h x w latent."""
    factor = 1
    while factor <= max(height, width):
        h_l, w_l = -(-height // factor), -(-width // factor)
        if h_l * w_l == queries:
            return h_l, w_l
        factor *= 2
    raise ValueError(f"no power-of-two grid of {height}x{width} has {queries} positions.")


def target_factor(
    target: str, timestep: torch.Tensor | int, guidance_scale: float, scheduler: DDPMScheduler | None
) -> float:
    """d target / d eps_cond as one scalar (exact for a fixed z_t and step noise; PAPER_SPEC §2.3).

    `target` is one of method.config.TARGETS (validated by ScoreConfig, not here).
    """
    if target == "eps_cond":
        return 1.0
    if target == "eps_cfg":
        return float(guidance_scale)
    if scheduler is None:
        raise ValueError(f"target={target} needs the scheduler (with its timesteps set).")
    config = scheduler.config
    if config.prediction_type != "epsilon" or config.clip_sample or config.thresholding:
        raise ConfigError(
            f"target={target} assumes an epsilon-predicting DDPM without clipping or thresholding; the scheduler has "
            f"prediction_type={config.prediction_type}, clip_sample={config.clip_sample}, "
            f"thresholding={config.thresholding}. Use target=eps_cond or eps_cfg."
        )
    t = int(timestep)
    abar_t = scheduler.alphas_cumprod[t].double()
    # x0 = (z - sqrt(1 - abar) eps) / sqrt(abar), with eps = CFG(eps_u, eps_c)
    d_x0 = -float(guidance_scale) * float((1 - abar_t).sqrt() / abar_t.sqrt())
    if target == "x0_pred":
        return d_x0
    prev = int(scheduler.previous_timestep(t))
    abar_prev = scheduler.alphas_cumprod[prev].double() if prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
    beta_t = 1 - abar_t / abar_prev
    return d_x0 * float(abar_prev.sqrt() * beta_t / (1 - abar_t))  # DDPM mean: coeff * x0 + c * z_t


class CotangentBasis:
    """Cotangent rows for the VJPs: identity (exact Jacobian rows) or the reference code's random blocks (B2).

    random_block8: the M outputs (flattened C, h, w) are cut into blocks of 8 consecutive elements;
    block b gets R_b ~ N(0, 1) [8, 8] (drawn in block order from `generator`) and element
    b*8 + r receives sum_j R_b[r, j] * (row of element b*8 + j), as `is_grads_batched` did there.
    """

    def __init__(self, size: int, kind: str, generator: torch.Generator | None, device: torch.device):
        self.size, self.kind, self.device = size, kind, device
        self.blocks: list[torch.Tensor] = []
        if kind == "random_block8":
            if generator is None:
                raise ValueError("vjp_basis=random_block8 needs a generator (the sample's `method` stream).")
            for start in range(0, size, BLOCK):
                b = min(BLOCK, size - start)
                self.blocks.append(torch.randn(b, b, generator=generator, dtype=torch.float32))

    def within(self, start: int, stop: int) -> torch.Tensor | None:
        """The basis restricted to outputs start..stop-1 [k, k] (None: identity); start must be a block start."""
        if self.kind == "identity":
            return None
        if start % BLOCK or (stop % BLOCK and stop != self.size):
            raise ValueError(f"rows {start}..{stop} cut a block of {BLOCK}.")
        return self.rows(start, stop)[:, start:stop]

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows start..stop-1 of the basis matrix [stop - start, M]."""
        rows = torch.zeros(stop - start, self.size, dtype=torch.float32)
        if self.kind == "identity":
            rows[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            return rows.to(self.device)
        for m in range(start, stop):
            block, r = divmod(m, BLOCK)
            mix = self.blocks[block][r]
            rows[m - start, block * BLOCK : block * BLOCK + len(mix)] = mix
        return rows.to(self.device)


@contextmanager
def float32(unet: UNet2DConditionModel) -> Iterator[None]:
    """Run the gradient pass in float32; a half-precision UNet is cast back exactly afterwards."""
    dtype = unet.dtype
    if dtype == torch.float32:
        yield
        return
    unet.to(torch.float32)
    try:
        yield
    finally:
        unet.to(dtype)
