"""The attribution study's seam into a chain: a recorder of continuous, pre-threshold subject maps.

A sampler that scores (GradSAM, BlendedLatent) hands its recorder every denoising step (`observe`,
with the index k of the latent the step makes), at each scoring step the map its mask is
thresholded from (`scored`), and the end of the chain (`finish`). `MapRecorder`
(method.attribution.record=true) keeps that map and adds, per layer of `method.attribution.layers`,
the maps of every kind in `method.attribution.kinds` (noise_diff and the chance kinds: one map),
each computed by extra, side-effect-free network calls: the image never changes. DAAM's window
(`method.attribution.daam.window`): causal maps at each scoring step, the full-generation map once at
the end (index = the schedule's length), or both. With `method.attribution.latents` it also keeps
the chain's z_t at every step, so the study can recompute any map later at the same inputs. What it
keeps are `MapRecord`s and `LatentRecord`s (bench/sd/maps.py), saved as masks/<sample>/maps.npz.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.sd.maps import LatentRecord, MapRecord
from bench.sd.methods import Sample
from method.attention import layer_resolutions
from method.config import AttributionConfig, ScoreConfig
from method.gradsam import ScoreInputs
from method.kinds import ScoreKind, layers_on, scene_embeddings, score_kind

if TYPE_CHECKING:  # annotations only (importing diffusers costs seconds)
    from bench.sd.backbone import Backbone


class ChainRecorder:
    """What a scoring sampler tells an observer; the default records nothing."""

    def observe(self, sample: int, k: int, inputs: ScoreInputs) -> None:
        """Sample `sample` enters the denoising step that makes z at t_k (inputs: its z_t, t and prompt)."""

    def scored(self, sample: int, own: MapRecord, inputs: ScoreInputs) -> None:
        """Sample `sample` thresholded `own` (the method's map) into its mask at that scoring step."""

    def finish(self, sample: int) -> None:
        """Sample `sample`'s chain has ended."""

    def records(self, sample: int) -> list[MapRecord]:
        """Every map recorded for sample `sample`, in order."""
        return []

    def latents(self, sample: int) -> list[LatentRecord]:
        """The latents kept for sample `sample`, in step order."""
        return []


@dataclass(frozen=True)
class Schedule:
    """What the recorder needs of the chain's schedule."""

    last_score: int  # the last scoring index: causal kinds need no step after it
    length: int  # L, the number of denoising steps: the full-window DAAM map's index


class MapRecorder(ChainRecorder):
    """Records the method's own map and, per layer, the maps of the kinds of each sample."""

    def __init__(
        self, config: AttributionConfig, kinds: list[dict[str, ScoreKind]], sides: Mapping[str, int], schedule: Schedule
    ):
        """`kinds`: per sample of the batch, {kind name: its ScoreKind}; `sides`: each layer's map side."""
        self.config, self.kinds, self.sides, self.schedule = config, kinds, dict(sides), schedule
        self.kept: list[list[MapRecord]] = [[] for _ in kinds]
        self.steps: list[list[LatentRecord]] = [[] for _ in kinds]
        self.last: list[ScoreInputs | None] = [None for _ in kinds]

    @property
    def full_daam(self) -> bool:
        return self.config.daam.window in ("full", "both") and "daam" in self.config.kinds

    def observe(self, sample: int, k: int, inputs: ScoreInputs) -> None:
        if self.config.latents:
            z_t = inputs.latents[0].float().cpu().numpy()
            self.steps[sample].append(LatentRecord(k - 1, int(inputs.timestep), z_t))
        for name, kind in self.kinds[sample].items():
            if k <= self.schedule.last_score or (name == "daam" and self.full_daam):
                kind.observe(inputs)
        self.last[sample] = inputs

    def scored(self, sample: int, own: MapRecord, inputs: ScoreInputs) -> None:
        """Keep `own`, then every recorded kind's per-layer maps at the same UNet call (tokens summed)."""
        self.kept[sample].append(own)
        for name, kind in self.kinds[sample].items():
            if name != "daam" or self.config.daam.window in ("causal", "both"):
                self.keep(sample, name, kind, inputs, (own.index, own.timestep))

    def finish(self, sample: int) -> None:
        """The full-window DAAM maps, once, at index L (the steps of the whole chain summed)."""
        inputs = self.last[sample]
        if self.full_daam and inputs is not None:
            self.keep(sample, "daam", self.kinds[sample]["daam"], inputs, (self.schedule.length, int(inputs.timestep)))

    def keep(self, sample: int, name: str, kind: ScoreKind, inputs: ScoreInputs, when: tuple[int, int]) -> None:
        """Append `kind`'s per-layer maps at `when` = (index, timestep), each summed over the subject's tokens."""
        for layer, score in kind.per_layer(inputs).items():
            side = self.sides[layer] if layer is not None else inputs.grid[1]
            values = score.sum(dim=0).float().cpu().numpy()  # [C, h, w]: one subject word
            self.kept[sample].append(MapRecord(name, layer, None, *when, side, values))

    def records(self, sample: int) -> list[MapRecord]:
        return list(self.kept[sample])

    def latents(self, sample: int) -> list[LatentRecord]:
        return list(self.steps[sample])


def attribution_recorder(
    config: AttributionConfig, score: ScoreConfig, backbone: Backbone, samples: list[Sample], schedule: Schedule
) -> ChainRecorder:
    """The recorder `config` (method.attribution) asks for, for a batch of `samples` on `backbone`:
    `record=false` gives one that records nothing. Recorded gradsam maps use the method's `score` settings."""
    if not config.record:
        return ChainRecorder()
    scenes = scene_embeddings(backbone, samples) if "noise_diff" in config.kinds else None
    kinds = [
        {
            kind: score_kind(kind, score, layers_on(backbone, "all" if kind == "noise_diff" else config.layers), scene)
            for kind in config.kinds
        }
        for scene in (scenes if scenes is not None else [None] * len(samples))
    ]
    return MapRecorder(config, kinds, layer_resolutions(backbone.unet, backbone.latent_size), schedule)
