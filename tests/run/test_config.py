"""Every config option composes, and every option that needs no external asset instantiates."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from bench.config import CONF_DIR, REPO_ROOT, ConfigError, build, check_ablation, check_variant
from bench.datasets.base import DatasetError
from bench.sd.errors import AssetMissingError
from tests.conftest import compose_cfg

# Options whose instantiation needs an asset these machines cannot have (weights, data). Pointed at an empty
# folder (paths.root_dir is the test's tmp folder; `{empty}` below), each must refuse with its clear
# missing-asset error: (overrides, error type, words the message holds). Their loaders' tests hold the rest.
NEEDS_ASSETS = {
    ("model", "sd15"): (["model.cache_dir={empty}"], AssetMissingError, "Stable Diffusion v1-5 weights"),
    ("dataset", "places365"): ([], DatasetError, "Places365 images not found under dataset.root="),
    ("truth", "clipseg"): (["truth.cache_dir={empty}"], AssetMissingError, "the CLIPSeg weights"),
}


def missing_asset_is_explained(group: str, option: str, tmp_path, build_it) -> None:
    """The asset of (group, option) is absent here: building it (`build_it(cfg)`) names what is missing."""
    overrides, error, words = NEEDS_ASSETS[(group, option)]
    empty = tmp_path / "empty"
    overrides = [o.format(empty=empty) for o in overrides]
    cfg = compose_cfg([f"{group}={option}", "device=cpu", *overrides], tmp_root=tmp_path)
    with pytest.raises(error) as info:
        build_it(cfg)
    assert words in str(info.value) and "Provide" in str(info.value), str(info.value)


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
    if ("dataset", option) in NEEDS_ASSETS:
        missing_asset_is_explained("dataset", option, tmp_path, lambda cfg: build(cfg.dataset).references())
    else:
        cfg = compose_cfg([f"dataset={option}"], tmp_root=tmp_path)
        refs = instantiate(cfg.dataset, _convert_="all").references()
        assert refs and all(r.prompts for r in refs)


@pytest.mark.parametrize("option", options("model"))
def test_model_options_instantiate(option, tmp_path):
    cfg = compose_cfg([f"model={option}", "device=cpu"])
    assert cfg.model.name == option
    if ("model", option) in NEEDS_ASSETS:
        missing_asset_is_explained("model", option, tmp_path, lambda cfg: build(cfg.model))
    else:
        backbone = instantiate(cfg.model, _convert_="all")
        assert backbone.image_size == cfg.model.image_size


@pytest.mark.parametrize("option", options("truth"))
def test_truth_options_instantiate(option, tmp_path):
    cfg = compose_cfg([f"truth={option}", "device=cpu"])
    if ("truth", option) in NEEDS_ASSETS:
        missing_asset_is_explained("truth", option, tmp_path, lambda cfg: build(cfg.truth))
    elif option == "none":
        assert not cfg.truth and not compose_cfg([f"truth@truth_compare={option}"]).truth_compare  # no segmenter
    else:
        segmenter = instantiate(cfg.truth, _convert_="all")
        assert segmenter.name and segmenter.provenance


CHECKS = {"ablation": check_ablation, "variant": check_variant}


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in CHECKS for o in options(g)])
def test_ablation_and_variant_options_apply_to_their_method(group, option):
    cfg = compose_cfg([f"{group}={option}"])
    target = cfg[group].applies_to or "sdedit"
    cfg = compose_cfg([f"method={target}", f"{group}={option}"])
    CHECKS[group](cfg)
    instantiate(cfg.method, _convert_="all")


@pytest.mark.parametrize("group", CHECKS)
def test_ablation_or_variant_on_the_wrong_method_is_an_error(group):
    specific = [o for o in options(group) if compose_cfg([f"{group}={o}"])[group].applies_to]
    assert specific, f"conf/{group}/ holds no method-specific option"
    for option in specific:
        with pytest.raises(ConfigError, match=f"{group}={option} .* method=gradsam, but method=sdedit.*Use "):
            CHECKS[group](compose_cfg(["method=sdedit", f"{group}={option}"]))


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
        (["method=gradsam", "+method.score.transfrom=relu"], "known: ['chunk_size', 'daam', 'general_chunk_size'"),
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
