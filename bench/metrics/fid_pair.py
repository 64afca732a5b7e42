"""The paper's "FID" (docs/paper.md §4.3, B7-B9): a per-pair squared distance of 64-d Inception features.

The reference code ran torchmetrics' FrechetInceptionDistance(feature=64) on one reference and one
generated image, each duplicated x2. Both covariances are then 0 and the FID reduces to

    fid64_pair = || phi64(reference) - phi64(generated) ||^2

with phi64 = torch-fidelity's InceptionV3 after the first max-pool, spatially averaged (64-d), input
resized to 299 by torch-fidelity's TF-1.x bilinear (no antialias: torchmetrics 1.3.1, the code's
version, had no antialias option). Faithful defaults: BGR channel order (cv2.imread), the generated
image first saved as the code did (256x256 bicubic, JPEG quality 75), the reference at its native size.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import numpy as np

from bench.metrics import FID64_PAIR
from bench.metrics.common import SampleContext, nan_result, resolve_device
from bench.metrics.features import FeatureCache, default_cache_dir
from bench.metrics.inception import InceptionFeatures, load_inception, resolve_inception_weights
from bench.metrics.paper_io import as_rgb_array, in_color_order, paper_saved_image
from bench.sd.errors import ConfigError

REFERENCE_SOURCES = ("native", "model_input")


def squared_feature_distance(a: np.ndarray, b: np.ndarray) -> float:
    """|| a - b ||^2 in float64 (the Frechet distance of two single-point sets)."""
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return float(diff @ diff)


class Fid64Pair:
    """Per-sample metric `fid64_pair` (lower = closer to the reference). Inception loads in `prepare` (a run calls
    it before its first sample), else on first use."""

    name = FID64_PAIR

    def __init__(
        self,
        color_order: str = "bgr",
        generated_jpeg: bool = True,
        jpeg_size: int = 256,
        jpeg_quality: int = 75,
        reference: str = "native",
        inception_weights: str | None = None,
        weights_cache_dir: str | None = None,
        cache_dir: str | None = None,
        device: str = "auto",
    ):
        in_color_order(np.zeros((1, 1, 3), np.uint8), color_order)  # validates color_order
        if reference not in REFERENCE_SOURCES:
            raise ConfigError(f"fid64_pair reference={reference!r}; expected one of {REFERENCE_SOURCES}.")
        self.color_order, self.generated_jpeg, self.reference = color_order, generated_jpeg, reference
        self.jpeg_size, self.jpeg_quality = jpeg_size, jpeg_quality
        # Resolve (and if needed convert) the weights now: a missing file fails before any generation.
        self.weights = resolve_inception_weights(inception_weights, weights_cache_dir)
        self.weights_args = (inception_weights, weights_cache_dir)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.device = resolve_device(device)
        self._net: InceptionFeatures | None = None
        self._cache: FeatureCache | None = None

    @property
    def provenance(self) -> str:
        gen = f"JPEG q{self.jpeg_quality} {self.jpeg_size}px bicubic" if self.generated_jpeg else "PNG as generated"
        if self._net is not None:  # library version, weights source and fingerprint, as the set-level note
            extractor = self._net.provenance
        else:
            extractor = (
                f"torch-fidelity {metadata.version('torch-fidelity')} (weights: {self.weights.source}; not loaded)"
            )
        return (
            f"||phi64(ref) - phi64(gen)||^2 = torchmetrics FID(feature=64) on the pair duplicated x2 (paper code); "
            f"{extractor}, 64-d after the first max-pool, TF1 bilinear to 299 (no antialias); "
            f"color order {self.color_order}; generated: {gen}; reference: {self.reference}"
        )

    def prepare(self) -> None:
        """Load Inception now (the run calls this before its first sample): weights that cannot load raise
        MissingWeightsError naming the file, instead of a NaN fid64_pair in every row."""
        if self._cache is None:
            self._net = load_inception(*self.weights_args, device=self.device)
            self._cache = FeatureCache(self._net, self._net.extractor_id, self.cache_dir or default_cache_dir())

    def features(self, image: np.ndarray) -> np.ndarray:
        """64-d features of one RGB uint8 image, after the colour-order swap (cached by content)."""
        self.prepare()
        return self._cache.get([in_color_order(image, self.color_order)], "64")[0]

    def __call__(self, sample: SampleContext) -> dict:
        try:
            native = self.reference == "native" and sample.native_reference is not None
            ref = as_rgb_array(sample.native_reference()) if native else sample.reference
            gen = sample.generated
            gen = paper_saved_image(gen, self.jpeg_size, self.jpeg_quality) if self.generated_jpeg else gen
            return {self.name: squared_feature_distance(self.features(ref), self.features(gen))}
        except Exception as exc:  # noqa: BLE001 - a metric failure must not lose the row
            return nan_result(self.name, f"{type(exc).__name__}: {exc}")
