"""Grad-SAM importance scores on cross-attention (docs/paper.md §2.3): the public entry point.

For every latent element m (C x h x w) and subject token s:

    S_s[m] = sum_{layers} sum_{heads h} sum_{queries q}  A[h, q, s] * T( d y[m] / d A[h, q, s] )

A = softmax(Q K^T / sqrt(d)) of the conditional prompt; T = abs (paper, "Abs-Grad-SAM") or relu
(reference code, B3); y = the target: eps_cond (reference code), eps_cfg, x0_pred or x_prev. For a
fixed z_t every target is eps_cond times a known scalar (the unconditional prediction does not
depend on A_cond, CFG multiplies by w, x0_pred and the DDPM mean are affine in eps), so the
Jacobian of eps_cond is computed once and scaled: with abs the masks coincide, with relu the sign
of the factor selects positive or negative gradients.

    importance_scores(inputs, config)            S [T, C, h, w], summed over the layer set
    importance_scores_per_layer(inputs, config)  {layer: S_l [T, C, h, w]}, the terms of that sum

`inputs` (ScoreInputs) is one sample's UNet call; `config` (method.config.ScoreConfig, or a mapping
of its keys) says what is differentiated and how. Two exact paths: `tail` (the last layer only,
method/tail.py: one UNet forward pass plus batched matrix products) and `general` (any layer set). The
general path computes the Jacobian of the target [M = C*h*w rows] with respect to the subject columns
of the chosen layers [sum over layers of heads x queries x subject tokens] from the side with fewer
estimated forwards (method/plans.py `plan_general`, `score.general_mode`): `rows` (batched VJPs through
the UNet, `row_path`) or `columns` (batched JVPs, method/columns.py). `vjp_basis=random_block8`
reproduces the reference code's random 8x8 cotangents (B2). `attention_maps`, `attention_scores` and
`noise_difference` are the gradient-free maps on the same inputs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from bench.sd.config import from_mapping
from bench.sd.errors import ConfigError
from method.attention import recording_attention, resolve_layers
from method.columns import column_path
from method.config import TRANSFORM_NAMES, ScoreConfig
from method.plans import GeneralPlan, plan_general
from method.tail import TailInputs, TailNotApplicable, build_tail, capturing_tail_inputs, tail_modules, tail_scores

if TYPE_CHECKING:  # annotations only (importing diffusers costs seconds)
    from diffusers import DDPMScheduler, UNet2DConditionModel

# The allowed settings (TARGETS, BASES, PATHS, ...) live in method.config; T by name, in its order:
TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = dict(
    zip(TRANSFORM_NAMES, (torch.abs, torch.relu), strict=True)
)
BLOCK = 8  # reference code: 8 consecutive outputs per batched backward pass


@dataclass(frozen=True, eq=False)
class ScoreInputs:
    """One sample's UNet call, and what turns its noise prediction into the scored target.

    Only the conditional half is needed: the unconditional prediction does not depend on A_cond.
    """

    unet: UNet2DConditionModel  # an SD1 UNet; its parameters need not require grad
    latents: torch.Tensor  # z_t [1, C, h, w] (or [C, h, w])
    timestep: torch.Tensor | int  # t of the UNet call
    text_embeddings: torch.Tensor  # the conditional prompt's CLIP states [1, 77, D]
    token_positions: tuple[int, ...]  # the subject's CLIP columns s (0 = <start>), in output order
    guidance_scale: float = 8.0  # w, for the targets that use CFG
    scheduler: DDPMScheduler | None = None  # with its timesteps set: needed for x0_pred and x_prev
    generator: torch.Generator | None = None  # CPU generator of the random_block8 matrices (B2)

    def __post_init__(self):
        latents = self.latents if self.latents.ndim == 4 else self.latents[None]
        if latents.shape[0] != 1 or self.text_embeddings.shape[0] != 1:
            raise ValueError(
                f"one sample at a time: latents {tuple(latents.shape)}, text {tuple(self.text_embeddings.shape)}; "
                "score each sample of a batch with its own ScoreInputs."
            )
        object.__setattr__(self, "latents", latents)
        object.__setattr__(self, "token_positions", tuple(int(p) for p in self.token_positions))

    @property
    def grid(self) -> tuple[int, int, int]:
        """(C, h, w) of the latent: the shape of one score map."""
        _, channels, height, width = self.latents.shape
        return channels, height, width

    def layers(self, layers: str | tuple[str, ...]) -> list[str]:
        """A layer set (`last`, `all`, `res<k>` on this latent, or names) -> names in execution order."""
        return resolve_layers(self.unet, layers, self.latents.shape[-2])


def score_config(config: ScoreConfig | Mapping | None) -> ScoreConfig:
    """A validated ScoreConfig from an instance, a mapping of `method.score` keys, or None (the defaults).

    Every form is checked by the same rules as the method node (a ConfigError naming `method.score.<key>`).
    """
    if isinstance(config, ScoreConfig):
        config = {f.name: getattr(config, f.name) for f in fields(ScoreConfig)}
    return from_mapping(ScoreConfig, config, "method.score")


def importance_scores(inputs: ScoreInputs, config: ScoreConfig | Mapping | None = None) -> torch.Tensor:
    """Grad-SAM scores S [T, C, h, w] of one sample, exact (identity basis), in float32: one map per
    token position of `inputs`, summed over the layers of `config.layers` (default: the paper's preset,
    `ScoreConfig()`). `config.kind` is not consulted: these are always Grad-SAM scores."""
    return scores_and_path(inputs, config)[0]


def scores_and_path(inputs: ScoreInputs, config: ScoreConfig | Mapping | None = None) -> tuple[torch.Tensor, str]:
    """`importance_scores` and the path that computed them: `tail` (one layer, path auto or tail) or `general`."""
    config = score_config(config)
    jacobian = JacobianPass.of(inputs, config)
    with float32(inputs.unet), torch.enable_grad():
        if config.path != "general" and len(jacobian.layers) == 1:
            try:
                return jacobian.shaped(tail_path(jacobian, config.chunk_size)), "tail"
            except TailNotApplicable as exc:
                if config.path == "tail":
                    raise ConfigError(f"method.score.path=tail is not possible: {exc}. Use path=auto.") from exc
        elif config.path == "tail":
            raise ConfigError(f"method.score.path=tail needs a single layer; got {jacobian.layers}. Use path=auto.")
        per_layer = general_path(jacobian, config)
    total = torch.zeros(len(jacobian.positions), jacobian.size, dtype=torch.float32, device=jacobian.device)
    for layer in per_layer.values():
        total += layer
    return jacobian.shaped(total), "general"


def importance_scores_per_layer(
    inputs: ScoreInputs, config: ScoreConfig | Mapping | None = None
) -> dict[str, torch.Tensor]:
    """Grad-SAM scores per layer of `config.layers` {name: S_l [T, C, h, w]} (general path: one Jacobian in the
    mode of `plan_general`); their sum over layers is `importance_scores` on the same layer set."""
    config = score_config(config)
    jacobian = JacobianPass.of(inputs, config)
    with float32(inputs.unet), torch.enable_grad():
        per_layer = general_path(jacobian, config)
    return {name: jacobian.shaped(scores) for name, scores in per_layer.items()}


@dataclass(frozen=True, eq=False)
class JacobianPass:
    """Everything one exact Grad-SAM computation needs, derived once from (inputs, config)."""

    inputs: ScoreInputs
    layers: list[str]  # the cross-attention layers differentiated against, in execution order
    positions: torch.Tensor  # token columns s [T] (long)
    factor: float  # d target / d eps_cond
    transform: Callable[[torch.Tensor], torch.Tensor]  # T: abs or relu
    basis: CotangentBasis  # identity or the reference code's random blocks

    @classmethod
    def of(cls, inputs: ScoreInputs, config: ScoreConfig) -> JacobianPass:
        device = inputs.latents.device
        channels, height, width = inputs.grid
        return cls(
            inputs=inputs,
            layers=inputs.layers(config.layers),
            positions=torch.as_tensor(inputs.token_positions, dtype=torch.long, device=device),
            factor=target_factor(config.target, inputs.timestep, inputs.guidance_scale, inputs.scheduler),
            transform=TRANSFORMS[config.transform],
            basis=CotangentBasis(channels * height * width, config.vjp_basis, inputs.generator, device),
        )

    @property
    def size(self) -> int:
        return self.basis.size

    @property
    def device(self) -> torch.device:
        return self.inputs.latents.device

    def plan(self, config: ScoreConfig) -> GeneralPlan:
        """The general path's plan for this call (config.general_chunk_size, config.general_mode)."""
        unet, grid, tokens = self.inputs.unet, self.inputs.grid, len(self.positions)
        return plan_general(unet, self.layers, grid, tokens, config.general_chunk_size, config.general_mode)

    def forward_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_t, conditional text) as float32 leaves of no graph."""
        return self.inputs.latents.detach().float(), self.inputs.text_embeddings.detach().float()

    def shaped(self, scores: torch.Tensor) -> torch.Tensor:
        """[T, M] -> [T, C, h, w]."""
        return scores.view(-1, *self.inputs.grid)


def tail_path(jacobian: JacobianPass, chunk_size: int) -> torch.Tensor:
    """Scores [T, M] of the last layer through its tail; checks the rebuilt tail against the forward pass."""
    (layer,) = jacobian.layers
    unet, (z, cond), positions = jacobian.inputs.unet, jacobian.forward_inputs(), jacobian.positions
    mods = tail_modules(unet, layer)
    with recording_attention(unet, [layer]) as store, capturing_tail_inputs(mods) as captured, torch.no_grad():
        eps = unet(z, jacobian.inputs.timestep, encoder_hidden_states=cond).sample.float()[0]  # [C, h, w]
    record = store.records[layer]
    inputs = TailInputs(captured["block_residual"][0], captured["transformer_residual"][0])
    tail = build_tail(mods, inputs, record.probs[0], record.value[0], positions)
    a_sub = record.probs[0][:, :, positions].detach()  # [H, N, T]
    chunk = max(BLOCK, chunk_size // BLOCK * BLOCK)  # random blocks never straddle two chunks
    basis = jacobian.basis
    try:  # the tail rebuilt from its primal u must reproduce eps (checked inside, before any product)
        return tail_scores(
            tail, a_sub, jacobian.factor, jacobian.transform, basis.within, basis.size, chunk, eps.flatten()
        )
    except TailNotApplicable as exc:
        warnings.warn(f"the tail of {layer}: {exc}; using the general path.", RuntimeWarning, stacklevel=3)
        raise


def general_path(jacobian: JacobianPass, config: ScoreConfig) -> dict[str, torch.Tensor]:
    """Per-layer scores {name: [T, M]} from the side of the Jacobian that `plan_general` takes."""
    plan = jacobian.plan(config)
    if plan.mode == "columns":
        return column_path(jacobian, plan.chunk)
    return row_path(jacobian, plan.chunk)


def row_path(jacobian: JacobianPass, chunk_size: int) -> dict[str, torch.Tensor]:
    """Per-layer scores {name: [T, M]}: batched VJPs of the whole UNet output w.r.t. every recorded A."""
    unet, (z, cond), names, positions = (
        jacobian.inputs.unet,
        jacobian.forward_inputs(),
        jacobian.layers,
        jacobian.positions,
    )
    with recording_attention(unet, names) as store:
        y = unet(z, jacobian.inputs.timestep, encoder_hidden_states=cond).sample.float().flatten() * jacobian.factor
    probs = [store.records[name].probs for name in names]  # [1, H, N_l, K] each, in the graph
    weights = [p.detach()[0][..., positions] for p in probs]  # A_l[h, q, s] [H, N_l, T]
    out = {name: torch.zeros(len(positions), jacobian.size, dtype=torch.float32, device=z.device) for name in names}
    for start in range(0, jacobian.size, chunk_size):
        stop = min(start + chunk_size, jacobian.size)
        grads = batched_vjp(y, probs, jacobian.basis.rows(start, stop))
        for name, g, a in zip(names, grads, weights, strict=True):
            g = g[:, 0][..., positions]  # d y_m / d A_l [k, H, N_l, T]
            out[name][:, start:stop] = torch.einsum("khns,hns->sk", jacobian.transform(g), a)
    return out


def batched_vjp(y: torch.Tensor, inputs: list[torch.Tensor], rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Rows [k, M] times the Jacobian of y w.r.t. each input: one batched backward pass (a loop if vmap fails)."""
    try:
        return torch.autograd.grad(y, inputs, grad_outputs=rows, is_grads_batched=True, retain_graph=True)
    except (RuntimeError, NotImplementedError):  # an op without a batching rule: same numbers, slower
        per_row = [torch.autograd.grad(y, inputs, grad_outputs=row, retain_graph=True) for row in rows]
        return tuple(torch.stack(g) for g in zip(*per_row, strict=True))


def attention_scores(inputs: ScoreInputs, layers: str | tuple[str, ...] = "last") -> torch.Tensor:
    """The subject's cross-attention map alone, no gradient (the authors' earlier variant, docs/paper.md §6 (a)).

    S_s[c, i, j] = sum_layers sum_h A[h, q(i, j), s], nearest-upsampled to the latent grid and the
    same for every channel c. Returns [T, C, h, w].
    """
    maps = attention_maps(inputs, layers)
    total = torch.zeros_like(next(iter(maps.values())))
    for layer_map in maps.values():
        total += layer_map
    return total[:, None].expand(-1, inputs.grid[0], -1, -1).contiguous()


def attention_maps(
    inputs: ScoreInputs, layers: str | tuple[str, ...] = "all", mode: str = "nearest"
) -> dict[str, torch.Tensor]:
    """Per layer: the subject tokens' attention summed over heads, upsampled to the latent grid {name: [T, h, w]}.

    mode: `nearest` (attention_only) or `bicubic`.
    """
    _, height, width = inputs.grid
    out = {}
    for name, heads in attention_heads(inputs, layers).items():  # [H, T, h_l, w_l]
        maps = heads.sum(dim=0, keepdim=True)  # [1, T, h_l, w_l]
        extra = {} if mode == "nearest" else {"align_corners": False}
        out[name] = F.interpolate(maps, size=(height, width), mode=mode, **extra)[0]
    return out


def attention_heads(inputs: ScoreInputs, layers: str | tuple[str, ...] = "all") -> dict[str, torch.Tensor]:
    """Per layer: each head's attention to the subject tokens on the layer's own grid {name: [H, T, h_l, w_l]}
    (the conditional prompt, one UNet forward pass, no gradient)."""
    unet, names = inputs.unet, inputs.layers(layers)
    _, height, width = inputs.grid
    positions = list(inputs.token_positions)
    with float32(unet), recording_attention(unet, names) as store, torch.no_grad():
        unet(inputs.latents.float(), inputs.timestep, encoder_hidden_states=inputs.text_embeddings.float())
    out = {}
    for name in names:
        probs = store.records[name].probs[0][..., positions]  # [H, N_l, T]
        h_l, w_l = grid_of(probs.shape[1], height, width)
        out[name] = probs.permute(0, 2, 1).reshape(probs.shape[0], len(positions), h_l, w_l)
    return out


def noise_difference(inputs: ScoreInputs, scene_embeddings: torch.Tensor) -> torch.Tensor:
    """DiffEdit's map |eps(z_t, prompt) - eps(z_t, scene)| [C, h, w] at one UNet call (no clamp, no threshold)."""
    unet, z, t = inputs.unet, inputs.latents.float(), inputs.timestep
    with float32(unet), torch.no_grad():
        eps_p = unet(z, t, encoder_hidden_states=inputs.text_embeddings.float()).sample
        eps_s = unet(z, t, encoder_hidden_states=scene_embeddings.float()).sample
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
    """d target / d eps_cond as one scalar (exact for a fixed z_t and step noise; docs/paper.md §2.3).

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

    def mix(self, columns: torch.Tensor) -> torch.Tensor:
        """Jacobian columns [k, M] -> the same columns of (basis @ Jacobian): rows mixed within each block."""
        if self.kind == "identity":
            return columns
        full = self.size // BLOCK  # whole blocks; a last partial block is mixed on its own
        out = torch.empty_like(columns)
        if full:
            mixes = torch.stack(self.blocks[:full]).to(columns)  # R_b [B, 8, 8]
            blocks = columns[:, : full * BLOCK].reshape(len(columns), full, BLOCK)  # [k, B, 8]
            out[:, : full * BLOCK] = torch.einsum("brj,kbj->kbr", mixes, blocks).flatten(1)
        if full < len(self.blocks):
            out[:, full * BLOCK :] = columns[:, full * BLOCK :] @ self.blocks[-1].to(columns).T
        return out

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
