"""Small helpers every per-sample metric shares: NaN results with a reason, device choice."""

from __future__ import annotations

import math

import torch


def nan_result(name: str, reason: str, keys: list[str] | None = None) -> dict:
    """Every value of the metric NaN, plus `<name>_nan_reason` (so the row keeps its other metrics)."""
    return {**{k: math.nan for k in (keys or [name])}, f"{name}_nan_reason": reason}


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> cuda if available, else cpu."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
