"""Entry point: `python -m bench.run [group=option ...] [key=value ...]` (Hydra).

Examples:
    python -m bench.run method=gradsam ablation=no_blur
    python -m bench.run -m experiment=demo row=sdedit_0.6,txt2img
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from bench.cli_checks import check_overrides

log = logging.getLogger("bench.run")


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench")
def main(cfg: DictConfig) -> None:
    from bench.datasets.base import DatasetError
    from bench.records import StorageError
    from bench.sd.errors import ConfigError
    from bench.task import run_benchmark  # heavy imports after the config is known good

    try:
        run_benchmark(cfg)
    except (ConfigError, DatasetError) as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except StorageError as exc:  # one message, no traceback: what survived and how to resume is in it
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    check_overrides(sys.argv[1:])
    main()
