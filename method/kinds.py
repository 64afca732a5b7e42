"""Score kinds (`method.score.kind`): the ways to map a sample's subject at a scoring step.

    gradsam         the paper: sum_{h,q} A * T(d target / d A)                     (method.gradsam)
    attention_only  the subject's cross-attention alone, nearest-upsampled          (docs/paper.md §6 (a))
    daam            DAAM as castorini/daam aggregates it (no mid block), over the steps so far
    noise_diff      DiffEdit's |eps(z_t, prompt) - eps(z_t, scene)|                 (no layers)
    centre_prior    minus the distance to the latent grid's centre                  (chance; no network)
    uniform         i.i.d. uniform cells from the sample's `method` stream          (chance; no network)

A kind is one object per sample and chain: `observe` sees every denoising step up to the last scoring
one (DAAM sums them; the others ignore it); `per_layer` gives the map of each layer of its layer set
at a scoring step ({None: map} for a layer-free kind); `total` is their sum, the map a mask is
thresholded from, with the path that computed it (Grad-SAM's own sum takes the fast tail path when
it can). Every map is [T, C, h, w]: one per subject token, on the latent grid.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from bench.sd.diffusion import encode_text
from bench.sd.errors import ConfigError
from bench.sd.maps import centre_prior
from bench.sd.methods import Sample
from method.attention import resolve_layers
from method.config import ScoreConfig
from method.gradsam import (
    ScoreInputs,
    attention_heads,
    attention_maps,
    importance_scores_per_layer,
    noise_difference,
    scores_and_path,
)

if TYPE_CHECKING:  # annotations only (importing diffusers costs seconds)
    from bench.sd.backbone import Backbone


class ScoreKind(ABC):
    """One score kind's maps of one sample's subject."""

    name: str
    path: str  # the row's `score_path` when this kind drives the mask

    def observe(self, inputs: ScoreInputs) -> None:
        """A denoising step at or before the last scoring step (nothing by default)."""
        return None  # only DAAM sums the steps

    @abstractmethod
    def per_layer(self, inputs: ScoreInputs) -> dict[str | None, torch.Tensor]:
        """{layer: map [T, C, h, w]} in execution order; {None: map} for a layer-free kind."""

    def total(self, inputs: ScoreInputs) -> tuple[torch.Tensor, str]:
        """The sum over the layer set [T, C, h, w] and the path that computed it."""
        maps = self.per_layer(inputs)
        total = torch.zeros_like(next(iter(maps.values())))
        for layer_map in maps.values():
            total = total + layer_map
        return total, self.path


class GradSAMKind(ScoreKind):
    """The paper's scores over `layers` (resolved names) with the method's transform, target and basis."""

    name = "gradsam"

    def __init__(self, config: ScoreConfig, layers: tuple[str, ...]):
        self.config = replace(config, layers=layers)

    def per_layer(self, inputs: ScoreInputs) -> dict[str | None, torch.Tensor]:
        return dict(importance_scores_per_layer(inputs, self.config))

    def total(self, inputs: ScoreInputs) -> tuple[torch.Tensor, str]:
        return scores_and_path(inputs, self.config)  # one layer: the exact tail path


class AttentionKind(ScoreKind):
    """The subject's cross-attention per layer, summed over heads, nearest-upsampled, equal in every channel."""

    name, path = "attention_only", "attention"
    mode = "nearest"

    def __init__(self, layers: tuple[str, ...]):
        self.layers = layers

    def per_layer(self, inputs: ScoreInputs) -> dict[str | None, torch.Tensor]:
        maps = attention_maps(inputs, self.layers, self.mode)  # {layer: [T, h, w]}
        return {name: in_every_channel(m, inputs) for name, m in maps.items()}


class DAAMKind(ScoreKind):
    """DAAM (Tang et al. 2022) aggregated as castorini/daam does it: for each layer l and head h, the subject's
    conditional attention A_lh [T, h_l, w_l] summed over every step observed so far, bicubic-upsampled to the
    latent grid, clamped at 0 (the package's undershoot fix), and averaged over all (layer, head) pairs.
    Like the package it never uses the mid block (at SD1.5: the 64, 32 and 16 maps). `per_layer` gives each
    layer's share of that mean, so the shares sum to the map."""

    name = path = "daam"

    def __init__(self, layers: tuple[str, ...]):
        self.layers = tuple(name for name in layers if not name.startswith(MID_BLOCK))
        if not self.layers:
            raise ConfigError(
                f"score kind daam over {list(layers)}: DAAM never uses the mid block, and no other layer is in the "
                "set. Fix: choose layers outside the mid block (e.g. `all`, or a res<k> of the down and up blocks)."
            )
        self.sums: dict[str, torch.Tensor] = {}  # layer -> [H, T, h_l, w_l]

    def observe(self, inputs: ScoreInputs) -> None:
        for name, heads in attention_heads(inputs, self.layers).items():
            self.sums[name] = self.sums[name] + heads if name in self.sums else heads

    def per_layer(self, inputs: ScoreInputs) -> dict[str | None, torch.Tensor]:
        _, height, width = inputs.grid
        pairs = sum(len(heads) for heads in self.sums.values())  # the (layer, head) maps the package averages
        out: dict[str | None, torch.Tensor] = {}
        for name in self.layers:
            up = F.interpolate(self.sums[name], size=(height, width), mode="bicubic", align_corners=False)
            out[name] = in_every_channel(up.clamp(min=0).sum(dim=0) / pairs, inputs)  # [T, C, h, w]
        return out


class CentrePriorKind(ScoreKind):
    """A data-free chance map: minus the distance of each latent cell to the grid's centre."""

    name = path = "centre_prior"

    def per_layer(self, inputs: ScoreInputs) -> dict[str | None, torch.Tensor]:
        _, height, width = inputs.grid
        prior = torch.from_numpy(centre_prior(height, width)).float().to(inputs.latents.device)
        return {None: in_every_channel(prior[None], inputs)}  # [1, C, h, w]


class UniformKind(ScoreKind):
    """A chance map: i.i.d. uniform cells, drawn from the sample's `method` stream at each scoring step."""

    name = path = "uniform"

    def per_layer(self, inputs: ScoreInputs) -> dict[str | None, torch.Tensor]:
        _, height, width = inputs.grid
        cells = torch.rand(1, height, width, generator=inputs.generator).to(inputs.latents.device)
        return {None: in_every_channel(cells, inputs)}  # [1, C, h, w]


class NoiseDiffKind(ScoreKind):
    """DiffEdit's noise difference against the scene's text [77, D] (one map, no layers)."""

    name = path = "noise_diff"

    def __init__(self, scene_embeddings: torch.Tensor):
        self.scene = scene_embeddings

    def per_layer(self, inputs: ScoreInputs) -> dict[str | None, torch.Tensor]:
        return {None: noise_difference(inputs, self.scene[None])[None]}  # [1, C, h, w]


MID_BLOCK = "mid_block."  # the prefix of the mid block's layers, which DAAM never hooks


def in_every_channel(layer_map: torch.Tensor, inputs: ScoreInputs) -> torch.Tensor:
    """[T, h, w] -> [T, C, h, w], the same map in every latent channel."""
    return layer_map[:, None].expand(-1, inputs.grid[0], -1, -1)


def score_kind(
    kind: str, config: ScoreConfig, layers: tuple[str, ...], scene_embeddings: torch.Tensor | None
) -> ScoreKind:
    """One sample's ScoreKind of `kind` over the resolved `layers` (`scene_embeddings`: noise_diff only)."""
    if kind == "gradsam":
        return GradSAMKind(config, layers)
    if kind == "attention_only":
        return AttentionKind(layers)
    if kind == "daam":
        return DAAMKind(layers)
    if kind in ("centre_prior", "uniform"):
        return CentrePriorKind() if kind == "centre_prior" else UniformKind()
    if scene_embeddings is None:
        raise ValueError("score kind noise_diff needs the scene's text embeddings.")
    return NoiseDiffKind(scene_embeddings)


def layers_on(backbone: Backbone, layers: str | tuple[str, ...], key: str = "method.score.layers") -> tuple[str, ...]:
    """A layer set (`last`, `all`, `res<k>` on this backbone's latent, names) -> names in execution order;
    `key` names the setting in a refusal."""
    return tuple(resolve_layers(backbone.unet, layers, backbone.latent_size, key))


def scene_embeddings(backbone: Backbone, samples: list[Sample]) -> torch.Tensor:
    """The scene texts of noise_diff (DiffEdit's default query: the subcategory, "_" read as a space) [B, 77, D]."""
    return encode_text(backbone, [s.scene.replace("_", " ") for s in samples])
