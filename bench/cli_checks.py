"""Friendlier errors for command-line overrides: a misspelt key names the keys that exist.

The pre-check reads the command line with Hydra's own parser, so Hydra's flags (`--config-dir DIR`, `-cd`,
`--config-name NAME`, `-cn`, `--config-path`, `-cp`, `-m`, ...) are understood, and it composes the config
from the same places Hydra will (`ConfigSource`): a typo in a config kept outside the repository is caught
too. `exit_with` ends any entry point in one line.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from hydra import compose
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bench.config import CONF_DIR, REPO_ROOT, check_path_names
from bench.sd.errors import ConfigError

PRIMARY_CONFIG = "bench"  # conf/bench.yaml, the config_name of bench/run.py's hydra.main


def exit_with(message: str, code: int = 2) -> NoReturn:
    """Print `error: <message>` as one line on stderr and exit with `code` (2: a bad argument; 1: a failure).

    The SystemExit carries the same text (as sys.exit(message) would) for callers and tests that catch it.
    """
    line = " ".join(f"error: {message}".split())
    print(line, file=sys.stderr)
    exc = SystemExit(line)
    exc.code = code
    raise exc


@dataclass(frozen=True)
class ConfigSource:
    """Where Hydra finds the configs of one command line: conf/ (or --config-path), an extra folder
    (--config-dir, searched after conf/ as Hydra does) and the primary config's name (--config-name)."""

    primary: Path = CONF_DIR
    extra: Path | None = None
    name: str = PRIMARY_CONFIG

    def compose(self, overrides: Sequence[str]) -> DictConfig:
        """The config Hydra would compose for `overrides` (without its runtime node)."""
        from hydra._internal.hydra import Hydra
        from hydra._internal.utils import create_config_search_path
        from hydra.core.config_search_path import SearchPathQuery
        from hydra.initialize import get_gh_backup, restore_gh_from_backup

        backup = get_gh_backup()
        try:
            search_path = create_config_search_path(str(self.primary))
            if self.extra is not None:  # exactly as hydra/_internal/utils.py adds --config-dir
                query = SearchPathQuery(provider="schema")
                search_path.prepend(provider="command-line", path=f"file://{self.extra}", anchor=query)
            Hydra.create_main_hydra2(task_name="check", config_search_path=search_path)
            return compose(self.name, overrides=list(overrides))
        finally:
            restore_gh_from_backup(backup)

    def describe(self) -> str:
        return " and ".join(str(p) for p in (self.primary, self.extra) if p is not None)


def hydra_arguments(argv: Sequence[str]) -> argparse.Namespace | None:
    """argv read by Hydra's own parser (its flags, then the overrides); None when Hydra would refuse it itself."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()
    parser.exit_on_error = False
    try:
        return parser.parse_args(list(argv))
    except (argparse.ArgumentError, SystemExit):
        return None


def config_source(args: argparse.Namespace) -> ConfigSource:
    """The configs Hydra reads for these arguments; ConfigError naming a folder that does not exist."""
    primary = CONF_DIR
    if args.config_path:
        given = Path(args.config_path).expanduser()
        primary = given if given.is_absolute() else (REPO_ROOT / "bench" / given).resolve()
        if not primary.is_dir():
            raise ConfigError(
                f"--config-path {args.config_path}: no such folder ({primary}). Fix: give the folder of the primary "
                "config (absolute, or relative to bench/), or leave it out to use conf/."
            )
    extra = None
    if args.config_dir:
        extra = Path(os.path.abspath(os.path.expanduser(args.config_dir)))
        if not extra.is_dir():
            raise ConfigError(
                f"--config-dir {args.config_dir}: no such folder ({extra}). Fix: give the folder that holds your "
                "config files (e.g. --config-dir ~/experiments/conf with experiment/mine.yaml in it)."
            )
    return ConfigSource(primary, extra, args.config_name or PRIMARY_CONFIG)


def explain_override_error(overrides: Sequence[str], source: ConfigSource = ConfigSource()) -> str | None:
    """Compose the config with `overrides`; None if it works, else a message naming the allowed values."""
    return checked_compose(overrides, source)[0]


def checked_compose(
    overrides: Sequence[str], source: ConfigSource = ConfigSource()
) -> tuple[str | None, DictConfig | None]:
    """`explain_override_error`'s message, and the config it composed (None for a sweep or a failure), so that a
    later check of the same overrides need not compose it again (composing costs ~0.7 s)."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        return (
            f"cannot parse the overrides {list(overrides)}: {exc}. Fix: write each as key=value (quote spaces).",
            None,
        )
    unknown = unknown_options(parsed, "row", source)
    if unknown:
        return unknown, None
    if any(o.is_sweep_override() for o in parsed):
        return None, None  # Hydra checks each sweep point itself
    try:
        cfg = source.compose(overrides)
        check_path_names(cfg)
        return None, cfg
    except ConfigError as exc:
        return str(exc), None
    except MissingConfigException as exc:
        if exc.missing_cfg_file == source.name:
            return (
                f"--config-name {source.name}: no config {source.name}.yaml in {source.describe()}. Fix: name a "
                "config in one of those folders (without .yaml), or add --config-dir <its folder>.",
                None,
            )
        text = str(exc)
    except (HydraException, OmegaConfBaseException) as exc:
        text = str(exc)
    if "not in struct" in text or "Could not override" in text:
        choices = [o.input_line for o in parsed if _is_group_choice(o.input_line)]
        try:
            cfg = source.compose(choices)
        except (HydraException, OmegaConfBaseException):
            return text, None
        for o in parsed:
            hint = _missing_key_hint(cfg, o.key_or_group)
            if hint:
                return hint, None
    return text, None


def unknown_options(parsed: list, group: str, source: ConfigSource = ConfigSource()) -> str | None:
    """A message if an override picks an option of an optional `group` that does not exist (Hydra skips it)."""
    folders = [f / group for f in (source.primary, source.extra) if f is not None]
    known = sorted({p.stem for folder in folders for p in folder.glob("*.yaml")})
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
    """Exit with a clear message (status 2) when a non-sweep override cannot compose, read as Hydra reads argv."""
    args = hydra_arguments(argv)
    if args is None or args.help or args.hydra_help or args.info or args.cfg or args.shell_completion:
        return  # Hydra answers these (and its own usage errors) itself
    if args.experimental_rerun:
        return
    try:
        source = config_source(args)
    except ConfigError as exc:
        exit_with(str(exc))
    message, cfg = checked_compose(args.overrides, source)
    if message is None:
        message = run_folder_error(args.overrides, multirun=args.multirun, source=source, composed=cfg)
    if message:
        exit_with(message)


def run_folder_error(
    overrides: Sequence[str],
    multirun: bool = False,
    source: ConfigSource = ConfigSource(),
    composed: DictConfig | None = None,
) -> str | None:
    """Before Hydra opens its log file there: a message if the run folder (a sweep: the output folder)
    cannot be written. `composed`: the config of exactly these overrides, when a check composed it already."""
    if multirun:
        parser = OverridesParser.create()
        swept = [o for o in overrides if parser.parse_override(o).is_sweep_override()]
        if swept:
            composed = None  # composed without them below
            overrides = [o for o in overrides if o not in swept]
    try:
        cfg = composed if composed is not None else source.compose(overrides)
        folder = cfg.paths.output_dir if multirun else cfg.run_dir
    except (HydraException, OmegaConfBaseException):
        return None  # an interpolation this check cannot resolve: Hydra reports it
    return check_writable(folder)
