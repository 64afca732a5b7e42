"""What every dataset yields: reference images, each with the prompts to run on it."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from bench.sd.errors import ConfigError
from bench.sd.methods import Sample


@dataclass(frozen=True)
class PromptSpec:
    """A protocol prompt and its subject word (the noun Grad-SAM explains)."""

    text: str
    subject: str


@dataclass(frozen=True)
class ReferenceImage:
    """One reference scene: the protocol runs every prompt of its subcategory on it."""

    image_id: str  # stable across runs, e.g. "forest/00003"
    category: str
    subcategory: str
    prompts: tuple[PromptSpec, ...]
    source: str  # a file path, or a description of how the image was drawn
    loader: Callable[[], Image.Image] = field(repr=False, compare=False, hash=False)

    def load(self) -> Image.Image:
        """The image as stored (any mode and size); `to_model_input` converts it."""
        return self.loader()


def sample_key(image_id: str, prompt: str, seed: int) -> str:
    """Stable relative path of a sample, e.g. forest/00003/deer_roaming/s51828."""
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")
    return f"{image_id}/{slug}/s{seed}"


class DatasetError(RuntimeError):
    """A reference image or folder that cannot be used, named in the message."""


@dataclass(frozen=True)
class WorkUnit:
    """One sample's identity: (reference image, prompt, seed). Its randomness depends on nothing else."""

    image: ReferenceImage
    prompt: PromptSpec
    seed: int

    @property
    def key(self) -> str:
        return sample_key(self.image.image_id, self.prompt.text, self.seed)

    def sample(self, reference: np.ndarray) -> Sample:
        """The method's view of this unit: its identity and the reference at model resolution."""
        image, prompt = self.image, self.prompt
        return Sample(image.image_id, prompt.text, prompt.subject, self.seed, reference, scene=image.subcategory)


class DrawnDataset:
    """A procedurally drawn dataset on a protocol: image k of each subcategory is `draw(subcategory, k)`.

    Subclasses set `kind` (the start of each reference's `source`) and define `draw`; `prompted` may
    replace the protocol's prompts (the toy world does).
    """

    kind = "drawn"

    def __init__(
        self,
        name: str,
        protocol: Mapping,
        seed: int = 0,
        image_size: int = 64,
        images_per_subcategory: int = 2,
        subcategories: Sequence[str] | None = None,
        prompts_per_subcategory: int | None = None,
    ):
        if images_per_subcategory < 1:
            raise ConfigError(f"dataset.images_per_subcategory={images_per_subcategory}; expected >= 1.")
        if image_size < 16:
            raise ConfigError(f"dataset.image_size={image_size}; expected >= 16 pixels.")
        self.name, self.seed, self.image_size = name, seed, image_size
        self.images_per_subcategory = images_per_subcategory
        self.entries = protocol_subcategories(self.prompted(protocol), subcategories, prompts_per_subcategory)

    def prompted(self, protocol: Mapping) -> Mapping:
        """The protocol whose prompts this dataset uses (as given, unless a subclass replaces them)."""
        return protocol

    def draw(self, subcategory: str, k: int) -> np.ndarray:
        """Image k of `subcategory`, RGB uint8 [S, S, 3]."""
        raise NotImplementedError

    def references(self) -> list[ReferenceImage]:
        """Every reference image, in protocol order; its source names the drawing and the image index."""
        source = f"{self.kind}:seed={self.seed},size={self.image_size}"
        refs = []
        for entry in self.entries:
            sub = entry["subcategory"]
            for k in range(self.images_per_subcategory):
                refs.append(
                    ReferenceImage(
                        image_id=f"{sub}/{k:05d}",
                        category=entry["category"],
                        subcategory=sub,
                        prompts=entry["prompts"],
                        source=f"{source},k={k}",
                        loader=lambda s=sub, k=k: Image.fromarray(self.draw(s, k)),
                    )
                )
        return refs


def protocol_subcategories(
    protocol: Mapping,
    subcategories: Sequence[str] | None,
    prompts_per_subcategory: int | None,
) -> list[dict]:
    """The protocol's subcategories (all, or the named ones), each with its prompts (all, or the first k)."""
    entries = list(protocol["subcategories"])
    known = [e["subcategory"] for e in entries]
    if subcategories is not None:
        unknown = [s for s in subcategories if s not in known]
        if unknown:
            raise ConfigError(
                f"dataset.subcategories has {unknown}, which protocol={protocol['name']} does not define. "
                f"Allowed: {known} (or null for all)."
            )
        entries = [e for e in entries if e["subcategory"] in subcategories]
    if prompts_per_subcategory is not None and prompts_per_subcategory < 1:
        raise ConfigError(
            f"dataset.prompts_per_subcategory={prompts_per_subcategory}; expected null (all) or an integer >= 1."
        )
    out = []
    for e in entries:
        prompts = [PromptSpec(text=p["text"], subject=p["subject"]) for p in e["prompts"]]
        for p in prompts:
            if p.subject not in p.text.split():
                raise ConfigError(
                    f"prompt {p.text!r} has subject {p.subject!r}, which is not one of its words. "
                    "Fix the protocol file (conf/protocol/)."
                )
        if prompts_per_subcategory is not None:
            prompts = prompts[:prompts_per_subcategory]
        out.append({**e, "prompts": tuple(prompts)})
    return out


def to_model_input(image: Image.Image, size: int, resample: str = "bicubic") -> tuple[np.ndarray, str]:
    """Convert any PIL image to RGB uint8 [size, size, 3]; also return what was done to it.

    Grayscale, RGBA (composited on white: Places365 has none, user folders may), palette and CMYK
    images are converted; any size is resized with `resample` (the reference code's PIL default,
    bicubic). The returned note records the conversion in the sample row.
    """
    filters = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS}
    if resample not in filters:
        raise ConfigError(f"resample={resample!r}; expected one of {sorted(filters)}.")
    notes = []
    if image.mode != "RGB":
        notes.append(f"mode {image.mode}->RGB")
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(canvas, rgba).convert("RGB")
        else:
            image = image.convert("RGB")
    if image.size != (size, size):
        notes.append(f"resize {image.size[0]}x{image.size[1]}->{size}x{size} {resample}")
        image = image.resize((size, size), filters[resample])
    return np.asarray(image, dtype=np.uint8).copy(), "; ".join(notes) or "none"


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (for manifests)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
