"""Friendlier errors for command-line overrides: a misspelt key names the keys that exist."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bench.config import CONF_DIR, check_path_names
from bench.sd.errors import ConfigError


def explain_override_error(overrides: Sequence[str]) -> str | None:
    """Compose the config with `overrides`; None if it works, else a message naming the allowed values."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        return f"cannot parse the overrides {list(overrides)}: {exc}. Fix: write each as key=value (quote spaces)."
    unknown = unknown_options(parsed, "row")
    if unknown:
        return unknown
    if any(o.is_sweep_override() for o in parsed):
        return None  # Hydra checks each sweep point itself
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("bench", overrides=list(overrides))
        check_path_names(cfg)
        return None
    except ConfigError as exc:
        return str(exc)
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


def unknown_options(parsed: list, group: str) -> str | None:
    """A message if an override picks an option of an optional `group` that does not exist (Hydra skips it)."""
    known = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
    for o in parsed:
        if o.key_or_group.lstrip("+~") != group or o.value() is None:
            continue
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        missing = [v for v in values if v not in known]
        if missing:
            return f"{group}={','.join(missing)}: no such {group} (conf/{group}/). Known {group}s: {known}."
    return None


def check_writable(folder: str | Path) -> str | None:
    """A message if `folder` (created if missing) cannot hold a new file: read-only, no permission, full."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return (
            f"cannot write the run folder {folder}: {exc.strerror or exc}. Nothing was run. Fix: make it writable "
            "(or free space), or write elsewhere with paths.output_dir=/a/writable/folder (or paths.root_dir=...)."
        )
    return None


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
    if message is None:
        message = run_folder_error(overrides, multirun=any(a in ("-m", "--multirun") for a in argv))
    if message:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def run_folder_error(overrides: Sequence[str], multirun: bool = False) -> str | None:
    """Before Hydra opens its log file there: a message if the run folder (a sweep: the output folder)
    cannot be written."""
    if multirun:
        parser = OverridesParser.create()
        overrides = [o for o in overrides if not parser.parse_override(o).is_sweep_override()]
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("bench", overrides=list(overrides))
        folder = cfg.paths.output_dir if multirun else cfg.run_dir
    except (HydraException, OmegaConfBaseException):
        return None  # an interpolation this check cannot resolve: Hydra reports it
    return check_writable(folder)
