"""method/ stands on the kernel alone: importing and running Grad-SAM pulls in none of the harness."""

from __future__ import annotations

import json
import subprocess
import sys

from bench.config import REPO_ROOT

HARNESS = ["hydra", "omegaconf", "pandas", "wandb", "bench.config", "bench.task", "bench.datasets", "bench.metrics"]

SCRIPT = """
import json, sys
import torch
from diffusers import UNet2DConditionModel
from method.gradsam import ScoreInputs, importance_scores

torch.manual_seed(0)
unet = UNet2DConditionModel(
    sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, cross_attention_dim=16,
    attention_head_dim=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
).eval().requires_grad_(False)
scores = importance_scores(ScoreInputs(unet, torch.randn(1, 4, 8, 8), 500, torch.randn(1, 77, 16), (1, 2)))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("hydra", "omegaconf", "pandas", "wandb", "bench"))
print(json.dumps({"shape": list(scores.shape), "finite": bool(torch.isfinite(scores).all()), "loaded": loaded}))
"""


def test_gradsam_runs_on_a_plain_diffusers_unet_with_the_harness_unimported():
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=True
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["shape"] == [2, 4, 8, 8] and out["finite"]
    harness = [m for m in out["loaded"] if any(m == h or m.startswith(h + ".") for h in HARNESS)]
    assert harness == [], f"importing method.gradsam loaded harness modules: {harness}"
    assert all(m == "bench" or m.startswith("bench.sd") for m in out["loaded"] if m.startswith("bench")), out["loaded"]
