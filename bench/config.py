"""Where the configs are, and how the harness turns a config node into an object."""

from __future__ import annotations

import os
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bench.sd.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"

if not OmegaConf.has_resolver("repo_root"):
    OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))

__all__ = [
    "CONF_DIR",
    "REPO_ROOT",
    "ConfigError",
    "build",
    "check_ablation",
    "check_path_names",
    "check_variant",
    "env_path",
]
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
        text = str(cause) if isinstance(cause, TypeError) else ""
        unknown = re.search(r"unexpected keyword argument '([^']+)'", text)
        if unknown:  # a misspelt key in a config file (conf/ or a --config-dir): name it and the allowed ones
            raise ConfigError(unknown_setting(node, str(exc), unknown.group(1))) from None
        raise


def unknown_setting(node, error: str, name: str) -> str:
    """One line for a config node whose `name` its `_target_` does not take (Hydra composed it from a file)."""
    import inspect

    from hydra.utils import get_object

    target = node.get("_target_")
    where = re.search(r"full_key: (\S+)", error)
    key = f"{where.group(1)}.{name}" if where else name
    try:
        allowed = [p for p in inspect.signature(get_object(target)).parameters if p not in ("self", "args", "kwargs")]
    except (ImportError, ValueError, TypeError):
        allowed = []
    return (
        f"unknown config key {key!r}: {target} takes no setting {name!r} (a misspelt key in a config file?). "
        f"Allowed keys there: {sorted(allowed)}. Fix the spelling in the file that sets it (conf/ or --config-dir)."
    )


def check_ablation(cfg: DictConfig) -> None:
    """An ablation flips switches of one method (Hydra merged them into `cfg.method`); refuse any other method."""
    check_applies_to(cfg, "ablation", "flips")


def check_variant(cfg: DictConfig) -> None:
    """A variant is a preset of one method (Hydra merged it into `cfg.method`); refuse any other method."""
    check_applies_to(cfg, "variant", "sets")


def check_applies_to(cfg: DictConfig, group: str, verb: str) -> None:
    """Refuse `group`'s option (a node {name, applies_to}) on a method other than the one it applies to."""
    node = cfg.get(group)
    applies_to = node.get("applies_to") if node else None
    if applies_to is not None and cfg.method.name != applies_to:
        raise ConfigError(
            f"{group}={node.name} {verb} switches of method={applies_to}, but method={cfg.method.name}. "
            f"Use method={applies_to} {group}={node.name}, or {group}=none."
        )


# Keys whose values become one folder name of run_dir (conf/bench.yaml), so each must stay one safe name.
PATH_NAME_KEYS = ("task_name", "model.name", "dataset.name", "method.label", "ablation.name")
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,99}")


def is_safe_name(value) -> bool:
    """One path component that stays where it is put: no separator, no '..', no leading dot, no odd bytes."""
    return isinstance(value, str) and SAFE_NAME.fullmatch(value) is not None


def check_path_names(cfg) -> None:
    """Refuse a name that would build a path outside its root (task_name=../x) or an odd folder name."""
    from omegaconf import OmegaConf

    for key in PATH_NAME_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        if not is_safe_name(value):
            raise ConfigError(
                f"{key}={value!r} is not a safe folder name: it builds a folder of run_dir under "
                f"paths.output_dir, so it must be 1-100 characters of letters, digits and . _ + = -, starting "
                f"with a letter or digit (no '/', no '..'). Fix: e.g. {key}=my_run (to write elsewhere, set "
                "paths.root_dir or paths.output_dir)."
            )
