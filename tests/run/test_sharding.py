"""Any split into K shards gives the 1-shard run bit for bit; shards that merge at once never corrupt samples.csv."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pandas as pd
import pytest
from hydra.utils import instantiate

from bench.merge import main as merge_main
from bench.records import merge_samples, write_row
from bench.sd.errors import ConfigError
from bench.task import plan_work, run_benchmark
from tests.conftest import FAST, PIXEL_ONLY, compose_cfg

# 2 scenes x 1 prompt x 3 seeds = 6 work units: with K = 3 every shard has 2. One cheap metric in the rows.
# One CPU thread: images depend on the thread count, and one thread is not slowed down by a busy machine.
OVERRIDES = [*FAST, *PIXEL_ONLY, "model.image_size=32", "seeds=[1,2,3]", "method=sdedit", "cpu_threads=1"]
RUN_DIR = "outputs/demo/tiny/synthetic_places/sdedit_0.6+none"


def run_in_shards(root: Path, count: int) -> dict[str, bytes]:
    """Run shards 0..count-1 one after the other into one root; return every result file by relative path."""
    planned = 0
    for index in range(count):
        summary = run_benchmark(compose_cfg([*OVERRIDES, f"shard.index={index}", f"shard.count={count}"], root))
        planned += summary["planned"]
    assert planned == 6
    files = [*(root / RUN_DIR).glob("images/**/*.png"), *(root / RUN_DIR).glob("rows/**/*.json")]
    files.append(root / "results/demo/samples.csv")
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def test_shards_partition_the_work_units():
    cfg = compose_cfg(OVERRIDES)
    references = instantiate(cfg.dataset, _convert_="all").references()
    every = [u.key for u in plan_work(references, [1, 2, 3], 0, 1)]
    assert len(every) == len(set(every)) == 6
    for count in (2, 3, 4, 7):
        shards = [[u.key for u in plan_work(references, [1, 2, 3], k, count)] for k in range(count)]
        assert sorted(sum(shards, [])) == sorted(every)  # complete and disjoint
        assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced
    with pytest.raises(ConfigError, match="shard.index=2, shard.count=2"):
        plan_work(references, [1], 2, 2)


def test_k_shards_are_bit_identical_to_one(tmp_path):
    one = run_in_shards(tmp_path / "k1", 1)
    assert sum(name.endswith(".png") for name in one) == 6
    samples = pd.read_csv(tmp_path / "k1/results/demo/samples.csv")
    assert len(samples) == 6 and set(samples["status"]) == {"ok"} and sorted(samples["seed"]) == [1, 1, 2, 2, 3, 3]
    for count in (2, 3):
        assert run_in_shards(tmp_path / f"k{count}", count) == one, f"{count} shards differ from 1"
    # The merge step alone rebuilds the same samples.csv from all shards' rows.
    merged = tmp_path / "k3/results/demo/samples.csv"
    merged.unlink()
    merge_main(["--output-dir", str(tmp_path / "k3/outputs"), "--results-dir", str(tmp_path / "k3/results")])
    assert merged.read_bytes() == one["results/demo/samples.csv"]
    # The run's config.yaml is the same whoever wrote it last (the shard is only in .hydra/ and env files).
    configs = {
        (tmp_path / f"k{k}" / RUN_DIR / "config.yaml").read_text().replace(str(tmp_path / f"k{k}"), "<root>")
        for k in (1, 2, 3)
    }
    assert len(configs) == 1 and "shard" not in configs.pop()


def _writer(task_dir: str, samples_csv: str, template: dict, seeds: list[int]) -> None:
    """A shard: writes its rows one at a time, merging the task's samples.csv after each (as run_benchmark does)."""
    for seed in seeds:
        key = f"{template['image_id']}/x/s{seed}"
        write_row(Path(task_dir) / "run", key, {**template, "seed": seed, "sample_key": key})
        merge_samples(task_dir, samples_csv)


def test_concurrent_merges_never_corrupt_samples_csv(tmp_path):
    run_benchmark(compose_cfg([*OVERRIDES, "seeds=[1]", "dataset.subcategories=[forest]"], tmp_path / "seed"))
    template = json.loads(next((tmp_path / "seed" / RUN_DIR).glob("rows/**/*.json")).read_text())
    task_dir, samples_csv = tmp_path / "task", tmp_path / "results/samples.csv"
    ctx = multiprocessing.get_context("fork")
    shards = [list(range(k, 60, 3)) for k in range(3)]  # three writers, 20 rows each
    procs = [ctx.Process(target=_writer, args=(task_dir, samples_csv, template, s)) for s in shards]
    for p in procs:
        p.start()
    seen = []  # every version of samples.csv a reader sees while the writers run
    while any(p.is_alive() for p in procs):
        if samples_csv.exists():
            text = samples_csv.read_text()
            header, *lines = text.splitlines()
            assert text.endswith("\n") and header.startswith("task,model,dataset,label"), "a half-written CSV"
            seen.append(len(lines))
        time.sleep(0.002)
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert seen == sorted(seen), "a later merge lost rows that an earlier one had"
    final = pd.read_csv(samples_csv)
    assert sorted(final["seed"]) == list(range(60))  # every row of every writer, once
    assert final["pixel_mad"].tolist() == pytest.approx([template["pixel_mad"]] * 60, rel=1e-5)
    assert set(final["status"]) == {"ok"}
    assert not list(tmp_path.rglob("*.tmp"))
