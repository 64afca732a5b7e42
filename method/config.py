"""The Grad-SAM method's settings: one validated config tree per method node (conf/method/gradsam.yaml).

    GradSAMConfig    method.*          strength, injection_indices, init_latent, ref_noise, manipulate
      ScoreConfig    method.score.*    kind, layers, transform, target, vjp_basis, path, chunk sizes, general_mode
        DAAMConfig   method.score.daam.*   window
      SubjectConfig  method.subject.*  index_mode
      MaskConfig     method.mask.*     threshold_k, threshold_scope, channel_rule, box_sum_once, rule, keep_fraction
        BlurConfig     method.mask.blur.*
        DilationConfig method.mask.dilation.*
      AttributionConfig method.attribution.*  record, kinds, layers, daam, latents (maps as data)

Built once by `bench.sd.config.from_mapping` (unknown keys, enums, ranges, finite numbers; one
`ConfigError`). This module is also the one home of the allowed values: gradsam.py, tokens.py and
masks.py trust what a config hands them. Rules that need the model or the schedule (layer names,
injection indices inside the truncated schedule, the tail path) are checked where those exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from bench.sd.config import Rule, boolean, integer, is_integer, one_of, real, setting
from bench.sd.errors import ConfigError

SCORE_KINDS = ("gradsam", "attention_only", "daam", "noise_diff", "centre_prior", "uniform")
LAYERED_KINDS = ("gradsam", "attention_only", "daam")  # sums over layers: recorded one map per layer
CHANNEL_RULES = ("per_channel", "union", "sum")
MASK_RULES = ("threshold", "top_fraction")
DAAM_WINDOWS = ("causal", "full", "both")
TRANSFORM_NAMES = ("abs", "relu")  # method.gradsam.TRANSFORMS maps them to their functions
TARGETS = ("eps_cond", "eps_cfg", "x0_pred", "x_prev")
BASES = ("identity", "random_block8")
PATHS = ("auto", "tail", "general")
GENERAL_MODES = ("auto", "rows", "columns")  # the general path's side of the Jacobian (method.gradsam.plan_general)
# Products per batched pass of the general path: an integer, or auto (method.plans.auto_chunk: as many as the
# UNet's largest explicit attention map allows within a memory budget, at most 64).
GENERAL_CHUNK = Rule(
    "'auto' or an integer >= 1",
    lambda v: v == "auto" or (is_integer(v) and v >= 1),
    hint="auto picks it from the UNet's attention sizes (8 at SD1.5's 512 px, 64 on the toy model)",
)
INDEX_MODES = ("clip_aligned", "word_index_raw")
INIT_LATENTS = ("noise", "noised_ref")
REF_NOISES = ("shared", "fresh")
STAGES = ("score", "mask")
SCOPES = ("per_channel", "global")


def is_list(value) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


LAYERS = Rule(
    "'last', 'all', 'res<k>' (every layer with a k x k map), a layer name or a non-empty list of layer names",
    lambda v: (isinstance(v, str) and v != "") or (is_list(v) and len(v) > 0 and all(isinstance(x, str) for x in v)),
    convert=lambda v: v if isinstance(v, str) else tuple(v),
)
INDICES = Rule(
    "a non-empty, strictly increasing list of integer schedule indices",
    lambda v: is_list(v) and len(v) > 0 and all(map(is_integer, v)) and all(a < b for a, b in pairwise(v)),
    convert=lambda v: tuple(int(i) for i in v),
)


@dataclass(frozen=True)
class DAAMConfig:
    """`daam`: which steps the DAAM map sums (Tang et al. 2022; castorini/daam sums the whole generation).

    causal: every step up to the scoring one (a map that can drive a mask); full: every step of the
    chain, as the package does (recorded once, after the last step: the attribution study only); both.
    """

    window: str = setting("causal", one_of(DAAM_WINDOWS))


@dataclass(frozen=True)
class ScoreConfig:
    """`method.score`: what is differentiated and how (docs/paper.md §2.3, B2, B3).

    kind: gradsam (the paper), attention_only (the subject's cross-attention at this step), daam
    (Tang et al. 2022 as castorini/daam aggregates it: per layer and head the subject's cross-attention
    summed over the steps so far, bicubic-upsampled, clamped at 0, averaged; never the mid block),
    noise_diff (DiffEdit's |eps(prompt) - eps(scene)|; `layers` unused), or the data-free chance maps
    centre_prior (minus the distance to the centre) and uniform (i.i.d. uniform cells from the sample's
    `method` stream), which the attribution study's faithfulness curves set beside the others.
    """

    kind: str = setting("gradsam", one_of(SCORE_KINDS))
    layers: str | tuple[str, ...] = setting("last", LAYERS)
    transform: str = setting("abs", one_of(TRANSFORM_NAMES))
    target: str = setting("eps_cond", one_of(TARGETS))
    vjp_basis: str = setting("identity", one_of(BASES))
    path: str = setting("auto", one_of(PATHS))
    chunk_size: int = setting(512, integer(1))
    general_chunk_size: int | str = setting("auto", GENERAL_CHUNK)
    general_mode: str = setting("auto", one_of(GENERAL_MODES))
    daam: DAAMConfig = setting(factory=DAAMConfig)

    def check(self, prefix: str) -> None:
        if self.kind == "daam" and self.daam.window != "causal":
            raise ConfigError(
                f"{prefix}.daam.window={self.daam.window} with {prefix}.kind=daam: a map that drives a mask can sum "
                f"only the steps so far. Fix: {prefix}.daam.window=causal (record the full window with "
                "method.attribution.daam.window=full)."
            )


@dataclass(frozen=True)
class SubjectConfig:
    """`method.subject`: how the subject word maps to CLIP columns (B4)."""

    index_mode: str = setting("clip_aligned", one_of(INDEX_MODES))


@dataclass(frozen=True)
class BlurConfig:
    """Depth-wise Gaussian blur (normalised kernel, zero padding, as the reference code)."""

    enabled: bool = setting(True, boolean())
    kernel: int = setting(3, integer(1, odd=True))
    sigma: float = setting(6.0, real(0.0, low_open=True, hint="to turn the blur off, set {node}.enabled=false instead"))
    stage: str = setting("score", one_of(STAGES))


@dataclass(frozen=True)
class DilationConfig:
    """Max filter (grey dilation of a score, binary dilation of a mask), `iterations` times."""

    enabled: bool = setting(True, boolean())
    kernel: int = setting(3, integer(1, odd=True))
    iterations: int = setting(3, integer(1, hint="to turn the dilation off, set {node}.enabled=false instead"))
    stage: str = setting("mask", one_of(STAGES))
    # true: `iterations` are in SD1.5's 64x64 latent units, round(iterations * h / 64) >= 1 at an h x h
    # latent (1 at the toy's 16x16). A departure from the paper, which dilates 3 times at any size.
    scale_aware: bool = setting(False, boolean())

    def reach(self, height: int) -> int:
        """The iterations applied at a latent of `height` rows."""
        return max(1, round(self.iterations * height / 64)) if self.scale_aware else self.iterations


@dataclass(frozen=True)
class AttributionConfig:
    """`method.attribution`: record the continuous, pre-threshold subject maps at each scoring step.

    Recording never changes the image: the maps come from extra, side-effect-free network calls.
    The method's own score is recorded one map per layer of its layer set; `kinds` adds other score
    kinds, one map per layer of `layers` (noise_diff: one map).
    """

    record: bool = setting(False, boolean())
    kinds: tuple[str, ...] = setting(
        (),
        Rule(
            f"a list of score kinds from {list(SCORE_KINDS)}",
            lambda v: is_list(v) and all(k in SCORE_KINDS for k in v),
            convert=tuple,
        ),
    )
    layers: str | tuple[str, ...] = setting("all", LAYERS)
    daam: DAAMConfig = setting(factory=DAAMConfig)  # the recorded daam kind's window(s)
    # true: also keep the chain's latent z_t at every denoising step in maps.npz, so that any map of any
    # kind can be recomputed later at the same inputs (the attribution study's sanity checks).
    latents: bool = setting(False, boolean())


@dataclass(frozen=True)
class MaskConfig:
    """`method.mask`: the paper's intended post-processing by default (docs/paper.md §2.4)."""

    threshold_k: float = setting(0.5, real())
    threshold_scope: str = setting("per_channel", one_of(SCOPES))
    # per_channel: each latent channel keeps its own cells (the paper); union: a cell kept in any channel
    # is kept in all; sum: the channel scores are summed, thresholded once, and the mask shared.
    channel_rule: str = setting("per_channel", one_of(CHANNEL_RULES))
    box_sum_once: bool = setting(False, boolean())
    # threshold: the paper's rule above; top_fraction: keep exactly the `keep_fraction` of latent cells with
    # the highest score (summed over channels), in every channel, with no blur, dilation or threshold (the
    # attribution study's faithfulness curves: the paper's operator at a chosen kept area).
    rule: str = setting("threshold", one_of(MASK_RULES))
    keep_fraction: float = setting(1.0, real(0.0, 1.0))
    blur: BlurConfig = setting(factory=BlurConfig)
    dilation: DilationConfig = setting(factory=DilationConfig)

    def check(self, prefix: str) -> None:
        if self.rule == "top_fraction" and (self.blur.enabled or self.dilation.enabled or self.box_sum_once):
            raise ConfigError(
                f"{prefix}.rule=top_fraction keeps exactly the top {prefix}.keep_fraction of cells, but blur, dilation "
                f"or box_sum_once is on. Fix: set {prefix}.blur.enabled=false, {prefix}.dilation.enabled=false and "
                f"{prefix}.box_sum_once=false with it."
            )
        if self.box_sum_once and (self.blur.enabled or self.dilation.enabled):
            raise ConfigError(
                f"{prefix}.box_sum_once=true with {prefix}.blur.enabled={str(self.blur.enabled).lower()} and "
                f"{prefix}.dilation.enabled={str(self.dilation.enabled).lower()}: box_sum_once is the reference "
                f"code's whole filter (B5) and replaces both. Fix: set {prefix}.blur.enabled=false and "
                f"{prefix}.dilation.enabled=false with it (variant=reference_code does)."
            )


@dataclass(frozen=True)
class GradSAMConfig:
    """`method`: the sampler's switches (docs/paper.md §2.2, B1, B11) and its three sub-nodes."""

    strength: float = setting(0.9, real(0.0, 1.0, low_open=True, hint="1.0 = from pure noise"))
    injection_indices: tuple[int, ...] = setting((5, 18, 28), INDICES)
    init_latent: str = setting("noise", one_of(INIT_LATENTS))
    ref_noise: str = setting("shared", one_of(REF_NOISES))
    manipulate: bool = setting(True, boolean())
    score: ScoreConfig = setting(factory=ScoreConfig)
    subject: SubjectConfig = setting(factory=SubjectConfig)
    mask: MaskConfig = setting(factory=MaskConfig)
    attribution: AttributionConfig = setting(factory=AttributionConfig)
