"""Running an entry point as a real subprocess, offline, with this checkout first on the path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.config import REPO_ROOT


def run_module(cwd: Path, module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m <module> <args>` in `cwd` (tests/conftest.run_cli does this for bench.run)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", module, *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
