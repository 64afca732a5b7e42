"""`make check-scale`'s runner on a tiny model in SD1.5's folder layout: real CLI runs, real checks, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from bench.config import CONF_DIR, build
from bench.perf import scale, sd15_folder
from method.sampler import GradSAM
from tests.conftest import compose_cfg


@pytest.fixture(scope="module")
def tiny_sd15_folder(tmp_path_factory, tiny_backbone) -> Path:
    folder = tmp_path_factory.mktemp("tiny_sd15")
    for part in ("unet", "vae", "text_encoder"):
        getattr(tiny_backbone, part).save_pretrained(folder / part)
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(sd15_folder.SCHEDULER))
    sd15_folder.write_tokenizer(folder / "tokenizer")
    (folder / "model_index.json").write_text(json.dumps(sd15_folder.MODEL_INDEX))
    return folder


def test_reduced_check_runs_gradsam_and_sdedit_through_the_cli(tmp_path, tiny_sd15_folder):
    out = tmp_path / "scale.md"
    args = ["--reduced", "--folder", str(tiny_sd15_folder), "--image-size", "32", "--work", str(tmp_path / "work")]
    scale.main([*args, "--out", str(out)])
    report = out.read_text()
    assert "| gradsam |" in report and "| sdedit_0.9 |" in report and "FAILED" not in report
    assert "| tail | 8x8 per channel | ok |" in report  # the gradsam row took the tail path, masks 8x8 per channel


def test_a_wrong_mask_shape_fails_the_check(tmp_path):
    run = tmp_path / "outputs" / "check_scale" / "sd15" / "x" / "gradsam+none"
    (run / "rows").mkdir(parents=True)
    (run / "masks" / "k").mkdir(parents=True)
    (run / "rows" / "k.json").write_text(
        json.dumps({"status": "ok", "score_path": "general", "masks_dir": str(run / "masks" / "k")})
    )
    Image.new("L", (40, 10)).save(run / "masks" / "k" / "subject_mask.png")
    outcome = scale.Outcome("gradsam", 1.0, 1.0, 0)
    scale.check_outputs(outcome, tmp_path, latent=8)
    assert any("score_path='general'" in p for p in outcome.problems)
    assert any("subject_mask.png is 10x40" in p for p in outcome.problems)


def test_the_methods_come_from_conf_method_and_the_classes():
    runs = scale.methods()
    options = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))
    assert sorted(run.overrides[0] for run in runs.values()) == [f"method={o}" for o in options]
    assert set(scale.REDUCED) <= set(runs)
    for name, run in runs.items():
        method = build(compose_cfg(list(run.overrides)).method)
        assert method.label == name and scale.label_glob(name) == f"{name}+none"
        assert run.masked == method.makes_mask and run.tail == isinstance(method, GradSAM)
        if run.tail:  # one injection at index 1: strength 0.9 of a 3-step schedule keeps 2 steps
            assert method.injection_indices == (1,)
