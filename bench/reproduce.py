"""`python -m bench.reproduce {demo,table1,ablations}`: a Hydra multirun of every row, then the tables.

Profiles choose the assets; the rows, the data protocol and the seeds are the same:
    gpu:     model=sd15 dataset=places365 (a user's GPU machine)
    offline: model=toy dataset=toy_world metrics=toy (trained tiny models; these machines, CI)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from bench.config import REPO_ROOT
from bench.reporting.aggregate import aggregate_task

PROFILES = {
    "gpu": ["model=sd15", "dataset=places365"],
    "offline": ["model=toy", "dataset=toy_world", "metrics=toy"],
}
TARGETS = ("demo", "table1", "ablations")


def reproduce(what: str, profile: str, extra: list[str], root_dir: Path, logger: str = "none") -> dict:
    """Run the experiment's multirun in a subprocess (a real Hydra sweep), then build its tables."""
    if what not in TARGETS:
        raise SystemExit(f"error: unknown target {what!r}; expected one of {TARGETS}.")
    if profile not in PROFILES:
        raise SystemExit(f"error: PROFILE={profile!r}; expected one of {sorted(PROFILES)}.")
    profile_overrides = [] if what == "demo" else PROFILES[profile]
    cmd = [
        sys.executable,
        "-m",
        "bench.run",
        "-m",
        f"experiment={what}",
        f"paths.root_dir={root_dir}",
        f"logger={logger}",
    ]
    cmd += [*profile_overrides, *extra]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO_ROOT, env=os.environ.copy())
    wandb_dir = root_dir / "outputs" / "wandb" if logger == "wandb" else None
    return aggregate_task(root_dir / "results", what, root_dir, wandb_dir=wandb_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=TARGETS)
    parser.add_argument("--profile", default="gpu", help=f"one of {sorted(PROFILES)}")
    parser.add_argument("--logger", default="none", choices=["none", "wandb"], help="W&B for every job and the tables")
    parser.add_argument("--root-dir", type=Path, default=REPO_ROOT, help="outputs/ and results/ go under it")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. dataset.images_per_subcategory=2")
    args = parser.parse_intermixed_args(argv)
    paths = reproduce(args.what, args.profile, args.overrides, args.root_dir.resolve(), args.logger)
    print()
    print(paths["md"].read_text())
    for key in ("samples", "csv", "md", "report"):
        print(f"{key:>8}: {paths[key]}")


if __name__ == "__main__":
    main()
