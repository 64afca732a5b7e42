"""What a stage of the study reads from the stages before it, checked before the stage's module is imported.

The stages import scipy, torchmetrics and matplotlib (seconds); a refusal here costs none of that.
"""

from __future__ import annotations

from pathlib import Path

from bench.cli_checks import exit_with

TASK = "attribution"


def maps_samples(root: Path) -> Path:
    """results/attribution/samples.csv under `root`, the maps stage's rows; a one-line refusal when it is missing."""
    csv = root / "results" / TASK / "samples.csv"
    if not csv.is_file():
        exit_with(f"{csv} does not exist. Run the maps stage first: python -m bench.attribution --stage maps")
    return csv
