"""The tests' warm interpreter (tests/warm_cli.py) runs a module as a fresh `python -m` does."""

from __future__ import annotations

import json
import os

import pytest

from tests.warm_cli import fresh_only, run_python_module


@pytest.mark.parametrize("status", ["0", "2", "a message", "raise"])
def test_a_forked_run_sees_and_ends_as_a_fresh_interpreter(status):
    if fresh_only():
        pytest.skip("BENCH_TESTS_FRESH=1 (or not Linux): every run is a fresh interpreter")
    env = {**os.environ, "WARM_PROBE": "yes"}
    env.pop("PYTHONPATH", None)  # the working folder alone puts tests/ on the path, as `python -m` does
    cwd = os.path.dirname(os.path.dirname(__file__))
    warm, fresh = (
        run_python_module("tests.warm_probe", [status, "--flag"], cwd, env, 60, fresh=f) for f in (False, True)
    )
    assert (warm.returncode, warm.stdout) == (fresh.returncode, fresh.stdout)
    assert warm.returncode == {"0": 0, "2": 2}.get(status, 1)
    seen = json.loads(warm.stdout)
    assert seen["argv"] == [status, "--flag"] and seen["probe_env"] == "yes" and seen["main"] == "__main__"
    assert seen["project_preloaded"] == []  # the child imports the project's code itself
    assert warm.stderr.startswith("to stderr\n")
    if status == "a message":
        assert warm.stderr == fresh.stderr == "to stderr\na message\n"
    if status == "raise":
        assert warm.stderr.splitlines()[-1] == fresh.stderr.splitlines()[-1] == "RuntimeError: probe failure"
