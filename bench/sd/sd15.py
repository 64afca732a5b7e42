"""Stable Diffusion v1-5 through diffusers: from the hub at a pinned revision, a local folder, or one checkpoint file.

The components are loaded one by one (UNet, VAE, CLIP text encoder, scheduler config), never the
safety checker, never remote code, and only safetensors weights (a `.ckpt` goes through diffusers'
`torch.load(weights_only=True)`, which refuses pickled code). The scheduler is DDPM with
`steps_offset=0` (docs/paper.md B13) whatever the checkpoint's own scheduler says.

Where the weights come from, checked in this order before anything heavy is built:
    1. `model.path`: a diffusers folder (model_index.json, unet/, vae/, text_encoder/, scheduler/)
       or a single `.safetensors` / `.ckpt` checkpoint;
    2. the Hugging Face cache (HF_HOME / HF_HUB_CACHE, or `model.cache_dir`) at `model.revision`;
    3. the hub, when online (a quick probe first, so an unreachable hub fails in about a second).
Anything missing ends in one `AssetMissingError` that names the model and the three ways to provide it
(the folder locator is shared with CLIPSeg: bench/sd/weights.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from huggingface_hub import HfApi
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError
from safetensors import SafetensorError
from transformers import CLIPTextModel

from bench.sd.backbone import Backbone, make_scheduler, resolve_device
from bench.sd.errors import AssetMissingError, ConfigError
from bench.sd.tokenizer import ClipBpeTokenizer
from bench.sd.weights import HUB_PROBE_TIMEOUT_S, SafetensorsFolder, locate_folder

log = logging.getLogger(__name__)

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
# Scheduler keys fixed by training: the checkpoint and the config must agree on them.
TRAINING_SCHEDULER_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")
GRADIENT_UNETS = ("twin", "upcast")


def required_files(variant: str | None) -> list[str]:
    """The files of a diffusers SD1.5 folder that this harness reads (no safety checker, no feature extractor)."""
    sfx = f".{variant}" if variant else ""
    return [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        f"unet/diffusion_pytorch_model{sfx}.safetensors",
        "vae/config.json",
        f"vae/diffusion_pytorch_model{sfx}.safetensors",
        "text_encoder/config.json",
        f"text_encoder/model{sfx}.safetensors",
    ]


def how_to_provide(repo_id: str, revision: str) -> str:
    return (
        "Provide the weights in one of three ways: "
        f"(1) go online once (unset HF_HUB_OFFLINE; `make ... OFFLINE=0`) so that {repo_id}@{revision} downloads "
        "into the Hugging Face cache (about 4.3 GB of fp32 safetensors, 2.1 GB with model.variant=fp16); "
        "(2) point HF_HOME (or HF_HUB_CACHE, or model.cache_dir) at a Hugging Face cache that already holds "
        "this revision; "
        "(3) pass model.path=<a diffusers folder with model_index.json, unet/, vae/, text_encoder/, scheduler/> "
        "or model.path=<a single .safetensors checkpoint>."
    )


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` -> float16 on CUDA, float32 elsewhere; or float32 / float16 / bfloat16 as named."""
    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in names:
        raise ConfigError(f"model.dtype={dtype!r}; expected auto or one of {sorted(names)}.")
    if names[dtype] == torch.float16 and device.type == "cpu":
        raise ConfigError("model.dtype=float16 on the CPU is not supported by every kernel; use float32 or auto.")
    return names[dtype]


# --- where the weights are ---------------------------------------------------------------------------------------


def weights_folder(repo_id: str, revision: str, variant: str | None, cache_dir: str | None) -> SafetensorsFolder:
    """The diffusers folder of SD1.5 that the shared locator looks for (bench/sd/weights.py)."""
    return SafetensorsFolder(
        title="Stable Diffusion v1-5 weights",
        repo_id=repo_id,
        revision=revision,
        required=tuple(required_files(variant)),
        how_to_provide=how_to_provide(repo_id, revision),
        path_key="model.path",
        revision_key="model.revision",
        cache_dir=cache_dir,
        also_fetch=("tokenizer/*",),
        missing_hint=" (set model.variant=fp16 if only *.fp16.safetensors files are there)" if variant is None else "",
    )


def locate_weights(
    repo_id: str, revision: str, path: str | None, variant: str | None, cache_dir: str | None
) -> tuple[str, Path]:
    """("folder" | "file", local path) of the weights; raises AssetMissingError naming the fixes."""
    spec = weights_folder(repo_id, revision, variant, cache_dir)
    if path is not None:
        local = Path(path).expanduser()
        if not local.exists():
            raise AssetMissingError(f"model.path={local} does not exist. " + spec.how_to_provide)
        if not local.is_dir():
            return "file", single_file(local)
    folder, _source = locate_folder(spec, path, resolve=lambda: _probe_hub(repo_id, revision, spec.cache))
    return "folder", folder


def single_file(path: Path) -> Path:
    """A single checkpoint: only .safetensors or .ckpt (loaded with weights_only=True)."""
    if path.suffix not in SINGLE_FILE_SUFFIXES:
        raise ConfigError(
            f"model.path={path} has suffix {path.suffix!r}; expected a diffusers folder or a single checkpoint "
            f"with one of {SINGLE_FILE_SUFFIXES} (.bin/.pt pickles are refused; convert them to safetensors)."
        )
    return path


def _probe_hub(repo_id: str, revision: str, cache: str) -> str:
    """One quick request, so that an unreachable hub fails now instead of after minutes of retries; the revision."""
    try:
        HfApi().model_info(repo_id, revision=revision, timeout=HUB_PROBE_TIMEOUT_S)
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise AssetMissingError(
            f"the hub refuses model.repo_id={repo_id}: {type(exc).__name__}. Check the id, or log in with "
            "`hf auth login` if the repository is gated. " + how_to_provide(repo_id, revision)
        ) from exc
    except RevisionNotFoundError as exc:
        raise ConfigError(
            f"model.revision={revision} does not exist in {repo_id}; pass a commit hash, tag or branch of it."
        ) from exc
    except Exception as exc:  # connection refused, DNS, timeout, proxy: the transport's own error types
        raise AssetMissingError(
            f"Stable Diffusion v1-5 weights {repo_id}@{revision} are not in the Hugging Face cache ({cache}) "
            f"and the hub cannot be reached ({type(exc).__name__}: {exc}). " + how_to_provide(repo_id, revision)
        ) from exc
    return revision


# --- loading --------------------------------------------------------------------------------------------------------


def load_sd15(
    name: str,
    image_size: int,
    repo_id: str,
    revision: str,
    scheduler: Mapping,
    path: str | None = None,
    variant: str | None = None,
    cache_dir: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    gradient_unet: str = "twin",
) -> Backbone:
    """SD1.5 as a `Backbone`: sampling in `dtype`, with a float32 UNet on demand for gradient passes.

    The Hydra `_target_` of conf/model/sd15.yaml: its keyword arguments are that file's keys, one for one.
    gradient_unet: `twin` (a float32 copy loaded from the stored weights) or `upcast` (the sampling
    UNet cast to float32 during each gradient pass; no second copy).
    """
    if image_size < 8:
        raise ConfigError(f"model.image_size={image_size}; expected pixels, e.g. 512 (SD1.5's training size).")
    if gradient_unet not in GRADIENT_UNETS:
        raise ConfigError(f"model.gradient_unet={gradient_unet!r}; expected one of {list(GRADIENT_UNETS)}.")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    kind, location = locate_weights(repo_id, revision, path, variant, cache_dir)
    log.info("loading Stable Diffusion v1-5 from %s (%s, %s)", location, kind, torch_dtype)
    with _loading(location, repo_id, revision):
        if kind == "folder":
            check_tokenizer(location)
            unet, vae, text_encoder, repo_scheduler = _load_folder(location, torch_dtype, variant)
        else:
            unet, vae, text_encoder, repo_scheduler = _load_single_file(location, torch_dtype, repo_id, cache_dir)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if image_size % factor != 0:
        raise ConfigError(f"model.image_size={image_size}; expected a multiple of the VAE's factor {factor}.")
    ddpm = sd15_scheduler(repo_scheduler, scheduler)
    for module in (unet, vae, text_encoder):
        module.to(dev).eval().requires_grad_(False)
    source = str(location) if path is not None else f"{repo_id}@{revision}"
    return Backbone(
        name=name,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=ClipBpeTokenizer(),
        scheduler=ddpm,
        image_size=image_size,
        device=dev,
        dtype=torch_dtype,
        provenance={"model": name, "weights": source, "variant": variant or "fp32", "dtype": str(torch_dtype)},
        unet_float32_loader=_float32_unet_loader(kind, location, variant, repo_id, cache_dir, dev),
        gradient_unet=gradient_unet,
    )


@contextmanager
def _loading(location: Path, repo_id: str, revision: str) -> Iterator[None]:
    """A partial or corrupt file while loading -> AssetMissingError naming it and the ways to fetch it again."""
    try:
        yield
    except ConfigError:
        raise
    except (OSError, ValueError, SafetensorError) as exc:
        raise AssetMissingError(
            f"loading Stable Diffusion v1-5 from {location} failed ({type(exc).__name__}: {exc}). A partial or "
            "corrupt file: delete it and fetch it again. " + how_to_provide(repo_id, revision)
        ) from exc


def _load_folder(folder: Path, torch_dtype: torch.dtype, variant: str | None):
    kw = {"use_safetensors": True, "variant": variant, "local_files_only": True}
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch_dtype, **kw)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch_dtype, **kw)
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=torch_dtype, **kw)
    return unet, vae, text_encoder, dict(DDPMScheduler.load_config(folder, subfolder="scheduler"))


def _load_single_file(file: Path, torch_dtype: torch.dtype, repo_id: str, cache_dir: str | None):
    """One checkpoint; the component configs come from `repo_id` (cached, online, or a local diffusers folder)."""
    pipe = StableDiffusionPipeline.from_single_file(
        str(file),
        config=repo_id,
        torch_dtype=torch_dtype,
        cache_dir=cache_dir,
        local_files_only=hf_constants.is_offline_mode(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe.unet, pipe.vae, pipe.text_encoder, dict(pipe.scheduler.config)


def _float32_unet_loader(
    kind: str, location: Path, variant: str | None, repo_id: str, cache_dir: str | None, device: torch.device
) -> Callable[[], UNet2DConditionModel]:
    """A loader of the UNet with the stored float32 weights (not an up-cast of the float16 copy)."""

    def load() -> UNet2DConditionModel:
        if kind == "folder":
            unet = UNet2DConditionModel.from_pretrained(
                location,
                subfolder="unet",
                torch_dtype=torch.float32,
                use_safetensors=True,
                variant=variant,
                local_files_only=True,
            )
        else:
            unet = UNet2DConditionModel.from_single_file(
                str(location), config=repo_id, subfolder="unet", torch_dtype=torch.float32, cache_dir=cache_dir
            )
        return unet.to(device).eval().requires_grad_(False)

    return load


def sd15_scheduler(repo_config: Mapping, overrides: Mapping) -> DDPMScheduler:
    """DDPM from the config's keys; the checkpoint's training keys must agree with them.

    SD1.5 ships a PNDM config with steps_offset=1 (timesteps 981, ..., 1); the paper's sampler is DDPM
    with steps_offset=0 (980, ..., 0), which the config sets (docs/paper.md B13).
    """
    for key in TRAINING_SCHEDULER_KEYS:
        if key in repo_config and key in overrides and repo_config[key] != overrides[key]:
            raise ConfigError(
                f"the checkpoint was trained with scheduler {key}={repo_config[key]!r}, but model.scheduler.{key}="
                f"{overrides[key]!r}. This profile is for SD1.x epsilon models; fix model.scheduler.{key}."
            )
    return make_scheduler(overrides)


def check_tokenizer(folder: Path) -> None:
    """If the folder ships a tokenizer, it must be SD1.5's CLIP BPE (the one `ClipBpeTokenizer` implements)."""
    vocab_file = folder / "tokenizer" / "vocab.json"
    if not vocab_file.is_file():
        return
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    specials = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    ours = {specials.get(k, k): v for k, v in ClipBpeTokenizer().bpe.encoder.items()}
    if vocab != ours:
        differing = sorted(set(vocab.items()) ^ set(ours.items()))[:5]
        raise ConfigError(
            f"{vocab_file} is not the CLIP BPE vocabulary of SD1.5 ({len(vocab)} vs {len(ours)} entries; "
            f"e.g. {differing}). This harness tokenizes with SD1.5's CLIP BPE; use an SD1.x checkpoint."
        )
