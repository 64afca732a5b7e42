"""Rows, variants and ablations: each row file is its own (label, ablation) pair, a variant is a preset of
gradsam with its own label, an ablation one switch that composes with any variant and wins on a shared key."""

from __future__ import annotations

import pandas as pd
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bench.config import CONF_DIR, ConfigError, check_ablation, check_variant
from method.sampler import GradSAM
from tests.conftest import compose_cfg, minimal_run, run_cli
from tests.method.test_sampler import INDICES, STEPS, make_sample


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


ROWS, VARIANTS, ABLATIONS = options("row"), options("variant"), options("ablation")
PAPER_LABEL = compose_cfg(["method=gradsam"]).method.label
# The score path each variant must take on the tiny model (the others: the paper's exact tail path).
SCORE_PATHS = {
    "attention_only": "attention",
    "all_layers": "general",
    "layers_res8": "general",
    "daam": "daam",
    "noise_diff": "noise_diff",
}


def method_switches(group: str, option: str) -> dict[str, object]:
    """The dotted method keys (label included) that conf/<group>/<option>.yaml sets, with their values."""
    node = OmegaConf.load(CONF_DIR / group / f"{option}.yaml").get("method")
    return pd.json_normalize(OmegaConf.to_container(node), sep=".").to_dict("records")[0] if node else {}


def test_every_row_file_is_its_own_label_and_ablation_and_run_folder():
    composed = {row: compose_cfg([f"row={row}"]) for row in ROWS}
    pairs = {row: (cfg.method.label, cfg.ablation.name) for row, cfg in composed.items()}
    shared = {pair: [r for r in ROWS if pairs[r] == pair] for pair in pairs.values()}
    assert all(len(rows) == 1 for rows in shared.values()), f"rows sharing a (label, ablation): {shared}"
    assert len({cfg.run_dir for cfg in composed.values()}) == len(ROWS)
    for cfg in composed.values():
        check_ablation(cfg)
        check_variant(cfg)
    assert pairs["gradsam_paper"] == (PAPER_LABEL, "none")
    assert pairs["no_manipulation"] == ("no_manipulation", "none")
    assert composed["no_manipulation"].method.manipulate is False


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "none"])
def test_a_variant_is_a_gradsam_preset_with_its_own_label(variant):
    cfg = compose_cfg([f"variant={variant}"])
    assert cfg.variant.name == variant and cfg.variant.applies_to == "gradsam"
    switches = method_switches("variant", variant)
    assert "label" in switches and switches["label"] != PAPER_LABEL  # its rows never meet the paper's
    assert set(switches) - {"label"}, f"variant={variant} sets no switch"
    cfg = compose_cfg(["method=gradsam", f"variant={variant}"])
    check_variant(cfg)
    assert cfg.method.label == switches["label"] and cfg.run_dir.endswith(f"/{switches['label']}+none")
    with pytest.raises(ConfigError, match=f"variant={variant} sets switches of method=gradsam, but method=sdedit"):
        check_variant(compose_cfg(["method=sdedit", f"variant={variant}"]))


def test_variant_labels_are_distinct_and_variants_are_not_ablations():
    labels = [method_switches("variant", v).get("label") for v in VARIANTS if v != "none"]
    assert len(set(labels)) == len(labels)
    assert not set(VARIANTS) & set(ABLATIONS) - {"none"}
    for ablation in ABLATIONS:
        assert "label" not in method_switches("ablation", ablation), f"ablation={ablation} renames the row"
    assert compose_cfg([]).variant.name == "none" and compose_cfg([]).variant.applies_to is None
    check_variant(compose_cfg(["method=sdedit", "variant=none"]))  # none fits every method


def test_every_variant_composes_with_every_ablation_and_the_ablation_wins():
    for variant in VARIANTS:
        for ablation in ABLATIONS:
            method = compose_cfg(["method=gradsam", f"variant={variant}", f"ablation={ablation}"]).method
            expected = method_switches("variant", variant) | method_switches("ablation", ablation)
            got = {key: OmegaConf.select(method, key) for key in expected}
            got = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in got.items()}
            assert got == expected, f"variant={variant} ablation={ablation}"
    # The reference code at threshold k = 0: the ablation's switch, every other key of the preset kept.
    method = compose_cfg(["method=gradsam", "variant=reference_code", "ablation=threshold_mean"]).method
    assert method.mask.threshold_k == 0.0 and method.score.transform == "relu" and method.mask.box_sum_once


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "none"])
def test_every_variant_changes_its_switches_and_runs(tiny_backbone, variant):
    cfg = compose_cfg(["method=gradsam", f"variant={variant}"])
    cfg.method.injection_indices = INDICES if variant != "all_layers" else INDICES[:1]  # general path: slow
    cfg.method.score.general_chunk_size = 256  # one batched backward pass per injection on the CPU
    method = instantiate(cfg.method, _convert_="all")
    baseline = GradSAM(injection_indices=method.injection_indices)
    changed = {k for k, v in method.columns().items() if baseline.columns().get(k) != v}
    assert changed and method.label != baseline.label, f"variant={variant} changes no switch"
    out = method.generate(tiny_backbone, [make_sample("Picnickers relaxing", "Picnickers")], STEPS)[0]
    assert out.failure is None and out.image.shape == (32, 32, 3)
    assert {f"kept_frac_i{k}" for k in method.injection_indices} <= set(out.info)
    assert out.masks["subject_mask"].shape == (8, 8)
    assert out.info["score_path"] == SCORE_PATHS.get(variant, "tail")
    assert out.info["subject_positions"] == ("0" if variant == "reference_code" else "1,2,3")


def test_cli_runs_a_variant_with_an_ablation_and_refuses_it_on_another_method(tmp_path):
    args = [*minimal_run(), "sampling.num_inference_steps=10", "method.injection_indices=[2]", "cpu_threads=1"]
    run_cli([*args, "method=gradsam", "variant=daam", "ablation=no_blur", f"paths.root_dir={tmp_path}"], tmp_path)
    assert (tmp_path / "outputs/demo/tiny/synthetic_places/gradsam_daam+no_blur/config.yaml").is_file()
    row = pd.read_csv(tmp_path / "results/demo/samples.csv").iloc[0]
    assert (row["status"], row["label"], row["ablation"]) == ("ok", "gradsam_daam", "no_blur")
    assert row["method.score.kind"] == "daam" and row["method.mask.blur"] == "off"
    refused = run_cli([*minimal_run(), "variant=daam", f"paths.root_dir={tmp_path / 'x'}"], tmp_path, check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "variant=daam sets switches of method=gradsam, but method=sdedit" in refused.stderr
    assert not list((tmp_path / "x").rglob("*.png"))  # refused before any sample
