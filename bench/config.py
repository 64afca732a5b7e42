"""Config helpers shared by the entry point, the tests and the scripts."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"

if not OmegaConf.has_resolver("repo_root"):
    OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))


class ConfigError(ValueError):
    """A config value that cannot work, with the value, the rule and the fix in the message."""


def apply_ablation(cfg: DictConfig) -> DictConfig:
    """Merge the chosen ablation's `overrides` into `cfg.method` and check that it applies.

    An ablation flips documented method switches; it only makes sense for the method it was
    written for. A misspelt switch is an error naming the method's keys (struct mode).
    """
    ablation = cfg.ablation
    applies_to = ablation.get("applies_to")
    if applies_to is not None and cfg.method.name != applies_to:
        raise ConfigError(
            f"ablation={ablation.name} flips switches of method={applies_to}, but method={cfg.method.name}. "
            f"Use method={applies_to} ablation={ablation.name}, or ablation=none."
        )
    if not ablation.overrides:
        return cfg
    OmegaConf.set_struct(cfg, True)
    for key in ablation.overrides:
        if key not in cfg.method:
            raise ConfigError(
                f"ablation={ablation.name} sets method.{key}, which method={cfg.method.name} does not have. "
                f"Its keys are: {sorted(cfg.method.keys())}."
            )
    with open_dict_guard(cfg):
        cfg.method = OmegaConf.merge(cfg.method, ablation.overrides)
    return cfg


class open_dict_guard:
    """Temporarily lift struct mode on a config (restored on exit, also after an exception)."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    def __enter__(self) -> DictConfig:
        self.was_struct = OmegaConf.is_struct(self.cfg)
        OmegaConf.set_struct(self.cfg, False)
        return self.cfg

    def __exit__(self, *exc) -> None:
        OmegaConf.set_struct(self.cfg, self.was_struct)


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
