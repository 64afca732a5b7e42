"""`python -m bench.reproduce {demo,table1,ablations}`: a Hydra multirun of every row, then the tables.

Profiles choose the assets; the rows, data protocol and seeds are the same:
    gpu:     model=sd15 dataset=places365 (a user's GPU machine)
    offline: model=tiny dataset=synthetic_places (these machines, CI)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from bench.aggregate import aggregate_task
from bench.config import REPO_ROOT

PROFILES = {
    "gpu": ["model=sd15", "dataset=places365"],
    "offline": ["model=tiny", "dataset=synthetic_places"],
}
EXPERIMENTS = {"demo": "demo", "table1": "table1", "ablations": "ablations"}


def reproduce(what: str, profile: str, extra: list[str], results_dir: Path) -> dict[str, Path]:
    """Run the experiment's multirun in a subprocess (a real Hydra sweep), then aggregate it."""
    if what not in EXPERIMENTS:
        raise SystemExit(f"error: unknown target {what!r}; expected one of {sorted(EXPERIMENTS)}.")
    if profile not in PROFILES:
        raise SystemExit(f"error: PROFILE={profile!r}; expected one of {sorted(PROFILES)}.")
    profile_overrides = [] if what == "demo" else PROFILES[profile]
    cmd = [
        sys.executable,
        "-m",
        "bench.run",
        "-m",
        f"experiment={EXPERIMENTS[what]}",
        *profile_overrides,
        *extra,
    ]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO_ROOT, env=os.environ.copy())
    task = "demo" if what == "demo" else what
    return aggregate_task(results_dir, task)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=sorted(EXPERIMENTS))
    parser.add_argument("--profile", default="gpu")
    parser.add_argument("--results-dir", type=Path, default=REPO_ROOT / "results")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. dataset.images_per_subcategory=2")
    args = parser.parse_intermixed_args(argv)
    paths = reproduce(args.what, args.profile, args.overrides, args.results_dir)
    print()
    print(paths["md"].read_text())
    print("per-sample rows:", paths["samples"])
    print("table (CSV):    ", paths["csv"])
    print("table (Markdown):", paths["md"])


if __name__ == "__main__":
    main()
