"""Shared fixtures: compose configs like the CLI does, a tiny backbone, and a CLI runner.

Everything runs on the CPU with no network: the hub is forced offline, W&B is offline.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP: no spinning threads
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core: their subprocesses get one thread too
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# One intra-op thread: the tiny models' ops are too small to split, and on shared cores a second thread
# made samples up to 40x slower (measured). Subprocess runs use torch's default unless cpu_threads is set.
torch.set_num_threads(1)

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from bench.config import CONF_DIR, REPO_ROOT  # noqa: E402
from tests.warm_cli import run_python_module, stop  # noqa: E402

# The profile a test runs on unless it names its own: the random-weight tiny model on procedural scenes
# (fast, needs no trained weights), feeding the task `demo` (the paths the tests check). `python -m bench.run`
# itself defaults to the trained toy profile and a task of its own (conf/bench.yaml); `with_test_profile` adds
# each of these whose key the test leaves unset.
TINY = ["model=tiny", "dataset=synthetic_places", "task_name=demo"]
# Overrides that make a run small and fast on the CPU (tests only; the protocol defaults stay 50 steps).
FAST = [
    "sampling.num_inference_steps=10",
    "dataset.images_per_subcategory=1",
    "dataset.prompts_per_subcategory=1",
    "dataset.subcategories=[forest,ocean]",
]
# Rows with one cheap metric (pixel MAD) instead of the default metrics.
PIXEL_ONLY = ["metrics=none", "+metrics.per_sample.pixel_mad._target_=bench.metrics.pixel.PixelMAD"]


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """Runs set torch's thread count (`cpu_threads`); every test starts from the suite's one thread."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def minimal_run(images_per_subcategory: int = 1) -> list[str]:
    """Overrides for the smallest real run: forest only, one prompt, 2 steps on a 32 px model, no metrics."""
    return [
        "dataset.subcategories=[forest]",
        f"dataset.images_per_subcategory={images_per_subcategory}",
        "dataset.prompts_per_subcategory=1",
        "sampling.num_inference_steps=2",
        "metrics=none",
        "model.image_size=32",
        "device=cpu",
    ]


def with_test_profile(args: list[str]) -> list[str]:
    """`args` (overrides, after flags such as -m) with each TINY override whose key they leave unset, placed
    before the first override. An `experiment=` sets its own profile and task (experiment=demo: model=toy), so
    with one nothing is added."""
    overrides = [i for i, a in enumerate(args) if "=" in a and not a.startswith("-")]
    keys = {args[i].split("=", 1)[0].lstrip("+~") for i in overrides}
    if "experiment" in keys:
        return list(args)
    first = overrides[0] if overrides else len(args)
    return [*args[:first], *(o for o in TINY if o.split("=", 1)[0] not in keys), *args[first:]]


def compose_cfg(overrides: list[str] | None = None, tmp_root: Path | None = None) -> DictConfig:
    """Compose conf/bench.yaml as `python -m bench.run` would (without Hydra's runtime node), on the tests'
    TINY profile unless `overrides` name the model, the dataset or the task."""
    overrides = with_test_profile(list(overrides or []))
    if tmp_root is not None:
        overrides.append(f"paths.root_dir={tmp_root}")
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("bench", overrides=overrides)


def printout_width(text: str, root: Path) -> int:
    """The widest line of a printout, with the user's folder `root` written as `<root>`: a path is printed whole,
    so its length is the user's, not the printout's (under pytest-xdist tmp paths grow by popen-gwN/)."""
    return max(len(line) for line in text.replace(str(root), "<root>").splitlines())


def run_cli(
    args: list[str], cwd: Path, timeout: int = 300, check: bool = True, fresh: bool = False
) -> subprocess.CompletedProcess:
    """`python -m bench.run ...` as a real process, offline, on the tests' TINY profile unless `args` name
    the model, the dataset or the task (`run_cli_exact` runs `args` alone)."""
    return run_cli_exact(with_test_profile(args), cwd, timeout, check, fresh)


def run_cli_exact(
    args: list[str], cwd: Path, timeout: int = 300, check: bool = True, fresh: bool = False
) -> subprocess.CompletedProcess:
    """`python -m bench.run <args>` exactly as given (the user's defaults: the trained toy profile), offline: a
    process forked from the tests' warm interpreter (tests/warm_cli.py), or with `fresh` a new interpreter."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO_ROOT)}
    proc = run_python_module("bench.run", args, cwd, env, timeout, fresh)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"bench.run {args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def tiny_backbone():
    """The offline tiny SD backbone at 32 px (8x8 latents), shared by the tests (never mutated)."""
    cfg = compose_cfg(["model.image_size=32", "device=cpu"])
    return instantiate(cfg.model, _convert_="all")


def pytest_sessionfinish(session, exitstatus) -> None:
    """Stop this worker's warm interpreter (tests/warm_cli.py), if a test started one."""
    stop()
