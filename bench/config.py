"""Where the configs are, and how the harness turns a config node into an object."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from bench.sd.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"

if not OmegaConf.has_resolver("repo_root"):
    OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))

__all__ = ["CONF_DIR", "REPO_ROOT", "ConfigError", "build", "check_ablation", "env_path"]
# Paths (never switches) that an environment variable may give; conf/ reads the same variables with oc.env.
PATH_VARIABLES = ("BENCH_DATA_DIR", "BENCH_CACHE_DIR", "BENCH_WEIGHTS_DIR", "BENCH_INCEPTION_WEIGHTS")


def env_path(variable: str, default: str | Path | None) -> Path | None:
    """The path in `variable` if set, else `default`: the one place outside conf/ that reads BENCH_* paths."""
    if variable not in PATH_VARIABLES:
        raise ValueError(f"{variable} is not a path variable; known: {PATH_VARIABLES}.")
    value = os.environ.get(variable) or default
    return Path(value) if value else None


def build(node, **kwargs):
    """hydra.utils.instantiate, but a config or asset error inside a constructor surfaces as itself.

    Hydra wraps constructor exceptions in InstantiationException; our errors carry the fix in
    their message, so they are re-raised unwrapped.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, ConfigError | RuntimeError) and not isinstance(cause, NotImplementedError):
            raise cause from None
        raise


def check_ablation(cfg) -> None:
    """An ablation flips switches of one method (Hydra merged them into `cfg.method`); refuse any other method."""
    applies_to = cfg.ablation.get("applies_to")
    if applies_to is not None and cfg.method.name != applies_to:
        raise ConfigError(
            f"ablation={cfg.ablation.name} flips switches of method={applies_to}, but method={cfg.method.name}. "
            f"Use method={applies_to} ablation={cfg.ablation.name}, or ablation=none."
        )
