"""`python -m bench.perf gpu`'s CPU test: every section on the tiny model, as a real subprocess.

The script is meant for a GPU machine (SD1.5 size, float16); here it runs at `--device cpu --size tiny` with a
short schedule, two rows and one layer set, and the report it writes is checked for every section and for
numbers that agree with what they count.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from bench.config import REPO_ROOT
from bench.perf.general_modes import sampled_costs
from method.attention import resolve_layers
from method.gradsam import ScoreInputs
from method.plans import plan_general
from tests.method.test_scores import POSITIONS, T, inputs
from tests.method.unets import TINY, build_unet

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}


def run_script(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bench.perf", "gpu", *args]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_the_gpu_script_runs_every_section_on_the_cpu_at_tiny_size(tmp_path):
    out = tmp_path / "gpu.md"
    args = ["--device", "cpu", "--size", "tiny", "--steps", "4", "--rows", "sdedit_0.6,gradsam_paper", "--samples", "1"]
    proc = run_script(
        *args, "--sets", "res2", "--chunk", "16", "--repeats", "2", "--budget-s", "600", "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = out.read_text()
    assert "nothing about a GPU" in report  # the CPU test says what it is
    for section in (
        "## The scoring call in plain forwards",
        "## The general path per layer set and side",
        "## Seconds per sample, every Table 1 row",
    ):
        assert section in report
    assert len(re.findall(r"^- [\d.]+ s, [\d.]+ s, [\d.]+ s$", report, re.M)) == 2  # one line per repetition
    assert re.search(r"call / the float32 UNet's plain forward: median [\d.]+, range [\d.]+-[\d.]+", report)
    for row in ("sdedit_0.6", "gradsam_paper"):
        assert re.search(rf"^\| {row} \| [\d.]+ \| - \| [\d.]+ GB RSS", report, re.M), row
    # res2 on the tiny model's 8x8 latent at 32 px (one 2x2 layer, 8 heads): both sides counted as the plan counts
    # them (at chunk 16, several passes each), both whole calls run, and the entries both sampled passes share agree.
    sides = re.findall(
        r"^\| res2 \| 1 \| (rows|columns)( \(auto\))? \| (\d+) \| (\d+) \| [\d.]+ \| [\d.]+ \| "
        r"([\d.]+) \(.*?\) \| .*? \| ([\d.e+-]+) \|$",
        report,
        re.M,
    )
    assert [s[0] for s in sides] == ["rows", "columns"]
    unet = build_unet(TINY)
    tokens = int(sides[1][2]) // (8 * 4)
    plan = plan_general(unet, ["mid_block.attentions.0.transformer_blocks.0.attn2"], (4, 8, 8), tokens, 16)
    for side, auto, products, passes, _, agree in sides:
        assert (int(products), int(passes)) == (plan.products(side), plan.passes(side)) and int(passes) > 1
        assert bool(auto) == (side == plan.mode)
        assert float(agree) < 1e-4


def test_the_gpu_script_refuses_cuda_where_there_is_none(tmp_path, capsys):
    """In process (the argument check comes first: nothing is built, no thread count set); the test above runs
    the same main() through `python -m bench.perf gpu`."""
    import torch

    from bench.perf import gpu

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(SystemExit) as exit_:
        gpu.main(["--out", str(tmp_path / "gpu.md")])
    assert exit_.value.code == 2
    assert "--device cpu --size tiny" in capsys.readouterr().err
    assert not (tmp_path / "gpu.md").exists()


def test_a_chunk_larger_than_a_side_samples_all_of_that_side():
    """`--chunk` above a layer set's rows or columns (e.g. 256 at res4 on the tiny model: 128 columns) once indexed
    past the layer; now the sampled passes take every row or column there is, and still agree."""
    unet = build_unet(TINY)
    z, cond, _ = inputs(unet)
    for label in ("res1", "last"):
        layers = resolve_layers(unet, label, z.shape[-1])
        cost = sampled_costs(ScoreInputs(unet, z, T, cond, POSITIONS), label, layers, k=100_000)
        assert cost.k == 100_000 and cost.relative_difference < 1e-4, label
