"""The interface every Table 1 row implements, and the unit of work it is called on."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import torch

from bench.backbone import Backbone
from bench.datasets.base import PromptSpec, ReferenceImage
from bench.diffusion import SamplingConfig, decode_latents
from bench.seeding import sample_generator


@dataclass(frozen=True)
class WorkUnit:
    """One sample's identity: (reference image, prompt, seed). Its randomness depends on nothing else."""

    image: ReferenceImage
    prompt: PromptSpec
    seed: int

    @property
    def key(self) -> str:
        """Stable relative path of the sample, e.g. forest/00003/deer_roaming/s51828."""
        slug = re.sub(r"[^a-z0-9]+", "_", self.prompt.text.lower()).strip("_")
        return f"{self.image.image_id}/{slug}/s{self.seed}"

    def generator(self, stream: str) -> torch.Generator:
        return sample_generator(self.image.image_id, self.prompt.text, self.seed, stream)


@dataclass
class Sample:
    """What a method receives: the unit and its reference image at model resolution."""

    unit: WorkUnit
    reference: np.ndarray  # uint8 [H, W, 3]


@dataclass
class Generated:
    """What a method returns for one sample."""

    image: np.ndarray | None  # uint8 [H, W, 3]; None when the sample failed
    info: dict = field(default_factory=dict)  # extra row columns, e.g. mask_kept_i0
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [h, w] or [C, h, w], saved as PNG
    failure: str | None = None


class Method(ABC):
    """A way of making an image from (reference, prompt, seed) with a Stable Diffusion backbone."""

    name: str
    label: str
    uses_reference: bool = True

    def columns(self) -> dict:
        """The method's choices that affect the image, as row columns (prefix `method.`)."""
        return {}

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
    """Decode finite latents; mark the others failed with the reason (the run goes on)."""
    failures = finite_or_failure(z)
    images = decode_latents(backbone, z.nan_to_num())
    return [
        Generated(image=None, failure=f) if f else Generated(image=img) for img, f in zip(images, failures, strict=True)
    ]
