"""Experiment tracking. A tracker failure never loses results: they are on disk first."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)


class NullTracker:
    """logger=none: tracks nothing."""

    run_dir: str | None = None

    def start(self, config: dict, name: str) -> None:
        pass

    def log_table(self, name: str, frame: pd.DataFrame) -> None:
        pass

    def log_images(self, name: str, paths: list[str]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbTracker(NullTracker):
    """logger=wandb: one W&B run per Hydra job, grouped by task, offline when no API key is configured.

    WANDB_MODE is respected; with no mode and no API key the run is offline (a folder that
    `wandb sync` uploads later). Errors from W&B are logged as warnings and never stop the run.
    """

    def __init__(
        self,
        project: str,
        group: str,
        dir: str,
        entity: str | None = None,
        mode: str | None = None,
        init_timeout: float = 120,
    ):
        self.project, self.group, self.dir, self.entity = project, group, dir, entity
        self.init_timeout = init_timeout
        self.mode = mode or ("online" if _has_api_key() else "offline")
        self.run = None

    def start(self, config: dict, name: str) -> None:
        import wandb

        try:
            Path(self.dir).mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                project=self.project,
                entity=self.entity,
                group=self.group,
                name=name,
                job_type=name.split("/")[0],
                dir=self.dir,
                mode=self.mode,
                config=config,
                reinit="finish_previous",
                settings=wandb.Settings(silent=True, init_timeout=self.init_timeout),
            )
            self.run_dir = self.run.dir if self.run is not None else None
        except Exception as exc:  # W&B must never cost results
            log.warning("W&B init failed (%s); continuing without tracking.", exc)
            self.run = None

    def _safe(self, what: str, fn) -> None:
        if self.run is None:
            return
        try:
            fn()
        except Exception as exc:
            log.warning("W&B %s failed (%s); results on disk are unaffected.", what, exc)

    def log_table(self, name: str, frame: pd.DataFrame) -> None:
        import wandb

        self._safe(f"log_table({name})", lambda: self.run.log({name: wandb.Table(dataframe=frame.astype(str))}))

    def log_images(self, name: str, paths: list[str]) -> None:
        import wandb

        self._safe(f"log_images({name})", lambda: self.run.log({name: [wandb.Image(p) for p in paths]}))

    def finish(self, exit_code: int = 0) -> None:
        self._safe("finish", lambda: self.run.finish(exit_code=exit_code))
        self.run = None


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")
