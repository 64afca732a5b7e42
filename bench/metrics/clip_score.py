"""CLIP score through open_clip: 100 * max(cos(image, text), 0) (the torchmetrics CLIPScore convention).

docs/paper.md §4.4: the paper's CLIP code is not public; its values (~28) fit torchmetrics' CLIPScore
(default openai ViT-L/14, 100 * max(cos, 0)), which is the default here. The text is the exact prompt,
tokenised with the CLIP BPE (77 tokens: longer prompts are truncated and flagged). The image is, by
default, the generated image after the code's save (256x256 JPEG q75), as the paper scored it.

`arch=tiny_random` builds an open_clip CLIP from a small config with seeded random weights: it runs
offline and exercises the whole path, but its numbers mean nothing; every row and table says so.
`arch=toy` is the open_clip model trained on the toy world (bench/toy/clip.py, models/toy/clip).
`arch=auto` is tiny_random with model=tiny (the random backbone), toy with model=toy, else ViT-L-14.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.metrics import CLIP_SCORE
from bench.metrics.common import SampleContext, nan_result, resolve_device
from bench.metrics.inception import MissingWeightsError, is_offline
from bench.metrics.paper_io import paper_saved_image
from bench.sd.errors import ConfigError

TINY_RANDOM = "tiny_random"
TOY = "toy"  # the open_clip model trained on the toy world (bench/toy/clip.py, models/toy/clip)
CONTEXT_LENGTH = 77
# A CLIP with the real tokenizer (vocabulary 49408, 77 positions) and small towers.
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def clip_score_from_embeddings(image_embedding: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
    """[B, D], [B, D] -> [B] scores 100 * max(cos, 0) (embeddings need not be normalised)."""
    cos = torch.nn.functional.cosine_similarity(image_embedding.double(), text_embedding.double(), dim=-1)
    return 100.0 * cos.clamp(min=0.0)


def resolve_arch(arch: str, backbone_name: str | None) -> str:
    if arch == "auto":
        return {"tiny": TINY_RANDOM, "toy": TOY}.get(backbone_name, "ViT-L-14")
    return arch


class CLIPScore:
    """Per-sample metric `clip_score` (higher = image closer to the prompt). The model loads in `prepare`, which a
    run calls before its first sample (else on first use)."""

    name = CLIP_SCORE

    def __init__(
        self,
        arch: str = "auto",
        pretrained: str = "openai",
        weights_path: str | None = None,
        backbone_name: str | None = None,
        paper_jpeg: bool = True,
        jpeg_size: int = 256,
        jpeg_quality: int = 75,
        tiny_seed: int = 0,
        device: str = "auto",
    ):
        self.arch = resolve_arch(arch, backbone_name)
        self.pretrained = self.arch if self.arch in (TINY_RANDOM, TOY) else pretrained
        self.paper_jpeg, self.jpeg_size, self.jpeg_quality = paper_jpeg, jpeg_size, jpeg_quality
        self.tiny_seed = tiny_seed
        self.device = resolve_device(device)
        local = (TINY_RANDOM, TOY)
        self.weights = None if self.arch in local else find_clip_weights(self.arch, pretrained, weights_path)
        self._model = self._preprocess = self._tokenizer = None

    @property
    def model_label(self) -> str:
        if self.arch == TINY_RANDOM:
            return f"tiny_random (seeded {self.tiny_seed}, NOT real CLIP: numbers are meaningless)"
        if self.arch == TOY:
            return "toy (open_clip trained on the toy world, models/toy/clip; 64 px input in [-1, 1])"
        return f"open_clip {self.arch}/{self.pretrained}"

    @property
    def provenance(self) -> str:
        image = f"JPEG q{self.jpeg_quality} {self.jpeg_size}px" if self.paper_jpeg else "PNG as generated"
        if self.arch == TOY:
            from bench.metrics.toy_clip import PREPROCESSING

            preprocessing = PREPROCESSING
        else:
            preprocessing = "open_clip's preprocessing of the model (resize, center crop, CLIP mean/std)"
        return (
            f"open_clip_torch {metadata.version('open_clip_torch')}; model {self.model_label}; "
            f"activation {self.activation}; 100*max(cos,0) (torchmetrics convention); prompt: CLIP BPE, truncated "
            f"to {CONTEXT_LENGTH} tokens; image: {image}, {preprocessing}"
        )

    @property
    def activation(self) -> str:
        """The transformer's activation as built: QuickGELU (OpenAI-trained weights) or GELU."""
        if self._model is None:
            return "not loaded yet"
        import open_clip

        quick = any(isinstance(m, open_clip.transformer.QuickGELU) for m in self._model.modules())
        return "QuickGELU" if quick else "GELU"

    def quick_gelu(self) -> bool:
        """Whether the weights were trained with QuickGELU: their tag says so, or the arch is a -quickgelu one.

        open_clip applies a tag's activation only as a warning; a weights file carries none. So it is
        forced here whatever way the weights arrive (the tag, the hub cache, or metrics.clip_weights).
        """
        import open_clip

        tag = open_clip.get_pretrained_cfg(self.arch, self.pretrained) or {}
        return bool(tag.get("quick_gelu")) or self.arch.lower().endswith("-quickgelu")

    def _load(self) -> None:
        import open_clip

        if self.arch == TINY_RANDOM:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.tiny_seed)
                model = open_clip.model.CLIP(**TINY_CONFIG)
            self._preprocess = open_clip.transform.image_transform(TINY_CONFIG["vision_cfg"]["image_size"], False)
            self._tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=CONTEXT_LENGTH)
        elif self.arch == TOY:
            from bench.metrics.toy_clip import scoring_components

            model, self._preprocess, self._tokenizer = scoring_components()
        else:
            model, _, self._preprocess = open_clip.create_model_and_transforms(
                self.arch,
                pretrained=self.weights or self.pretrained,
                force_quick_gelu=self.quick_gelu(),  # neither a tag nor a file path applies it by itself
                device=self.device,
            )
            self._tokenizer = open_clip.get_tokenizer(self.arch)
        self._model = model.to(self.device).eval()

    def prepare(self) -> None:
        """Load the model now (the run calls this before its first sample): weights that cannot load raise
        MissingWeightsError naming them, instead of a NaN score in every row."""
        if self._model is not None:
            return
        try:
            self._load()
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - open_clip, torch and safetensors each raise their own kind
            from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

            source = f"metrics.clip_weights={self.weights!r}" if self.weights else f"the weights of {self.model_label}"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise MissingWeightsError(
                f"{source} cannot be loaded as the CLIP model metrics.clip={self.arch} ({type(exc).__name__}: "
                f"{first}). Nothing was generated. Fix: point metrics.clip_weights at an open_clip weights file of "
                f"that architecture ({HF_SAFE_WEIGHTS_NAME} or {HF_WEIGHTS_NAME}), or set it to null to use the "
                "cached tag, or choose another metrics.clip."
            ) from exc

    @torch.no_grad()
    def score(self, image: np.ndarray, prompt: str) -> tuple[float, bool]:
        """(100 * max(cos, 0), whether the prompt was truncated) for one RGB uint8 image."""
        if self._model is None:
            self._load()
        truncated = len(self._tokenizer.encode(prompt)) > CONTEXT_LENGTH - 2  # minus <start>, <end>
        tokens = self._tokenizer([prompt]).to(self.device)  # [1, 77], truncated by the tokenizer
        pixels = self._preprocess(Image.fromarray(image)).unsqueeze(0).to(self.device)  # [1, 3, S, S]
        score = clip_score_from_embeddings(self._model.encode_image(pixels), self._model.encode_text(tokens))
        return float(score[0]), truncated

    def __call__(self, sample: SampleContext) -> dict:
        try:
            image = sample.generated
            image = paper_saved_image(image, self.jpeg_size, self.jpeg_quality) if self.paper_jpeg else image
            value, truncated = self.score(image, sample.prompt)
            return {self.name: value, "clip_prompt_truncated": int(truncated), "clip_model": self.model_label}
        except Exception as exc:  # noqa: BLE001 - a metric failure must not lose the row
            return nan_result(self.name, f"{type(exc).__name__}: {exc}")


def find_clip_weights(arch: str, pretrained: str, weights_path: str | None) -> str | None:
    """The user's weights file, or None to load the `pretrained` tag (cached, or fetched when online).

    Raises MissingWeightsError offline when the tag's file is not cached, before any generation starts.
    """
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if arch not in open_clip.list_models():
        raise ConfigError(f"metrics.clip={arch!r} is not an open_clip model. Fix: e.g. ViT-L-14 or {TINY_RANDOM}.")
    if weights_path:
        if not Path(weights_path).is_file():
            raise MissingWeightsError(
                f"metrics.clip_weights={weights_path!r} is not a file. Fix: give the path of an open_clip weights "
                f"file of metrics.clip={arch} ({HF_SAFE_WEIGHTS_NAME} or {HF_WEIGHTS_NAME}), or null."
            )
        return str(weights_path)
    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ConfigError(f"metrics.clip_pretrained={pretrained!r} is not a tag of {arch}. Fix: one of {tags}.")
    if not is_offline() or _is_cached(cfg):
        return None
    source = cfg.get("hf_hub") or cfg.get("url", "")
    raise MissingWeightsError(
        f"CLIP weights for metrics.clip={arch} metrics.clip_pretrained={pretrained} are not on this machine "
        f"(open_clip fetches them from {source}; offline: HF_HUB_OFFLINE=1). Provide one of: "
        f"metrics.clip_weights=/path/to/{HF_SAFE_WEIGHTS_NAME} (or {HF_WEIGHTS_NAME}); run once online "
        f"(OFFLINE=0) to fill the Hugging Face cache; or metrics.clip={TINY_RANDOM} (offline, seeded random "
        "weights, NOT real CLIP: its numbers are labelled meaningless)."
    )


def _is_cached(cfg: dict) -> bool:
    """Whether the Hugging Face cache (or open_clip's URL cache, ~/.cache/clip) already holds the tag's file."""
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if cfg.get("hf_hub"):
        repo_id, filename = os.path.split(cfg["hf_hub"])  # 'org/model/' -> ('org/model', ''): default file names
        names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        if any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in names):
            return True
    url = cfg.get("url", "")
    return bool(url) and (Path.home() / ".cache" / "clip" / os.path.basename(url)).is_file()
