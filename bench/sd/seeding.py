"""A sample's randomness is a function of its identity (image, prompt, seed) alone.

Every random draw of a sample comes from its own CPU generator, one per purpose ("stream"), so
the bits do not depend on the batch size, the order of samples, the shard, the device, or on
which other draws a method makes. Two methods that share a stream (for example the initial noise)
see the same noise for the same sample, which makes their comparison paired.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

STREAMS = ("vae", "init", "ref_noise", "steps", "method")


def sample_seed(image_id: str, prompt: str, seed: int, stream: str) -> int:
    """A 63-bit seed derived from the sample identity and the purpose of the draw."""
    if stream not in STREAMS:
        raise ValueError(f"stream={stream!r}; expected one of {STREAMS}.")
    digest = hashlib.sha256(f"{image_id}\x1f{prompt}\x1f{seed}\x1f{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sample_generator(image_id: str, prompt: str, seed: int, stream: str) -> torch.Generator:
    """A fresh CPU generator for one stream of one sample."""
    return torch.Generator("cpu").manual_seed(sample_seed(image_id, prompt, seed, stream))


def draw_normal(
    generators: Sequence[torch.Generator], shape: Sequence[int], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Stack one N(0, I) draw of `shape` per generator: [len(generators), *shape] on `device`."""
    draws = [torch.randn(tuple(shape), generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(draws).to(device=device, dtype=dtype)
