"""What every dataset yields: reference images, each with the prompts to run on it."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from bench.sd.errors import ConfigError
from bench.sd.methods import Sample


@dataclass(frozen=True)
class PromptSpec:
    """A protocol prompt and its subject word (the noun Grad-SAM explains).

    Both are normalised to Unicode NFC here, the one door every dataset's prompts pass: two spellings of one
    text (a precomposed 'é' and 'e' + a combining accent) are one prompt, with one sample key and one row.
    """

    text: str
    subject: str

    def __post_init__(self) -> None:
        for name in ("text", "subject"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ConfigError(f"prompt {name} {value!r} is not a string. Fix the protocol file (conf/protocol/).")
            object.__setattr__(self, name, unicodedata.normalize("NFC", value))


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
    return f"{image_id}/{prompt_slug(prompt)}/s{seed}"


def prompt_slug(prompt: str) -> str:
    """A prompt's folder name: safe (a-z, 0-9, _ and -, at most 73 characters) in any alphabet.

    A printable-ASCII prompt keeps its plain slug ("Deer roaming" -> deer_roaming), as ever; any other
    prompt (another alphabet, control characters, no letter or digit, a slug over 100 characters) gets
    its readable part plus 12 hex digits of the prompt's sha256 ("Cerf en forêt" -> cerf_en_for_t-<hash>).
    A plain slug has no '-', so the two kinds never meet; two ASCII prompts that differ only in case or
    punctuation share a slug, and `bench.task.plan_work` refuses that pair by name.
    """
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")
    if prompt.isascii() and prompt.isprintable() and slug and len(slug) <= 100:
        return slug
    readable = slug[:60].strip("_") or "prompt"
    return f"{readable}-{hashlib.sha256(prompt.encode('utf-8')).hexdigest()[:12]}"


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


class Dataset:
    """A source of reference scenes (config group `dataset`): its references and its declared features.

    A run reads the features plainly: `records_truth` (a run records subject truth by default,
    `truth_record.enabled=auto`) and `manifest()` (the files used, written to the run's manifest.csv).
    """

    name: str
    # Real images, whose subjects only a segmenter finds: a run records their subject truth by default.
    records_truth: bool = False

    def references(self) -> list[ReferenceImage]:
        """Every reference image, in protocol order."""
        raise NotImplementedError

    def manifest(self) -> list[dict] | None:
        """One row per file used (e.g. with its sha256), or None when no file is read (drawn scenes)."""
        return None


class DrawnDataset(Dataset):
    """A procedurally drawn dataset on a protocol: image k of each subcategory is `draw(subcategory, k)`.

    Subclasses set `kind` (the start of each reference's `source`) and define `draw`; `prompted` may
    replace the protocol's prompts (the toy world does). Drawn scenes are read from no file (no manifest)
    and record no subject truth by default.
    """

    kind = "drawn"
    records_truth = False

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


# Largest reference decoded (pixels): 8192 x 8192. PIL's own bomb guard warns at 89 MP and refuses
# at 179 MP; an image this large is never a scene photo, and decoding it may exhaust memory.
MAX_REFERENCE_PIXELS = 8192 * 8192
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
EXIF_ORIENTATION = 0x0112
OVERSIZE_FIX = "Downscale the file (any size of a few megapixels is plenty) or remove it, then run again."


def open_bounded(path: str | Path) -> Image.Image:
    """Decode an image file whole, refusing one larger than MAX_REFERENCE_PIXELS from its header alone.

    A truncated or corrupt file raises OSError naming it; an oversized one DatasetError naming it.
    """
    try:
        with Image.open(path) as image:
            check_pixel_count(image, str(path))
            image.load()
            return image
    except Image.DecompressionBombError as exc:
        raise DatasetError(f"reference image {path} is too large to decode safely ({exc}). {OVERSIZE_FIX}") from None
    except OSError as exc:
        raise OSError(f"{path}: {exc}") from exc


def check_pixel_count(image: Image.Image, where: str) -> None:
    width, height = image.size
    if width * height > MAX_REFERENCE_PIXELS:
        raise DatasetError(
            f"reference image {where} is {width}x{height} pixels, more than the {MAX_REFERENCE_PIXELS} "
            f"(8192x8192) decoded at most (a decompression bomb, or a huge scan). {OVERSIZE_FIX}"
        )


def to_eight_bit(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """A 16-bit grayscale image (PIL modes I;16*, and I holding 0..65535) scaled to 8 bits (x 255/65535)."""
    if image.mode not in SIXTEEN_BIT_MODES:
        if image.mode == "F":
            raise ValueError("floating-point images (PIL mode F) have no defined range; save it as 8 or 16-bit")
        return image, []
    values = np.asarray(image).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"mode {image.mode} with values outside 0..65535; save it as an 8 or 16-bit image")
    scaled = np.round(values * (255.0 / 65535.0)).astype(np.uint8)
    return Image.fromarray(scaled, "L"), [f"mode {image.mode} 16-bit->8-bit (x255/65535)"]


def apply_exif_orientation(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """Rotate/flip as the EXIF Orientation tag says (cameras store photos sideways and set it)."""
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    if orientation in (None, 1):
        return image, []
    return ImageOps.exif_transpose(image), [f"exif orientation {orientation} applied"]


def to_model_input(image: Image.Image, size: int, resample: str = "bicubic") -> tuple[np.ndarray, str]:
    """Convert any PIL image to RGB uint8 [size, size, 3]; also return what was done to it.

    The EXIF orientation is applied; 16-bit grayscale is scaled to 8 bits; grayscale, RGBA (composited
    on white: Places365 has none, user folders may), palette and CMYK images are converted; any size
    is resized with `resample` (the reference code's PIL default, bicubic). The returned note records
    every step in the sample row (`reference_conversion`).
    """
    filters = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS}
    if resample not in filters:
        raise ConfigError(f"resample={resample!r}; expected one of {sorted(filters)}.")
    check_pixel_count(image, "(in memory)")
    image, notes = apply_exif_orientation(image)
    image, depth = to_eight_bit(image)
    notes += depth
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


def safe_image_ids(names: Sequence[str]) -> list[str]:
    """Per file name, an id that is one safe path part, distinct for distinct names.

    A plain stem (letters, digits, . _ -, starting with a letter or digit) that no other name shares
    stays as it is (Places365_val_00000001); any other gets its readable part plus 8 hex digits of the
    name's sha256 ("ète 1.jpg" -> "te_1-3f2a9c01").
    """
    stems = [Path(n).stem for n in names]
    counts = Counter(stems)  # linear in the number of files (a folder may hold tens of thousands)
    out = []
    for name, stem in zip(names, stems, strict=True):
        if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}", stem) and counts[stem] == 1:
            out.append(stem)
        else:
            readable = re.sub(r"[^A-Za-z0-9]+", "_", stem).strip("_")[:60] or "image"
            out.append(f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:8]}")
    return out


def reference_digest(pixels: np.ndarray) -> str:
    """Hex sha256 of a reference as the model sees it (uint8 [S, S, 3] after `to_model_input`), with its shape:
    the key a run checks a reference against, so re-encoding a file with the same pixels changes nothing."""
    array = np.ascontiguousarray(pixels, dtype=np.uint8)
    return hashlib.sha256(f"{array.shape}".encode() + array.tobytes()).hexdigest()


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (for manifests)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
