"""Entry point: `python -m bench.run [group=option ...] [key=value ...]` (Hydra).

Examples:
    python -m bench.run method=gradsam ablation=no_blur
    python -m bench.run -m experiment=demo row=sdedit_0.6,txt2img

Without model=/dataset= it runs the offline profile (the trained toy models on the toy world) into the task
runs-<model>-<dataset>; it ends with a summary (bench/summary.py), and a `-m` sweep with one more.
"""

from __future__ import annotations

import logging
import os
import sys
import time

# OpenMP threads sleep instead of spinning while idle (as `make` and the tests set it): on a shared CPU machine
# spinning made runs many times slower. Set before torch is imported; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from bench.cli_checks import check_overrides  # noqa: E402

log = logging.getLogger("bench.run")


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench")
def main(cfg: DictConfig) -> dict:
    started = time.monotonic()
    from bench.datasets.base import DatasetError
    from bench.records import StorageError
    from bench.sd.errors import ConfigError
    from bench.summary import finish_job, start_lines
    from bench.task import run_benchmark  # heavy imports after the config is known good

    try:
        for line in start_lines(cfg):
            print(line, flush=True)
        result = run_benchmark(cfg)
    except (ConfigError, DatasetError) as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except StorageError as exc:  # one message, no traceback: what survived and how to resume is in it
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    if not cfg.dry_run:
        finish_job(cfg, result, time.monotonic() - started)
    return result


if __name__ == "__main__":
    check_overrides(sys.argv[1:])
    main()
