"""Friendlier errors for command-line overrides: a misspelt key names the keys that exist."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bench.config import CONF_DIR


def explain_override_error(overrides: Sequence[str]) -> str | None:
    """Compose the config with `overrides`; None if it works, else a message naming the allowed values."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    if any(o.is_sweep_override() for o in parsed):
        return None  # Hydra checks each sweep point itself
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            compose("bench", overrides=list(overrides))
        return None
    except (HydraException, OmegaConfBaseException) as exc:
        text = str(exc)
    if "not in struct" in text or "Could not override" in text:
        choices = [o.input_line for o in parsed if _is_group_choice(o.input_line)]
        try:
            with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
                cfg = compose("bench", overrides=choices)
        except (HydraException, OmegaConfBaseException):
            return text
        for o in parsed:
            hint = _missing_key_hint(cfg, o.key_or_group)
            if hint:
                return hint
    return text


def _is_group_choice(override: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    return "." not in key and (CONF_DIR / key).is_dir()


def _missing_key_hint(cfg: DictConfig, dotted: str) -> str | None:
    key = dotted.lstrip("+~")
    if (CONF_DIR / key.split(".")[0]).is_dir() and "." not in key:
        return None
    node, walked = cfg, []
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            where = ".".join(walked) or "the top level"
            allowed = sorted(node.keys()) if isinstance(node, DictConfig) else []
            return (
                f"unknown config key {key!r}: {where} has no key {part!r}. Allowed keys there: {allowed}. "
                f"Fix the spelling, or add it with +{key}=... if you really mean a new key."
            )
        node = OmegaConf.select(node, part, throw_on_missing=False) if isinstance(node, DictConfig) else None
        walked.append(part)
    return None


def check_overrides(argv: Sequence[str]) -> None:
    """Exit with a clear message (status 2) when a non-sweep override cannot compose."""
    if any(a in ("--help", "-h", "--hydra-help", "--info", "--cfg", "-c", "--shell-completion") for a in argv):
        return
    overrides = [a for a in argv if not a.startswith("-")]
    message = explain_override_error(overrides)
    if message:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
