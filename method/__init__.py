"""Grad-SAM latent manipulation (arXiv 2408.16232): scores, masks and the sampler. See docs/method.md.

attention.py       cross-attention probabilities from chosen layers (processor + context manager)
gradsam.py         importance_scores(ScoreInputs, ScoreConfig): exact Grad-SAM scores, tail or general path
kinds.py           score kinds (gradsam, attention_only, daam, noise_diff): one sample's subject maps
attribution.py     ChainRecorder: the attribution study's seam into a chain (recorded maps)
tail.py            the last layer's network tail as a function of A (fast exact Jacobian)
post_jacobian.py   closed-form Jacobian of the output head GroupNorm -> SiLU -> conv_out
tokens.py          subject word -> CLIP columns
masks.py           scores -> masks (blur, dilation, threshold, union) and the background swap
sampler.py         the GradSAM method: guided DDPM with injections (docs/paper.md §2.2)
config.py          GradSAMConfig: every switch, validated once from the method node
"""

from __future__ import annotations

import importlib

__all__ = ["GradSAM", "ScoreInputs", "attention_scores", "importance_scores", "importance_scores_per_layer"]
_HOMES = {
    "GradSAM": "method.sampler",
    "ScoreInputs": "method.gradsam",
    "attention_scores": "method.gradsam",
    "importance_scores": "method.gradsam",
    "importance_scores_per_layer": "method.gradsam",
}


def __getattr__(name: str):
    """Load on first use: `import method.gradsam` stays light (no tokenizer, no open_clip, no timm)."""
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'method' has no attribute {name!r}")
