"""The attribution study's seam into a chain: a recorder of continuous, pre-threshold subject maps.

A sampler that scores (GradSAM, BlendedLatent) hands its recorder each denoising step up to the last
scoring step (`observe`) and, at each scoring step, the map its mask is thresholded from (`scored`).
`MapRecorder` (method.attribution.record=true) keeps that map and adds, per layer of
`method.attribution.layers`, the maps of every kind in `method.attribution.kinds` (noise_diff: one
map), each computed by extra, side-effect-free network calls: the image never changes. What it keeps
are `MapRecord`s (bench/sd/maps.py), saved as masks/<sample>/maps.npz. docs/attribution.md reads them.
"""

from __future__ import annotations

from collections.abc import Mapping

from bench.sd.backbone import Backbone
from bench.sd.maps import MapRecord
from bench.sd.methods import Sample
from method.attention import layer_resolutions
from method.config import AttributionConfig, ScoreConfig
from method.gradsam import ScoreInputs
from method.kinds import ScoreKind, layers_on, scene_embeddings, score_kind


class ChainRecorder:
    """What a scoring sampler tells an observer; the default records nothing."""

    def observe(self, sample: int, inputs: ScoreInputs) -> None:
        """Sample `sample` passed a denoising step at or before the last scoring step."""

    def scored(self, sample: int, own: MapRecord, inputs: ScoreInputs) -> None:
        """Sample `sample` thresholded `own` (the method's map) into its mask at that scoring step."""

    def records(self, sample: int) -> list[MapRecord]:
        """Everything recorded for sample `sample`, in order."""
        return []


class MapRecorder(ChainRecorder):
    """Records the method's own map and, per layer, the maps of the kinds of each sample."""

    def __init__(self, kinds: list[dict[str, ScoreKind]], sides: Mapping[str, int]):
        """`kinds`: per sample of the batch, {kind name: its ScoreKind}; `sides`: each layer's map side."""
        self.kinds, self.sides = kinds, dict(sides)
        self.kept: list[list[MapRecord]] = [[] for _ in kinds]

    def observe(self, sample: int, inputs: ScoreInputs) -> None:
        for kind in self.kinds[sample].values():
            kind.observe(inputs)

    def scored(self, sample: int, own: MapRecord, inputs: ScoreInputs) -> None:
        """Keep `own`, then every recorded kind's per-layer maps at the same UNet call (tokens summed)."""
        self.kept[sample].append(own)
        for name, kind in self.kinds[sample].items():
            for layer, score in kind.per_layer(inputs).items():
                side = self.sides[layer] if layer is not None else own.side
                values = score.sum(dim=0).float().cpu().numpy()  # [C, h, w]: one subject word
                self.kept[sample].append(MapRecord(name, layer, None, own.index, own.timestep, side, values))

    def records(self, sample: int) -> list[MapRecord]:
        return list(self.kept[sample])


def attribution_recorder(
    config: AttributionConfig, score: ScoreConfig, backbone: Backbone, samples: list[Sample]
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
    return MapRecorder(kinds, layer_resolutions(backbone.unet, backbone.latent_size))
