"""Grad-SAM scores against a brute-force per-element autograd loop through the whole UNet (docs/paper.md §2.3).

The brute force is the reference code's computation without its shortcuts: the UNet on [cond; uncond],
one torch.autograd.grad per latent element of the target, w.r.t. the recorded probabilities.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import DDPMScheduler

from bench.sd.errors import ConfigError
from method.attention import recording_attention, resolve_layers
from method.gradsam import BLOCK, ScoreInputs, attention_scores, importance_scores, scores_and_path
from method.post_jacobian import HeadProducts, linearize_head
from method.tail import (
    TailInputs,
    build_tail,
    capturing_tail_inputs,
    geglu_parts,
    position_jacobian,
    tail_modules,
)
from tests.method.unets import NO_TAIL, SD15_SHAPED, TINY, build_unet

W = 8.0  # guidance scale
T = torch.tensor(780)
POSITIONS = [1, 2]  # a two-piece subject word


def inputs(unet, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dim = unet.config.cross_attention_dim
    z = torch.randn(1, 4, 4, 4, generator=g)  # 64 latent elements
    return z, torch.randn(1, 77, dim, generator=g), torch.randn(1, 77, dim, generator=g)


def scheduler_at_50_steps() -> DDPMScheduler:
    s = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    s.set_timesteps(50)
    return s


def jacobian_rows(unet, z, cond, uncond, layers="last", target="eps_cond", scheduler=None):
    """J[l][m] = d target[m] / d A_l[cond] [M, H, N_l, 77], one backward pass per element m."""
    names = resolve_layers(unet, layers)
    with recording_attention(unet, names) as store, torch.enable_grad():
        eps = unet(torch.cat([z, z]), T, encoder_hidden_states=torch.cat([cond, uncond])).sample
        eps_cond, eps_uncond = eps[:1], eps[1:]
        eps_cfg = eps_uncond + W * (eps_cond - eps_uncond)
        if target == "eps_cond":
            y = eps_cond
        elif target == "x_prev":  # the real DDPM step, fixed step noise
            y = scheduler.step(eps_cfg, T, z, generator=torch.Generator().manual_seed(0)).prev_sample
        else:
            raise ValueError(target)
        y = y.flatten()
        probs = [store.records[n].probs for n in names]  # [2, H, N, 77], both halves in the graph
        rows = [[] for _ in names]
        for m in range(y.numel()):
            for layer, g in enumerate(torch.autograd.grad(y[m], probs, retain_graph=True)):
                rows[layer].append(g[0])
    return [torch.stack(r) for r in rows], [p.detach()[0] for p in probs]


def grad_sam(rows, probs, transform, mix=None):
    """S_s[m] = sum_l sum_{h,q} A_l[h,q,s] T(row_m[h,q,s]), rows optionally mixed first (B2)."""
    out = 0
    for j, a in zip(rows, probs, strict=True):
        j = j[..., POSITIONS]  # [M, H, N, S]
        if mix is not None:
            j = torch.einsum("mk,khns->mhns", mix, j)
        t = j.abs() if transform == "abs" else j.relu()
        out = out + torch.einsum("mhns,hns->sm", t, a[..., POSITIONS])
    return out.view(len(POSITIONS), 4, 4, 4)


def call(unet, z, cond, **extra) -> ScoreInputs:
    """The scoring inputs of (z, T, cond) at the subject's columns POSITIONS."""
    return ScoreInputs(unet, z, T, cond, POSITIONS, **extra)


def assert_close(ours, ref):
    assert ref.abs().max() > 0 and ref.std() > 0  # a non-trivial map
    rel = ((ours - ref).abs().max() / ref.abs().max()).item()
    assert rel <= 1e-5, rel


@pytest.fixture(scope="module", params=[TINY, SD15_SHAPED], ids=["tiny", "sd15_shaped"])
def unet_and_rows(request):
    unet = build_unet(request.param)
    z, cond, uncond = inputs(unet)
    return unet, (z, cond, uncond), jacobian_rows(unet, z, cond, uncond)


@pytest.mark.parametrize("path", ["tail", "general"])
@pytest.mark.parametrize("transform", ["abs", "relu"])
def test_last_layer_scores_equal_brute_force(unet_and_rows, path, transform):
    unet, (z, cond, _), (rows, probs) = unet_and_rows
    config = {"layers": "last", "transform": transform, "path": path, "chunk_size": 24}
    ours, taken = scores_and_path(call(unet, z, cond), config)
    assert taken == path
    assert ours.shape == (len(POSITIONS), 4, 4, 4)
    assert_close(ours, grad_sam(rows, probs, transform))


def last_layer_tail(unet, z, cond):
    """The tail of the last layer and its subject columns a_sub [H, N, S], as the tail path builds them."""
    (layer,) = resolve_layers(unet, "last")
    mods = tail_modules(unet, layer)
    with recording_attention(unet, [layer]) as store, capturing_tail_inputs(mods) as kept, torch.no_grad():
        unet(z, T, encoder_hidden_states=cond)
    probs, value = store.records[layer].probs[0].detach(), store.records[layer].value[0]
    inputs = TailInputs(kept["block_residual"][0], kept["transformer_residual"][0])
    positions = torch.tensor(POSITIONS)
    return build_tail(mods, inputs, probs, value, positions), probs[:, :, positions]


@pytest.mark.parametrize("config", [TINY, SD15_SHAPED], ids=["tiny_conv_proj", "sd15_shaped_linear_proj"])
def test_position_jacobian_paths_equal_a_jvp_through_the_whole_position_wise_tail(config):
    unet = build_unet(config)
    z, cond, _ = inputs(unet)
    tail, a_sub = last_layer_tail(unet, z, cond)
    heads, _, tokens = a_sub.shape
    reference = []
    for h in range(heads):
        for s in range(tokens):  # tangent 1 at (h, s) for every query
            tangent = torch.zeros_like(a_sub)
            tangent[h, :, s] = 1.0
            reference.append(torch.func.jvp(tail.position_wise, (a_sub,), (tangent,))[1])
    reference = torch.stack(reference)  # [H*S, N, C']
    assert geglu_parts(tail.mods) is not None
    u, written_out = position_jacobian(tail, a_sub)
    u_vmap, vmapped = position_jacobian(dataclasses.replace(tail, mods=None), a_sub, chunk=3)
    torch.testing.assert_close(u, tail.position_wise(a_sub))
    torch.testing.assert_close(u_vmap, u)
    assert_close(written_out, reference)
    assert_close(vmapped, reference)
    # Mixed rows (any mix matrix, zeros included) are mix @ rows.
    products = HeadProducts(linearize_head(*tail.head, u.T.reshape(tail.grid)), written_out)
    mix = torch.randn(16, 16, generator=torch.Generator().manual_seed(0)) * (torch.rand(16, 16) < 0.5)
    expected = torch.einsum("kj,jqx->kqx", mix, products.rows(8, 24))
    assert_close(products.rows(8, 24, mix), expected)
    assert_close(products.contract(8, 24, torch.clone, mix, scale=-2.0, tile=5), -2 * expected)


def test_all_layers_general_path_equals_brute_force():
    unet = build_unet(TINY)
    z, cond, uncond = inputs(unet, seed=1)
    rows, probs = jacobian_rows(unet, z, cond, uncond, layers="all")
    ours, taken = scores_and_path(call(unet, z, cond), {"layers": "all", "general_chunk_size": 16})
    assert taken == "general" and len(rows) == 7
    assert_close(ours, grad_sam(rows, probs, "abs"))


def test_x_prev_target_with_relu_equals_brute_force_through_the_ddpm_step():
    unet, scheduler = build_unet(TINY), scheduler_at_50_steps()
    z, cond, uncond = inputs(unet, seed=2)
    rows, probs = jacobian_rows(unet, z, cond, uncond, target="x_prev", scheduler=scheduler)
    stepped = call(unet, z, cond, guidance_scale=W, scheduler=scheduler)
    for path in ("tail", "general"):
        ours = importance_scores(stepped, {"transform": "relu", "target": "x_prev", "path": path})
        assert_close(ours, grad_sam(rows, probs, "relu"))
    # With relu the sign of d x_prev / d eps (< 0) matters; with abs every target gives the same mask.
    eps_relu = importance_scores(call(unet, z, cond), {"transform": "relu"})
    assert not torch.allclose(eps_relu / eps_relu.max(), ours / ours.max(), atol=1e-3)
    x_abs = importance_scores(stepped, {"target": "x_prev"})
    eps_abs = importance_scores(call(unet, z, cond))
    torch.testing.assert_close(x_abs / x_abs.max(), eps_abs / eps_abs.max())


@pytest.mark.parametrize("path", ["tail", "general"])
def test_random_block8_mixes_eight_neighbouring_rows(path):
    unet = build_unet(TINY)
    z, cond, uncond = inputs(unet, seed=3)
    rows, probs = jacobian_rows(unet, z, cond, uncond)
    g = torch.Generator().manual_seed(7)
    mix = torch.block_diag(*[torch.randn(BLOCK, BLOCK, generator=g) for _ in range(64 // BLOCK)])
    mixed = call(unet, z, cond, generator=torch.Generator().manual_seed(7))
    ours = importance_scores(mixed, {"transform": "relu", "vjp_basis": "random_block8", "path": path})
    assert_close(ours, grad_sam(rows, probs, "relu", mix))


def test_no_tail_unet_falls_back_to_the_general_path():
    unet = build_unet(NO_TAIL)
    z, cond, uncond = inputs(unet, seed=4)
    rows, probs = jacobian_rows(unet, z, cond, uncond)
    ours, taken = scores_and_path(call(unet, z, cond))
    assert taken == "general"
    assert_close(ours, grad_sam(rows, probs, "abs"))
    with pytest.raises(ConfigError, match="upsampler"):
        importance_scores(call(unet, z, cond), {"path": "tail"})


def test_attention_only_is_the_head_sum_of_the_maps_nearest_upsampled():
    unet = build_unet(TINY)
    z, cond, _ = inputs(unet, seed=5)
    z = torch.randn(1, 4, 8, 8)  # layers at 8x8, 4x4 and 2x2
    names = resolve_layers(unet, "all")
    with recording_attention(unet, names) as store, torch.no_grad():
        unet(z, T, encoder_hidden_states=cond)
    expected = torch.zeros(len(POSITIONS), 8, 8)
    for name in names:
        a = store.records[name].probs[0][..., POSITIONS].sum(0)  # [N_l, S]
        side = int(a.shape[0] ** 0.5)
        for i in range(8):
            for j in range(8):
                expected[:, i, j] += a[(i * side // 8) * side + j * side // 8]
    ours = attention_scores(call(unet, z, cond), "all")
    assert ours.shape == (len(POSITIONS), 4, 8, 8)
    for c in range(4):
        torch.testing.assert_close(ours[:, c], expected)


def test_bad_arguments_are_explained():
    unet = build_unet(TINY)
    z, cond, _ = inputs(unet)
    with pytest.raises(ConfigError, match="transform"):
        importance_scores(call(unet, z, cond), {"transform": "square"})
    with pytest.raises(ConfigError, match="target"):
        importance_scores(call(unet, z, cond), {"target": "x0"})
    with pytest.raises(ValueError, match="scheduler"):
        importance_scores(call(unet, z, cond), {"target": "x_prev"})
    with pytest.raises(ValueError, match="generator"):
        importance_scores(call(unet, z, cond), {"vjp_basis": "random_block8"})
    with pytest.raises(ConfigError, match="single layer"):
        importance_scores(call(unet, z, cond), {"layers": "all", "path": "tail"})
    with pytest.raises(
        ConfigError, match=r"method.score has unknown keys \['layrs'\]"
    ):  # a typo in a mapping: named, never ignored
        importance_scores(call(unet, z, cond), {"layrs": "all"})
    with pytest.raises(ValueError, match="one sample at a time"):
        call(unet, torch.cat([z, z]), cond)
