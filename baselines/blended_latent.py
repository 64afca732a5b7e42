"""Blended Latent Diffusion (Avrahami et al., 2023) with Grad-SAM masks: only the blending schedule differs.

At EVERY step from the first score index on, the background (M = 0) of the new latent z_{t_k} is
replaced by the reference noised to t_k. The mask is the one Grad-SAM computes (method/), at the
same score indices as gradsam (default 5, 18, 28, from the UNet call at t_{k-1}); it is first
available at index 5 and each new mask replaces the previous one from its index on:

    k = 1..4   : no blending (no mask yet; the same 5 text-to-image steps as gradsam)
    k = 5..17  : mask from the score at t_4, blended at every t_k
    k = 18..27 : mask from the score at t_17
    k = 28..L-1: mask from the score at t_27  (L = schedule length; the final x_0 is not blended)

Everything else (start latent, reference noise, score and mask switches) is gradsam's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from method.sampler import GradSAM


class BlendedLatent(GradSAM):
    """BLD-style blending at every step with the Grad-SAM mask of the latest score index."""

    makes_mask = True
    indices_key = "score_indices"

    def __init__(
        self,
        name: str = "blended_latent",
        label: str = "blended_latent",
        score_indices: Sequence[int] = (5, 18, 28),
        **gradsam_args: Any,
    ):
        """`score_indices` is gradsam's `injection_indices`; every other argument is gradsam's."""
        super().__init__(name=name, label=label, injection_indices=score_indices, **gradsam_args)

    def columns(self) -> dict:
        columns = super().columns()
        columns["score_indices"] = columns.pop("injection_indices")
        columns["blend"] = "every_step"
        return columns

    def blend_indices(self, length: int) -> set[int]:
        """Every index from the first score index to the last latent before x_0."""
        return set(range(self.injection_indices[0], length))
