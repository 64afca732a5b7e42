"""The interface every Table 1 row implements, and the sample it is called on."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from bench.sd.diffusion import SamplingConfig, check_strength, decode_checked
from bench.sd.maps import LatentRecord, MapRecord
from bench.sd.seeding import sample_generator

if TYPE_CHECKING:  # annotations only: the datasets and the tables use Sample without importing diffusers
    from bench.sd.backbone import Backbone


@dataclass(frozen=True, eq=False)
class Sample:
    """What a method receives for one sample: its identity (image, prompt, seed) and its reference.

    The sample's randomness depends on its identity alone: `generator(stream)` gives a fresh CPU
    generator per purpose (bench/sd/seeding.py), whatever the batch, the order or the shard.
    """

    image_id: str  # stable across runs, e.g. "forest/00003"
    prompt: str
    subject: str  # the prompt's subject word (the noun Grad-SAM explains)
    seed: int
    reference: np.ndarray  # uint8 [H, W, 3] at model resolution
    scene: str = ""  # the reference's subcategory, e.g. "inland_water_body"

    def generator(self, stream: str) -> torch.Generator:
        return sample_generator(self.image_id, self.prompt, self.seed, stream)


@dataclass
class Generated:
    """What a method returns for one sample."""

    image: np.ndarray | None  # uint8 [H, W, 3]; None when the sample failed
    info: dict = field(default_factory=dict)  # extra row columns, e.g. mask_kept_i0
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [h, w] or [C, h, w], saved as PNG
    maps: list[MapRecord] = field(default_factory=list)  # continuous subject maps (method.attribution.record)
    latents: list[LatentRecord] = field(default_factory=list)  # the chain's z_t per step (method.attribution.latents)
    failure: str | None = None


class Method(ABC):
    """A way of making an image from (reference, prompt, seed) with a Stable Diffusion backbone."""

    name: str
    label: str
    uses_reference: bool = True
    makes_mask: bool = False  # True: every generated sample has `masks["subject_mask"]` (the mask columns score it)

    def columns(self) -> dict:
        """The method's choices that affect the image, as row columns (prefix `method.`)."""
        return {}

    def check(self, sampling: SamplingConfig) -> None:
        """Rules that need the sampling protocol but no model; run before anything is written."""
        strength = getattr(self, "strength", None)
        if strength is not None:
            check_strength(strength, sampling)

    def preflight(self, backbone: Backbone, samples: list[Sample]) -> None:
        """Rules that need the model (tokenizer window, layer names); run before any sample is generated."""
        return None  # none by default

    @abstractmethod
    def generate(self, backbone: Backbone, samples: list[Sample], sampling: SamplingConfig) -> list[Generated]:
        """Images for a batch of samples, each from its own generators."""


def finite_or_failure(z: torch.Tensor) -> list[str | None]:
    """Per sample: None if the latent [B, ...] is finite, else the reason it failed."""
    bad = ~torch.isfinite(z.flatten(1)).all(dim=1)
    return [
        f"non-finite latent ({int((~torch.isfinite(z[b])).sum())} NaN/inf values)" if bad[b] else None
        for b in range(len(z))
    ]


def images_or_failures(backbone: Backbone, z: torch.Tensor) -> list[Generated]:
    """Decode finite latents; mark the others failed with the reason, and those whose pixels are not finite."""
    failures = finite_or_failure(z)
    images, pixel_failures = decode_checked(backbone, z.nan_to_num())
    failures = [f or p for f, p in zip(failures, pixel_failures, strict=True)]
    return [
        Generated(image=None, failure=f) if f else Generated(image=img) for img, f in zip(images, failures, strict=True)
    ]
