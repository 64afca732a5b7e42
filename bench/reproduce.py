"""`python -m bench.reproduce {demo,table1,ablations}`: a Hydra multirun of every row, then the tables.

Profiles choose the assets; the rows, the data protocol and the seeds are the same:
    gpu:     model=sd15 dataset=places365 (a user's GPU machine)
    offline: model=toy dataset=toy_world metrics=toy (trained tiny models; these machines, CI), at 2 scenes x
             every prompt per subcategory (the toy world's own default is a first run's 1 x 1)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from bench.aggregate import options_from_environment
from bench.cli_checks import exit_with
from bench.config import REPO_ROOT
from bench.records import StorageError
from bench.reporting.aggregate import aggregate_task

PROFILES = {
    "gpu": ["model=sd15", "dataset=places365"],
    "offline": [
        "model=toy",
        "dataset=toy_world",
        "metrics=toy",
        "dataset.images_per_subcategory=2",
        "dataset.prompts_per_subcategory=null",
    ],
}
TARGETS = ("demo", "table1", "ablations")


class ReproduceError(RuntimeError):
    """A failure the command line reports as one line (exit status in `code`)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def resolve_task_name(what: str, overrides: list[str]) -> str:
    """The task_name the multirun writes to: the experiment's, or the user's `task_name=...` (composed by Hydra,
    so `+`/`++` forms and interpolations count). A misspelt override fails here, before any job starts."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from bench.cli_checks import explain_override_error
    from bench.config import CONF_DIR

    parsed = OverridesParser.create().parse_overrides(overrides)
    swept = [o.input_line for o in parsed if o.is_sweep_override()]
    if any(o.key_or_group.lstrip("+~") == "task_name" for o in parsed if o.is_sweep_override()):
        raise ReproduceError(f"{swept}: task_name must be one value (the results folder the tables are built in).", 2)
    plain = [f"experiment={what}", *(o.input_line for o in parsed if not o.is_sweep_override())]
    message = explain_override_error(plain)
    if message:
        raise ReproduceError(message, 2)
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return str(compose("bench", overrides=plain).task_name)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ReproduceError(str(exc).replace("\n", " "), 2) from exc


def reproduce(what: str, profile: str, extra: list[str], root_dir: Path, logger: str = "none") -> dict:
    """Run the experiment's multirun in a subprocess (a real Hydra sweep), then build its task's tables."""
    if what not in TARGETS:
        raise ReproduceError(f"unknown target {what!r}; expected one of {TARGETS}.", 2)
    if profile not in PROFILES:
        raise ReproduceError(f"PROFILE={profile!r}; expected one of {sorted(PROFILES)}.", 2)
    profile_overrides = [] if what == "demo" else PROFILES[profile]
    overrides = [f"paths.root_dir={root_dir}", f"logger={logger}", *profile_overrides, *extra]
    task = resolve_task_name(what, overrides)
    cmd = [sys.executable, "-m", "bench.run", "-m", f"experiment={what}", *overrides]
    print("+", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=os.environ.copy())
    if done.returncode != 0:
        raise ReproduceError(
            f"the {what} multirun (task_name={task}) failed with exit status {done.returncode}: its message is "
            "above; fix it and rerun the same command (finished samples are kept).",
            done.returncode,
        )
    options = options_from_environment(wandb_dir=root_dir / "outputs" / "wandb" if logger == "wandb" else None)
    try:
        return aggregate_task(root_dir / "results", task, root_dir, options)
    except (FileNotFoundError, ValueError, StorageError) as exc:  # ValueError: ResultsError, a table refused
        raise ReproduceError(f"building the tables of task {task!r} failed: {exc}") from exc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=TARGETS)
    parser.add_argument("--profile", default="gpu", help=f"one of {sorted(PROFILES)}")
    parser.add_argument("--logger", default="none", choices=["none", "wandb"], help="W&B for every job and the tables")
    parser.add_argument("--root-dir", type=Path, default=REPO_ROOT, help="outputs/ and results/ go under it")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. dataset.images_per_subcategory=2")
    args = parser.parse_intermixed_args(argv)
    if args.root_dir.exists() and not args.root_dir.is_dir():
        exit_with(f"--root-dir {args.root_dir} is not a folder. Fix: give the folder outputs/ and results/ go under.")
    try:
        paths = reproduce(args.what, args.profile, args.overrides, args.root_dir.resolve(), args.logger)
    except ReproduceError as exc:
        exit_with(str(exc), exc.code)
    print()
    print(paths["terminal"])


if __name__ == "__main__":
    main()
