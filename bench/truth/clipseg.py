"""Subject truth on real images: CLIPSeg (Lüddecke & Ecker, CVPR 2022) through transformers.

`CLIPSegTruth` gives CLIPSeg's probability that each pixel shows the subject word (the text prompt is
the subject word alone, e.g. "deer"), resized to the image, and the mask `probability >= threshold`.

The loader shares the SD1.5 loader's folder locator (bench/sd/weights.py): safetensors only (the pickled
`pytorch_model.bin` of the repository's main branch is never read), no remote code, and the weights
located before anything is built, in this order:
    1. `truth.path`: a local folder with config.json and model.safetensors (e.g. one made with
       `save_pretrained`, or converted once on a trusted machine);
    2. the Hugging Face cache (HF_HOME / HF_HUB_CACHE, or `truth.cache_dir`) at `truth.revision`;
    3. the hub, when online (one quick probe first).
The refined model's safetensors file exists only on a pull-request revision of CIDAS/clipseg-rd64-refined
(the conversion bot's "Adding `safetensors` variant of this model", the same one transformers' own
auto-conversion uses). `truth.revision` pins its commit; null finds that PR (online) or the one cached
snapshot holding model.safetensors (offline), and the commit used is recorded in the provenance.
Anything missing ends in one `AssetMissingError` naming the model and the ways to provide it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import HfApi
from safetensors import SafetensorError
from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, ViTImageProcessor

from bench.sd.device import resolve_device
from bench.sd.errors import AssetMissingError, ConfigError
from bench.sd.tokenizer import ClipBpeTokenizer
from bench.sd.weights import HUB_PROBE_TIMEOUT_S, SafetensorsFolder, locate_folder
from bench.truth.base import SubjectTruth, threshold_truth

REQUIRED_FILES = ("config.json", "model.safetensors")
OPTIONAL_FILES = ("preprocessor_config.json",)  # fetched beside the required ones; never pytorch_model.bin
SAFETENSORS_PR_TITLE = "Adding `safetensors` variant of this model"
SAFETENSORS_PR_AUTHOR = "SFconvertbot"
# The CIDAS processor: 352x352 bilinear, ImageNet mean/std (used when a folder has no preprocessor_config.json).
DEFAULT_PREPROCESS = {
    "size": {"height": 352, "width": 352},
    "resample": 2,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}


class CLIPSegTruth:
    """A `SubjectSegmenter`: CLIPSeg's per-pixel probability of the subject word, thresholded."""

    def __init__(
        self,
        model: CLIPSegForImageSegmentation,
        threshold: float,
        weights: str,
        name: str = "clipseg",
        preprocess: dict | None = None,
        device: str = "auto",
    ):
        check_threshold(threshold, f"truth.threshold={threshold!r}")
        self.name, self.threshold = name, float(threshold)
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.tokenizer = ClipBpeTokenizer()
        vocab = model.config.text_config.vocab_size
        if vocab < len(self.tokenizer.bpe.encoder):
            raise ConfigError(
                f"the CLIPSeg at {weights} has a text vocabulary of {vocab} entries; the harness tokenizes with "
                f"CLIP's BPE ({len(self.tokenizer.bpe.encoder)}). Use a CLIPSeg built on CLIP's text tower."
            )
        settings = {**DEFAULT_PREPROCESS, **(preprocess or {})}
        self.processor = ViTImageProcessor(**{k: settings[k] for k in DEFAULT_PREPROCESS})
        size = settings["size"]
        self.provenance = (
            f"{name}: CLIPSegForImageSegmentation {weights}; text prompt = the subject word; "
            f"input {size['height']}x{size['width']} (resample {settings['resample']}), "
            f"probability = sigmoid(logits) resized bilinearly to the image; mask = probability >= {self.threshold:g}"
        )

    def input_ids(self, subject: str) -> torch.Tensor:
        """[1, n] ids <start> pieces <end>, unpadded (as CLIPSegProcessor gives for one text)."""
        if not subject.strip():
            raise ConfigError(f"subject={subject!r}: CLIPSeg needs the subject word as its text prompt.")
        pieces = self.tokenizer.pieces(subject)[: self.tokenizer.context_length - 2]
        return torch.tensor([[self.tokenizer.bos_id, *pieces, self.tokenizer.eos_id]], device=self.device)

    @torch.no_grad()
    def probability(self, image: np.ndarray, subject: str) -> np.ndarray:
        """float32 [H, W] in [0, 1]: CLIPSeg's probability of `subject` at each pixel of uint8 [H, W, 3] `image`."""
        ids = self.input_ids(subject)
        pixels = self.processor(images=[image], return_tensors="pt").pixel_values.to(self.device)  # [1, 3, S, S]
        logits = self.model(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids)).logits
        logits = logits.reshape(1, 1, *logits.shape[-2:]).float()  # [1, 1, s, s]
        resized = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
        return torch.sigmoid(resized)[0, 0].cpu().numpy().astype(np.float32)

    def __call__(self, image: np.ndarray, subject: str, prompt: str) -> SubjectTruth:
        probability = self.probability(image, subject)
        return threshold_truth(probability, self.threshold, subject, self.name, self.provenance)


def check_threshold(threshold, what: str) -> None:
    if not isinstance(threshold, int | float) or not 0.0 < threshold < 1.0:
        raise ConfigError(f"{what}; expected a probability strictly between 0 and 1, e.g. 0.5.")


# --- loading ---------------------------------------------------------------------------------------------------------


def load_clipseg(
    name: str,
    repo_id: str,
    revision: str | None,
    threshold: float,
    path: str | None = None,
    cache_dir: str | None = None,
    device: str = "auto",
) -> CLIPSegTruth:
    """`CLIPSegTruth` from a local folder, the cache or the hub (safetensors only; see the module docstring)."""
    check_threshold(threshold, f"truth.threshold={threshold!r}")
    folder, weights = locate_clipseg(repo_id, revision, path, cache_dir)
    try:
        model = CLIPSegForImageSegmentation.from_pretrained(folder, use_safetensors=True, local_files_only=True)
    except (OSError, ValueError, SafetensorError) as exc:
        raise AssetMissingError(
            f"loading CLIPSeg from {folder} failed ({type(exc).__name__}: {exc}). A partial or corrupt file: "
            "delete it and fetch it again. " + how_to_provide(repo_id, revision)
        ) from exc
    return CLIPSegTruth(model, threshold, weights, name=name, preprocess=read_preprocess(folder), device=device)


def build_tiny_clipseg(
    name: str = "clipseg_tiny", seed: int = 0, threshold: float = 0.5, input_size: int = 64, device: str = "auto"
) -> CLIPSegTruth:
    """A CLIPSeg of toy width with seeded random weights (offline; NOT a segmenter: its masks only exercise code)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPSegForImageSegmentation(tiny_clipseg_config())
    weights = f"tiny random weights (seed {seed}; not a trained segmenter)"
    preprocess = {"size": {"height": input_size, "width": input_size}}
    return CLIPSegTruth(model, threshold, weights, name=name, preprocess=preprocess, device=device)


def tiny_clipseg_config() -> CLIPSegConfig:
    """CLIPSeg's refined architecture (complex transposed convolution) at toy width, CLIP's 49408-token vocabulary."""
    return CLIPSegConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 16,
        },
        projection_dim=16,
        extract_layers=[0, 1, 2],
        reduce_dim=8,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=16,
        use_complex_transposed_convolution=True,
    )


def read_preprocess(folder: Path) -> dict | None:
    """The folder's preprocessor_config.json settings (size, resample, mean, std), or None without one."""
    file = Path(folder) / "preprocessor_config.json"
    if not file.is_file():
        return None
    settings = json.loads(file.read_text(encoding="utf-8"))
    size = settings.get("size", DEFAULT_PREPROCESS["size"])
    if isinstance(size, int):
        size = {"height": size, "width": size}
    return {**{k: settings[k] for k in DEFAULT_PREPROCESS if k in settings}, "size": size}


def how_to_provide(repo_id: str, revision: str | None) -> str:
    at = f"{repo_id}@{revision}" if revision else f"{repo_id} (its safetensors pull-request revision)"
    return (
        "Provide the CLIPSeg weights in one of three ways: "
        f"(1) go online once (unset HF_HUB_OFFLINE; `make ... OFFLINE=0`) so that {at} downloads into the "
        "Hugging Face cache (config.json, preprocessor_config.json, model.safetensors: about 0.6 GB); "
        "(2) point HF_HOME (or HF_HUB_CACHE, or truth.cache_dir) at a Hugging Face cache that already holds it; "
        "(3) pass truth.path=<a folder with config.json and model.safetensors> (pickled pytorch_model.bin is "
        "refused). Or run without subject truth: truth_record.enabled=false."
    )


def weights_folder(repo_id: str, revision: str | None, cache_dir: str | None) -> SafetensorsFolder:
    """The CLIPSeg folder that the shared locator looks for (bench/sd/weights.py)."""
    return SafetensorsFolder(
        title="the subject-truth CLIPSeg weights",
        repo_id=repo_id,
        revision=revision,
        required=REQUIRED_FILES,
        how_to_provide=how_to_provide(repo_id, revision),
        path_key="truth.path",
        revision_key="truth.revision",
        cache_dir=cache_dir,
        also_fetch=OPTIONAL_FILES,
        unpinned="its safetensors PR",
    )


def locate_clipseg(repo_id: str, revision: str | None, path: str | None, cache_dir: str | None) -> tuple[Path, str]:
    """(folder holding the weights, description for provenance); raises AssetMissingError naming the fixes."""
    spec = weights_folder(repo_id, revision, cache_dir)
    return locate_folder(spec, path, resolve=lambda: resolve_revision(repo_id, revision, spec.cache))


def resolve_revision(repo_id: str, revision: str | None, cache: str) -> str:
    """The commit to download: `revision` as given, or the conversion bot's open safetensors PR's head commit."""
    api = HfApi()
    try:
        api.model_info(repo_id, timeout=HUB_PROBE_TIMEOUT_S)  # one quick probe: an unreachable hub fails now
        if revision is not None:
            return api.model_info(repo_id, revision=revision, timeout=HUB_PROBE_TIMEOUT_S).sha or revision
        for pr in api.get_repo_discussions(repo_id, discussion_type="pull_request"):
            if pr.title == SAFETENSORS_PR_TITLE and pr.author == SAFETENSORS_PR_AUTHOR:
                return api.model_info(repo_id, revision=pr.git_reference, timeout=HUB_PROBE_TIMEOUT_S).sha
    except Exception as exc:  # connection refused, DNS, timeout, unknown revision: the transport's own types
        raise AssetMissingError(
            f"the CLIPSeg weights {repo_id}@{revision or 'its safetensors PR'} are not in the Hugging Face cache "
            f"({cache}) and the hub cannot answer ({type(exc).__name__}: {exc}). " + how_to_provide(repo_id, revision)
        ) from exc
    raise AssetMissingError(
        f"{repo_id} has no pull request '{SAFETENSORS_PR_TITLE}' by {SAFETENSORS_PR_AUTHOR}, so no safetensors "
        "revision to pin. " + how_to_provide(repo_id, revision)
    )


def main(argv: list[str] | None = None) -> None:
    """`python -m bench.truth.clipseg`: fetch the CLIPSeg weights once (or find them) and print the commit to pin."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--repo-id", default="CIDAS/clipseg-rd64-refined")
    parser.add_argument("--revision", default=None, help="a commit; default: the safetensors PR's (found online)")
    parser.add_argument("--cache-dir", default=None, help="default: the Hugging Face cache (HF_HOME / HF_HUB_CACHE)")
    args = parser.parse_args(argv)
    try:
        folder, weights = locate_clipseg(args.repo_id, args.revision, None, args.cache_dir)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    commit = weights.rsplit("@", 1)[-1]
    print(f"{weights} in {folder}\npin it: truth.revision={commit}")


if __name__ == "__main__":
    main()
