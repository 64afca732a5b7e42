"""Every config option composes, and every option that needs no external asset instantiates."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from bench.config import CONF_DIR, REPO_ROOT, ConfigError, build, check_ablation
from tests.conftest import compose_cfg

# Options whose instantiation needs an asset these machines cannot have (weights, data): they
# compose here; their clear "missing asset" errors are tested beside their loaders.
NEEDS_ASSETS = {("model", "sd15"), ("dataset", "places365"), ("truth", "clipseg")}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_packages_are_this_repository():
    import baselines
    import bench
    import method

    for module in (bench, method, baselines):
        assert REPO_ROOT in __import__("pathlib").Path(module.__file__).resolve().parents


@pytest.mark.parametrize("option", options("method"))
def test_method_options_instantiate(option):
    cfg = compose_cfg([f"method={option}"])
    m = instantiate(cfg.method, _convert_="all")
    assert m.name == cfg.method.name and m.label == cfg.method.label


@pytest.mark.parametrize("option", options("dataset"))
def test_dataset_options_instantiate(option, tmp_path):
    cfg = compose_cfg([f"dataset={option}"], tmp_root=tmp_path)
    if ("dataset", option) in NEEDS_ASSETS:
        return
    refs = instantiate(cfg.dataset, _convert_="all").references()
    assert refs and all(r.prompts for r in refs)


@pytest.mark.parametrize("option", options("model"))
def test_model_options_compose(option):
    cfg = compose_cfg([f"model={option}", "device=cpu"])
    assert cfg.model.name == option
    if ("model", option) not in NEEDS_ASSETS:
        backbone = instantiate(cfg.model, _convert_="all")
        assert backbone.image_size == cfg.model.image_size


@pytest.mark.parametrize("option", options("truth"))
def test_truth_options_instantiate(option):
    cfg = compose_cfg([f"truth={option}", "device=cpu"])
    if ("truth", option) in NEEDS_ASSETS or not cfg.truth:
        return
    segmenter = instantiate(cfg.truth, _convert_="all")
    assert segmenter.name and segmenter.provenance


@pytest.mark.parametrize("option", options("ablation"))
def test_ablation_options_apply_to_their_method(option):
    cfg = compose_cfg([f"ablation={option}"])
    target = cfg.ablation.applies_to or "sdedit"
    cfg = compose_cfg([f"method={target}", f"ablation={option}"])
    check_ablation(cfg)
    instantiate(cfg.method, _convert_="all")


def test_ablation_on_the_wrong_method_is_an_error():
    gradsam_ablations = [o for o in options("ablation") if compose_cfg([f"ablation={o}"]).ablation.applies_to]
    if not gradsam_ablations:
        pytest.skip("no method-specific ablation defined")
    with pytest.raises(ConfigError, match="ablation=.*method=sdedit"):
        check_ablation(compose_cfg(["method=sdedit", f"ablation={gradsam_ablations[0]}"]))


@pytest.mark.parametrize("group", ["metrics", "logger", "row", "experiment"])
def test_other_groups_compose(group, tmp_path):
    for option in options(group):
        cfg = compose_cfg([f"{group}={option}"], tmp_root=tmp_path)
        if group == "logger":
            instantiate(cfg.logger)
        if group == "metrics":
            for node in cfg.metrics.per_sample.values():
                assert "_target_" in node


def test_struct_mode_rejects_unknown_keys():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose_cfg(["sampling.guidnce_scale=3"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method=gradsam", "+method.mask.blur.sigmaa=1"], "method.mask.blur has unknown keys ['sigmaa']"),
        (["method=gradsam", "+method.score.transfrom=relu"], "known: ['chunk_size', 'general_chunk_size', 'kind'"),
        (["method=gradsam", "method.mask.threshold_k=nan"], "method.mask.threshold_k=nan is not a finite number"),
        (["method=blended_latent", "method.strength=inf"], "method.strength=inf is not a finite number in (0, 1]"),
        (["method=sdedit", "method.strength=nan"], "method.strength=nan is not a finite number in (0, 1]"),
        (["method=diffedit", "method.mask_threshold=-inf"], "method.mask_threshold=-inf"),
        (["method=gradsam", "method.score.path=fast"], "method.score.path='fast' is not one of ['auto', 'tail'"),
    ],
)
def test_bad_method_settings_from_the_command_line_are_one_config_error(overrides, message):
    with pytest.raises(ConfigError) as err:
        build(compose_cfg(overrides).method)
    assert type(err.value) is ConfigError and message in str(err.value)
