"""Attack suite (#15): what a typo, a hostile value or a half-finished earlier run produce.

Every bad value is refused with a message that names the key, the value and the fix, before any model
loads and before anything is written; a refused run never blocks the corrected rerun.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from bench.config import ConfigError
from bench.datasets.base import DatasetError, PromptSpec, ReferenceImage
from bench.task import SETTINGS_FILE, plan_work, run_benchmark
from tests.conftest import compose_cfg, minimal_run, run_cli

# 10 steps at strength 0.9: a schedule of 9, injection indices 1..8.
GRADSAM = ["method=gradsam", *minimal_run(), "sampling.num_inference_steps=10", "method.injection_indices=[2,5]"]
SDEDIT = ["method=sdedit", *minimal_run()]


def written_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


BAD_VALUES = [
    # (overrides, words the message must hold)
    ([*GRADSAM, "method.mask.threshold_k=nan"], ["method.mask.threshold_k=nan", "finite number"]),
    ([*GRADSAM, "method.mask.threshold_k=inf"], ["method.mask.threshold_k=inf", "finite number"]),
    ([*GRADSAM, "method.strength=0.5"], ["method.injection_indices=[2, 5]: [5] lie outside", "are 1..4"]),
    ([*GRADSAM, "sampling.num_inference_steps=20", "method.injection_indices=[5,18]"], ["[18] lie outside"]),
    ([*GRADSAM, "method.injection_indices=[5,5]"], ["method.injection_indices", "strictly increasing"]),
    ([*GRADSAM, "method.mask.blur.kernel=4"], ["method.mask.blur.kernel=4", "odd integer"]),
    ([*GRADSAM, "method.score.layers=[]"], ["method.score.layers=[]"]),
    ([*SDEDIT, "method.strength=0.01"], ["method.strength=0.01", "leaves no denoising step"]),
    ([*SDEDIT, "method.strength=1.5"], ["method.strength=1.5", "(0, 1]"]),
    (["method=diffedit", *minimal_run(), "method.mask_strength=0.1"], ["method.mask_strength=0.1", "no denoising"]),
    ([*SDEDIT, "sampling.guidance_scale=nan"], ["sampling.guidance_scale=nan", "finite number >= 0"]),
    ([*SDEDIT, "sampling.guidance_scale=-1"], ["sampling.guidance_scale=-1", "finite number >= 0"]),
    ([*SDEDIT, "sampling.num_inference_steps=0"], ["sampling.num_inference_steps=0", "integer >= 1"]),
    ([*SDEDIT, "sampling.num_inference_steps=2.5"], ["sampling.num_inference_steps=2.5", "integer >= 1"]),
    ([*SDEDIT, "sampling.batch_invariant=maybe"], ["sampling.batch_invariant='maybe'", "true or false"]),
    ([*SDEDIT, "seeds=[1,1]"], ["seeds=[1, 1] repeats [1]"]),
    ([*SDEDIT, "seeds=[1.5]"], ["seeds=", "list of integers"]),
    ([*SDEDIT, "seeds=7"], ["seeds=7", "list of integers"]),
    ([*SDEDIT, "seeds=[]"], ["seeds=[]", "non-empty"]),
    ([*SDEDIT, "batch_size=0"], ["batch_size=0", "integer >= 1"]),
    ([*SDEDIT, "batch_size=1.5"], ["batch_size=1.5", "integer >= 1"]),
    ([*SDEDIT, "shard.index=2", "shard.count=2"], ["shard.index=2, shard.count=2"]),
    ([*SDEDIT, "shard.index=-1"], ["shard.index=-1"]),
    ([*SDEDIT, "task_name=../../escape"], ["task_name='../../escape'", "safe folder name"]),
    ([*SDEDIT, "task_name=a/b"], ["task_name='a/b'"]),
    ([*SDEDIT, "task_name=.hidden"], ["task_name='.hidden'"]),
    ([*SDEDIT, "task_name=''"], ["task_name=''"]),
    ([*SDEDIT, "method.label=../../x"], ["method.label='../../x'"]),
    ([*SDEDIT, "ablation=no_blur"], ["ablation=no_blur flips switches of method=gradsam"]),
    ([*SDEDIT, "cpu_threads=0"], ["cpu_threads=0"]),
    ([*SDEDIT, "model.image_size=33"], ["model.image_size=33 is not a multiple of 8"]),
    ([*SDEDIT, "sampling.negative_prompt=null"], ["sampling.negative_prompt=None is not a string"]),
    ([*SDEDIT, "metrics=default", "metrics.clip=nope"], ["metrics.clip='nope' is not an open_clip model"]),
]


@pytest.mark.parametrize("overrides, words", BAD_VALUES, ids=[o[-1] for o, _ in BAD_VALUES])
def test_bad_value_is_refused_before_anything_is_loaded_or_written(tmp_path, overrides, words):
    with pytest.raises(ConfigError) as info:
        run_benchmark(compose_cfg(overrides, tmp_path))
    message = str(info.value)
    assert all(w in message for w in words), message
    assert any(w in message for w in ("Fix", "expected", "Use ", "Change")), message  # it says what to do
    assert written_files(tmp_path) == []  # no settings file, no config.yaml, not even a folder


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_refused_before_loading(tmp_path):
    with pytest.raises(ConfigError, match="device=cuda but torch sees no CUDA device.*device=auto"):
        run_benchmark(compose_cfg([*SDEDIT, "device=cuda"], tmp_path))
    assert written_files(tmp_path) == []


def test_more_steps_than_the_model_was_trained_with_are_refused_before_any_write(tmp_path):
    with pytest.raises(ConfigError, match="sampling.num_inference_steps=1001 exceeds the model's 1000 training"):
        run_benchmark(compose_cfg([*SDEDIT, "sampling.num_inference_steps=1001"], tmp_path))
    assert not list(tmp_path.rglob("config.yaml")) and not list(tmp_path.rglob(SETTINGS_FILE))


def test_a_damaged_row_is_named_and_the_rerun_redoes_that_sample_alone(tmp_path, caplog):
    """Damaged means not done (#23): the rerun names the file and redoes that one sample; every other is kept."""
    overrides = [*SDEDIT, "seeds=[1,2]"]
    run_benchmark(compose_cfg(overrides, tmp_path))
    rows = sorted(Path(compose_cfg(overrides, tmp_path).run_dir).rglob("rows/**/*.json"))
    kept = {p: p.read_bytes() for p in rows[1:]}
    whole = rows[0].read_bytes()
    rows[0].write_text('{"status": "ok", "trunc')
    summary = run_benchmark(compose_cfg(overrides, tmp_path))
    assert summary["pending"] == 1 and summary["damaged"] == 1
    assert f"{rows[0]} is not a row" in caplog.text and "redone now" in caplog.text
    assert rows[0].read_bytes() == whole  # redone bit for bit
    assert all(p.read_bytes() == data for p, data in kept.items())


def test_a_refused_start_does_not_block_the_corrected_rerun(tmp_path):
    bad = [*GRADSAM, "sampling.num_inference_steps=6"]  # a schedule of 5 at 0.9: index 5 does not exist
    with pytest.raises(ConfigError, match="valid indices are 1..4"):
        run_benchmark(compose_cfg(bad, tmp_path))
    fixed = [*bad, "method.injection_indices=[2,4]"]
    summary = run_benchmark(compose_cfg(fixed, tmp_path))
    assert summary["pending"] == 1 and Path(summary["samples_csv"]).is_file()


def test_a_settings_file_without_samples_never_blocks_a_run(tmp_path):
    """An older harness wrote image_settings.json before failing: with no sample behind it, it is rewritten."""
    run_dir = Path(compose_cfg(SDEDIT, tmp_path).run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / SETTINGS_FILE).write_text(json.dumps({"model": {"name": "other"}}))
    assert run_benchmark(compose_cfg(SDEDIT, tmp_path))["pending"] == 1
    assert json.loads((run_dir / SETTINGS_FILE).read_text())["model"]["name"] == "tiny"


def test_a_garbled_settings_file_is_a_clear_error(tmp_path):
    run_dir = Path(compose_cfg(SDEDIT, tmp_path).run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / SETTINGS_FILE).write_text("{half a json")
    with pytest.raises(ConfigError, match=re.escape(f"cannot read {run_dir / SETTINGS_FILE}: Expecting")):
        run_benchmark(compose_cfg(SDEDIT, tmp_path))


def unit_reference(image_id: str, *prompts: str) -> ReferenceImage:
    specs = tuple(PromptSpec(p, p.split()[-1].strip(",.!")) for p in prompts)
    return ReferenceImage(image_id, "c", "s", specs, "test", loader=lambda: None)


def test_prompts_that_would_share_a_folder_are_refused_by_name():
    refs = [unit_reference("forest/00000", "A deer", "a deer!")]
    with pytest.raises(ConfigError) as info:
        plan_work(refs, [1], 0, 1)
    assert "'A deer'" in str(info.value) and "'a deer!'" in str(info.value) and "reword" in str(info.value)


def test_an_image_id_that_climbs_out_of_the_run_folder_is_refused():
    with pytest.raises(DatasetError, match=r"reference image id '../../etc' .*unsafe output path"):
        plan_work([unit_reference("../../etc", "a deer")], [1], 0, 1)


def test_a_subject_beyond_the_77_token_window_is_refused_before_any_write(tmp_path):
    cfg = compose_cfg(GRADSAM, tmp_path)
    long_prompt = " ".join(["very"] * 80 + ["deer"])
    forest = next(e for e in cfg.protocol.subcategories if e.subcategory == "forest")
    forest.prompts = [{"text": long_prompt, "subject": "deer"}]
    with pytest.raises(ConfigError) as info:
        run_benchmark(cfg)
    message = str(info.value)
    assert "'deer'" in message and long_prompt in message and "77-token text window" in message
    assert "shorten the prompt" in message
    assert not list(tmp_path.rglob("config.yaml")) and not list(tmp_path.rglob(SETTINGS_FILE))


@pytest.mark.parametrize(
    "args, words",
    [
        (["row=no_such_row"], ["row=no_such_row: no such row", "gradsam_paper", "sdedit_0.6"]),
        (["-m", "row=txt2img,no_such_row"], ["row=no_such_row: no such row"]),
        (["method=sdedit", "sampling.guidance_scale=[1"], ["cannot parse the overrides"]),
        (["task_name=../escape"], ["task_name='../escape' is not a safe folder name"]),
    ],
)
def test_cli_refuses_before_hydra_writes_anything(tmp_path, args, words):
    proc = run_cli([*args, f"paths.root_dir={tmp_path}"], cwd=tmp_path, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert all(w in proc.stderr for w in words), proc.stderr
    assert "Traceback" not in proc.stderr
    assert written_files(tmp_path) == []  # not even Hydra's log or .hydra folder
