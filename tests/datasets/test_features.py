"""Every dataset declares its features (records_truth, manifest) as a `Dataset`; anything else is refused by name."""

from __future__ import annotations

import pytest
from hydra.utils import get_class, instantiate

from bench.datasets.base import Dataset
from bench.sd.errors import ConfigError
from bench.task import run_benchmark
from tests.conftest import compose_cfg, minimal_run


@pytest.mark.parametrize(
    ("dataset", "records_truth"), [("synthetic_places", False), ("toy_world", False), ("places365", True)]
)
def test_every_dataset_config_builds_a_dataset_that_declares_whether_it_records_truth(dataset, records_truth):
    cls = get_class(compose_cfg([f"dataset={dataset}"]).dataset._target_)
    assert issubclass(cls, Dataset)
    assert cls.records_truth is records_truth


@pytest.mark.parametrize("dataset", ["synthetic_places", "toy_world"])
def test_drawn_scenes_read_no_file_so_have_no_manifest(dataset):
    built = instantiate(compose_cfg([f"dataset={dataset}"]).dataset, _convert_="all")
    assert built.references() and built.manifest() is None


def test_a_dataset_target_that_is_no_dataset_is_refused_before_anything_is_written(tmp_path):
    cfg = compose_cfg([*minimal_run(), "dataset._target_=builtins.dict"], tmp_root=tmp_path)
    with pytest.raises(ConfigError, match=r"^dataset=synthetic_places builds a dict, which is not a bench\.datasets"):
        run_benchmark(cfg)
    assert not (tmp_path / "outputs").exists()
