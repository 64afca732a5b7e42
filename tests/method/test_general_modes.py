"""The general path's two exact sides (method.gradsam.row_path: VJPs over rows; method/columns.py: JVPs over
columns) against brute-force autograd and against each other, on every layer set of the tiny UNet.

The brute force is tests/method/test_scores.py's: one torch.autograd.grad per latent element through the UNet
on [cond; uncond]. The subject has two CLIP columns (T = 2) throughout.
"""

from __future__ import annotations

import pytest
import torch

import method.gradsam as gradsam
import method.plans as plans
from bench.task import run_benchmark
from method.attention import recording_attention, resolve_layers
from method.gradsam import CotangentBasis, ScoreInputs, importance_scores_per_layer, scores_and_path
from method.plans import auto_chunk, plan_general
from tests.conftest import compose_cfg
from tests.method.test_scores import (
    BLOCK,
    POSITIONS,
    T,
    W,
    assert_close,
    call,
    grad_sam,
    inputs,
    jacobian_rows,
    scheduler_at_50_steps,
)
from tests.method.unets import SD15_SHAPED, TINY, build_unet

NAMED = ["up_blocks.2.attentions.0.transformer_blocks.0.attn2", "down_blocks.1.attentions.0.transformer_blocks.0.attn2"]
LAYER_SETS = {"last": "last", "all": "all", "res4": "res4", "res2": "res2", "res1": "res1", "names": tuple(NAMED)}
MODES = ["rows", "columns"]


@pytest.fixture(scope="module")
def unet():
    return build_unet(TINY)


@pytest.fixture(scope="module")
def brute_force(unet):
    """{layer set: (per-layer Jacobian rows, per-layer A)} on one (z, cond, uncond), computed on first use."""
    z, cond, uncond = inputs(unet, seed=11)
    cache = {}

    def rows_of(layer_set):
        if layer_set not in cache:
            names = resolve_layers(unet, LAYER_SETS[layer_set], z.shape[-1])
            cache[layer_set] = jacobian_rows(unet, z, cond, uncond, layers=names)
        return cache[layer_set]

    return (z, cond), rows_of


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layer_set", list(LAYER_SETS))
def test_each_mode_equals_brute_force_layer_by_layer(unet, brute_force, layer_set, mode):
    (z, cond), rows_of = brute_force
    rows, probs = rows_of(layer_set)
    config = {"layers": LAYER_SETS[layer_set], "general_mode": mode, "general_chunk_size": 512}
    per_layer = importance_scores_per_layer(call(unet, z, cond), config)
    names = resolve_layers(unet, LAYER_SETS[layer_set], z.shape[-1])
    assert list(per_layer) == names  # execution order, whatever order the names were given in
    for name, layer_rows, a in zip(names, rows, probs, strict=True):
        assert_close(per_layer[name], grad_sam([layer_rows], [a], "abs"))
    total, path = scores_and_path(call(unet, z, cond), {**config, "path": "general"})
    assert path == "general"
    assert_close(total, grad_sam(rows, probs, "abs"))


@pytest.mark.parametrize("target", ["eps_cond", "eps_cfg", "x0_pred", "x_prev"])
@pytest.mark.parametrize("transform", ["abs", "relu"])
def test_rows_and_columns_agree_for_every_target_and_transform(unet, target, transform):
    z, cond, _ = inputs(unet, seed=12)
    scored = call(unet, z, cond, guidance_scale=W, scheduler=scheduler_at_50_steps())
    config = {"layers": "res2", "target": target, "transform": transform, "general_chunk_size": 40}
    by_mode = {mode: importance_scores_per_layer(scored, {**config, "general_mode": mode}) for mode in MODES}
    assert list(by_mode["rows"]) == list(by_mode["columns"]) and len(by_mode["rows"]) == 3
    for name, rows_map in by_mode["rows"].items():
        assert_close(by_mode["columns"][name], rows_map)


def test_columns_through_the_ddpm_step_with_relu_equal_brute_force(unet):
    scheduler = scheduler_at_50_steps()
    z, cond, uncond = inputs(unet, seed=13)
    names = resolve_layers(unet, "res1", z.shape[-1])
    rows, probs = jacobian_rows(unet, z, cond, uncond, layers=names, target="x_prev", scheduler=scheduler)
    stepped = call(unet, z, cond, guidance_scale=W, scheduler=scheduler)
    config = {"layers": "res1", "transform": "relu", "target": "x_prev", "general_mode": "columns"}
    ours, _ = scores_and_path(stepped, config)
    assert_close(ours, grad_sam(rows, probs, "relu"))


def test_columns_with_random_block8_mix_eight_neighbouring_rows(unet, brute_force):
    (z, cond), rows_of = brute_force
    rows, probs = rows_of("res1")
    g = torch.Generator().manual_seed(7)
    mix = torch.block_diag(*[torch.randn(BLOCK, BLOCK, generator=g) for _ in range(64 // BLOCK)])
    config = {"layers": "res1", "transform": "relu", "vjp_basis": "random_block8"}
    by_mode = {}
    for mode in MODES:
        mixed = call(unet, z, cond, generator=torch.Generator().manual_seed(7))
        by_mode[mode], _ = scores_and_path(mixed, {**config, "general_mode": mode})
        assert_close(by_mode[mode], grad_sam(rows, probs, "relu", mix))


@pytest.mark.parametrize("size", [64, 36, 5])  # whole blocks, a partial last block, one partial block
def test_basis_mix_equals_the_dense_basis_matrix(size):
    basis = CotangentBasis(size, "random_block8", torch.Generator().manual_seed(size), torch.device("cpu"))
    columns = torch.randn(7, size, generator=torch.Generator().manual_seed(1))  # [k, M]
    dense = basis.rows(0, size)  # [M, M]
    torch.testing.assert_close(basis.mix(columns), (dense @ columns.T).T)
    identity = CotangentBasis(size, "identity", None, torch.device("cpu"))
    assert identity.mix(columns) is columns


@pytest.mark.parametrize("mode", MODES)
def test_the_chunk_size_changes_the_passes_not_the_scores(unet, mode):
    z, cond, _ = inputs(unet, seed=14)
    maps = [
        importance_scores_per_layer(
            call(unet, z, cond), {"layers": "res1", "general_mode": mode, "general_chunk_size": c}
        )
        for c in (1, 5, 16, 1000)
    ]
    (name,) = maps[0]
    for other in maps[1:]:
        torch.testing.assert_close(other[name], maps[0][name], rtol=1e-5, atol=1e-7)


def test_a_layer_s_columns_do_not_depend_on_the_other_layers_of_the_set(unet):
    z, cond, _ = inputs(unet, seed=15)
    config = {"general_mode": "columns", "general_chunk_size": 512}
    together = importance_scores_per_layer(call(unet, z, cond), {**config, "layers": "res2"})
    for name in list(together)[:2]:
        alone = importance_scores_per_layer(call(unet, z, cond), {**config, "layers": [name]})
        torch.testing.assert_close(alone[name], together[name])


def test_auto_takes_the_side_with_fewer_estimated_forwards(unet, monkeypatch):
    z, cond, _ = inputs(unet, seed=16)
    taken = []
    for side in ("row_path", "column_path"):
        original = getattr(gradsam, side)
        monkeypatch.setattr(gradsam, side, lambda *a, f=original, s=side: taken.append(s) or f(*a))
    # 4x4 latent, 8 heads, T = 2: res1 has 8 * 1 * 2 = 16 columns against 64 rows; res4 3 * 8 * 16 * 2 = 768.
    for layers, expected in [("res1", "column_path"), ("res4", "row_path")]:
        taken.clear()
        importance_scores_per_layer(call(unet, z, cond), {"layers": layers, "general_chunk_size": 8})
        assert taken == [expected]


def test_the_plan_counts_the_recorded_attention_on_a_non_square_latent(unet):
    z = torch.randn(1, 4, 4, 6, generator=torch.Generator().manual_seed(0))
    cond = torch.randn(1, 77, unet.config.cross_attention_dim)
    names = resolve_layers(unet, "all", 4)
    with recording_attention(unet, names) as store, torch.no_grad():
        unet(z, T, encoder_hidden_states=cond)
    modes = set()
    for layers, tokens in [(names, 1), (names, 3), (names[2:3], 1), (names[2:3], 3)]:  # every layer; the mid block
        plan = plan_general(unet, layers, (4, 4, 6), tokens, chunk=10)
        recorded = {name: store.records[name].probs[0, ..., :tokens].numel() for name in layers}  # H * N * T
        assert plan.columns == recorded and plan.rows == 4 * 4 * 6
        assert plan.passes("rows") == 10  # ceil(96 / 10)
        assert plan.passes("columns") == sum(-(-count // 10) for count in recorded.values())
        # rows: one recording forward, 0.5 forward a row; columns: 1 forward a column plus one primal a pass
        rows_cost, columns_cost = 1 + 96 * 0.5, 1 + plan.passes("columns") + sum(recorded.values())
        assert plan.forward_equivalents("rows") == rows_cost
        assert plan.forward_equivalents("columns") == columns_cost
        assert plan.mode == ("columns" if columns_cost < rows_cost else "rows")
        modes.add(plan.mode)
        for forced in MODES:
            assert plan_general(unet, layers, (4, 4, 6), tokens, 10, forced).mode == forced
    assert modes == {"rows", "columns"}  # both decisions were exercised


def test_columns_restore_the_attention_processors_also_after_a_failure(unet, monkeypatch):
    z, cond, _ = inputs(unet, seed=17)
    before = {k: type(p) for k, p in unet.attn_processors.items()}
    importance_scores_per_layer(call(unet, z, cond), {"layers": "res1", "general_mode": "columns"})
    assert {k: type(p) for k, p in unet.attn_processors.items()} == before

    def fail(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr("method.columns.batched_jvp", fail)
    with pytest.raises(RuntimeError, match="boom"):
        importance_scores_per_layer(call(unet, z, cond), {"layers": "res1", "general_mode": "columns"})
    assert {k: type(p) for k, p in unet.attn_processors.items()} == before


def test_a_bad_general_mode_is_refused_with_the_allowed_ones(unet):
    z, cond, _ = inputs(unet)
    with pytest.raises(Exception, match=r"general_mode.*'auto'.*'rows'.*'columns'"):
        scores_and_path(ScoreInputs(unet, z, T, cond, POSITIONS), {"general_mode": "forward"})


def test_dry_run_prints_both_sides_for_every_layer_set(tmp_path, unet, capsys):
    overrides = ["dry_run=true", "method=gradsam", "model.image_size=32", "device=cpu", "metrics=none"]
    run_benchmark(compose_cfg([*overrides, "method.score.general_chunk_size=16"], tmp_path))
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    sets = {"last", "all", "res8", "res4", "res2"}  # an 8x8 latent at 32 px
    printed = {(cells[0], int(cells[2])): cells for cells in lines if cells[0] in sets}
    assert {layer_set for layer_set, _ in printed} == sets
    for (layer_set, tokens), cells in printed.items():
        plan = plan_general(unet, resolve_layers(unet, layer_set, 8), (4, 8, 8), tokens, 16)
        expected = [plan.products("rows"), plan.passes("rows"), plan.products("columns"), plan.passes("columns")]
        assert [int(cells[3]), int(cells[4]), int(cells[6]), int(cells[7])] == expected, cells
        taken = " ".join(cells[9:])
        assert taken.startswith("tail") if layer_set == "last" else taken == f"general {plan.mode}", cells
    assert not list(tmp_path.rglob("*.png")) and not list(tmp_path.rglob("rows/*.json"))  # nothing was made


def largest_attention(unet, height: int, width: int) -> int:
    """heads x queries x keys of the largest attention probabilities a forward pass computes (every self- and
    cross-attention layer, recorded from diffusers' explicit AttnProcessor), per sample."""
    from diffusers.models.attention_processor import Attention, AttnProcessor

    sizes, original = [], dict(unet.attn_processors)
    unet.set_attn_processor(AttnProcessor())
    for module in unet.modules():
        if isinstance(module, Attention):
            scores = module.get_attention_scores
            module.get_attention_scores = lambda *a, f=scores: sizes.append(f(*a)) or sizes[-1]
    try:
        z = torch.randn(1, 4, height, width)
        with torch.no_grad():
            unet(z, T, encoder_hidden_states=torch.randn(1, 77, unet.config.cross_attention_dim))
    finally:
        for module in unet.modules():
            module.__dict__.pop("get_attention_scores", None)
        unet.set_attn_processor(original)
    return max(p.numel() for p in sizes)


@pytest.mark.parametrize(("height", "width"), [(4, 4), (8, 8), (6, 10)])
def test_auto_chunk_is_the_largest_power_of_two_whose_attention_fits_the_budget(unet, monkeypatch, height, width):
    largest = largest_attention(unet, height, width)
    for budget_products in (1, 3, 5, 64, 1000):
        monkeypatch.setattr(plans, "AUTO_CHUNK_BYTES", budget_products * largest * 4)
        fitting = [k for k in (1, 2, 4, 8, 16, 32, 64) if k * largest * 4 <= plans.AUTO_CHUNK_BYTES]
        assert auto_chunk(unet, height, width) == max(fitting, default=1)
        plan = plan_general(unet, resolve_layers(unet, "all", height), (4, height, width), 1, "auto")
        assert plan.chunk == auto_chunk(unet, height, width)


def test_auto_chunk_keeps_8_at_sd15_size_and_64_on_the_toy_latent(unet):
    sd15 = build_unet({**SD15_SHAPED, "sample_size": 64, "attention_head_dim": 8, "block_out_channels": (16,) * 4})
    assert auto_chunk(sd15, 64, 64) == 8  # 8 heads x 4096 x 4096 floats: 512 MiB a product, 4 GiB
    assert auto_chunk(unet, 16, 16) == 64  # the cap


def test_general_chunk_size_is_auto_or_a_positive_integer(unet):
    z, cond, _ = inputs(unet)
    for bad in ("many", 0, 2.5, True):
        with pytest.raises(Exception, match=r"general_chunk_size=.*'auto' or an integer >= 1"):
            scores_and_path(ScoreInputs(unet, z, T, cond, POSITIONS), {"layers": "res1", "general_chunk_size": bad})
