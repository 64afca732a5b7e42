"""Maps as data: per-layer maps, DAAM, the noise difference, layer sets by resolution, channel rules, and
recording that leaves the image untouched (tiny UNets, the offline tiny backbone)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from bench.sd.config import from_mapping
from bench.sd.diffusion import TextConditioning, denoise, encode_text, truncated_timesteps
from bench.sd.errors import ConfigError
from bench.sd.seeding import draw_normal
from method.attention import layer_resolutions, recording_attention, resolve_layers
from method.config import MaskConfig, ScoreConfig
from method.gradsam import (
    ScoreInputs,
    attention_maps,
    attention_scores,
    importance_scores_per_layer,
    scores_and_path,
)
from method.kinds import DAAMKind
from method.masks import subject_mask
from method.sampler import GradSAM
from tests.conftest import compose_cfg, run_cli
from tests.method.test_sampler import INDICES, STEPS, UNDILATED, make_sample
from tests.method.unets import SD15_SHAPED, TINY, build_unet

T = torch.tensor(780)
POSITIONS = [1, 2]
ALL_KINDS = ["gradsam", "attention_only", "daam", "noise_diff"]


def cubic_matrix(out_size: int, in_size: int, a: float = -0.75) -> torch.Tensor:
    """1-D bicubic interpolation as a matrix [out, in] (Keys kernel, half-pixel centres, clamped borders)."""

    def kernel(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        if x < 2:
            return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
        return 0.0

    m = torch.zeros(out_size, in_size, dtype=torch.float64)
    for i in range(out_size):
        src = (i + 0.5) * in_size / out_size - 0.5
        base = int(np.floor(src))
        for tap in range(base - 1, base + 3):
            m[i, min(max(tap, 0), in_size - 1)] += kernel(src - tap)
    return m


def hand_daam(steps: list[dict[str, torch.Tensor]], side: int) -> torch.Tensor:
    """castorini/daam's aggregation, written out: for every (layer, head) outside the mid block, the subject's
    attention summed over the steps, bicubic-upsampled (Keys, half-pixel), clamped at 0; the mean over all
    (layer, head) pairs. `steps`: per step {layer: A [H, N_l, S]}. Returns [S, side, side] (float64)."""
    names = [n for n in steps[0] if not n.startswith("mid_block.")]
    maps = []
    for name in names:
        summed = sum(step[name].double() for step in steps)  # [H, N_l, S]
        n = int(summed.shape[1] ** 0.5)
        up = cubic_matrix(side, n)
        for head in summed:  # [N_l, S]
            maps.append(
                torch.stack([(up @ head[:, s].reshape(n, n) @ up.T).clamp(min=0) for s in range(head.shape[1])])
            )
    return torch.stack(maps).mean(dim=0)


def subject_attention(unet, names, z, t, cond, positions) -> dict[str, torch.Tensor]:
    """One forward pass's conditional attention to the subject columns per layer {name: [H, N_l, S]}."""
    with recording_attention(unet, names) as store, torch.no_grad():
        unet(z, t, encoder_hidden_states=cond)
    return {name: store.records[name].probs[0][..., positions] for name in names}


def test_daam_equals_the_package_s_aggregation_written_out_by_hand():
    unet = build_unet(TINY)
    g = torch.Generator().manual_seed(0)
    z, cond = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    names = resolve_layers(unet, "all")
    assert any(n.startswith("mid_block.") for n in names)  # the tiny UNet has one: DAAM must leave it out
    inputs = ScoreInputs(unet, z, T, cond, POSITIONS)
    kind = DAAMKind(tuple(names))
    assert not any(n.startswith("mid_block.") for n in kind.layers) and len(kind.layers) == len(names) - 1
    for _ in range(2):  # two steps at the same inputs: the sum doubles, the clamped mean doubles
        kind.observe(inputs)
    total, path = kind.total(inputs)  # [S, C, 8, 8]
    assert path == "daam" and torch.equal(total[:, 0], total[:, 3])  # the same map in every channel
    step = subject_attention(unet, names, z, T, cond, POSITIONS)
    torch.testing.assert_close(total[:, 0].double(), hand_daam([step, step], 8), atol=1e-6, rtol=1e-5)
    with pytest.raises(ConfigError, match="never uses the mid block"):
        DAAMKind(tuple(n for n in names if n.startswith("mid_block.")))


def test_per_layer_maps_sum_to_the_layer_set_score():
    unet = build_unet(TINY)
    g = torch.Generator().manual_seed(1)
    z, cond = torch.randn(1, 4, 4, 4, generator=g), torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    inputs = ScoreInputs(unet, z, T, cond, POSITIONS)
    config = from_mapping(ScoreConfig, {"layers": "all", "general_chunk_size": 16}, "method.score")
    per_layer = importance_scores_per_layer(inputs, config)
    assert list(per_layer) == resolve_layers(unet, "all") and len(per_layer) == 7
    whole, path = scores_and_path(inputs, {"layers": "all", "general_chunk_size": 16})
    assert path == "general"
    assert torch.equal(sum(per_layer.values(), torch.zeros_like(whole)), whole)  # the same terms, same order
    last, path = scores_and_path(inputs)
    assert path == "tail"
    torch.testing.assert_close(per_layer[resolve_layers(unet, "last")[0]], last, atol=1e-6, rtol=1e-4)
    attention = attention_maps(inputs, "all")
    expected = attention_scores(inputs, "all")[:, 0]
    assert torch.equal(sum(attention.values(), torch.zeros_like(expected)), expected)


def test_layer_sets_by_resolution_and_a_listing_on_unknown_ones():
    unet = build_unet(SD15_SHAPED)  # sample_size 8: maps 8, 4, 2 down; 1 mid; 2, 4, 8 up
    sizes = layer_resolutions(unet)
    assert list(sizes) == resolve_layers(unet, "all") and len(sizes) == 16
    assert [sizes[n] for n in resolve_layers(unet, "res8")] == [8] * 5  # 2 down, 3 up
    assert resolve_layers(unet, "res1") == ["mid_block.attentions.0.transformer_blocks.0.attn2"]
    assert set(layer_resolutions(unet, latent_size=64).values()) == {64, 32, 16, 8}  # SD1.5 at 512 px
    with pytest.raises(ConfigError, match=r"res3.*Valid: \['res1', 'res2', 'res4', 'res8'\]") as err:
        resolve_layers(unet, "res3")
    assert "up_blocks.3.attentions.2.transformer_blocks.0.attn2  8x8" in str(err.value)
    with pytest.raises(ConfigError, match="res1, res2, res4, res8"):
        resolve_layers(unet, ["nope"])


def test_channel_rules_and_the_scale_aware_dilation():
    score = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(2))

    def mask(**values):
        return subject_mask(score, from_mapping(MaskConfig, values, "method.mask"))

    off = {"blur": {"enabled": False}, "dilation": {"enabled": False}}
    per_channel, union, summed = mask(**off), mask(**off, channel_rule="union"), mask(**off, channel_rule="sum")
    assert not torch.equal(per_channel[0], per_channel[1])
    assert torch.equal(union, per_channel.amax(0, keepdim=True).expand(4, -1, -1))
    total = score.sum(0)
    assert torch.equal(summed[0], (total > total.mean() + 0.5 * total.std()).float())
    assert torch.equal(summed[0], summed[3])
    dilation = from_mapping(MaskConfig, {"dilation": {"scale_aware": True}}, "m").dilation
    assert [dilation.reach(h) for h in (64, 32, 16, 8)] == [3, 2, 1, 1]
    assert from_mapping(MaskConfig, {}, "m").dilation.reach(16) == 3  # the paper's default
    with pytest.raises(ConfigError, match="channel_rule"):
        from_mapping(MaskConfig, {"channel_rule": "max"}, "method.mask")


def test_recording_leaves_the_image_bit_identical_and_stores_every_kind(tiny_backbone):
    sample = make_sample()
    common = {"injection_indices": INDICES, "mask": UNDILATED, "score": {"general_chunk_size": 256}}
    plain = GradSAM(**common).generate(tiny_backbone, [sample], STEPS)[0]
    record = {"record": True, "kinds": ALL_KINDS, "layers": "all"}
    recorded = GradSAM(**common, attribution=record).generate(tiny_backbone, [sample], STEPS)[0]
    assert np.array_equal(plain.image, recorded.image)
    assert plain.maps == [] and plain.info == recorded.info
    kinds = {(m.kind, m.index) for m in recorded.maps}
    assert kinds == {(k, i) for k in ALL_KINDS for i in INDICES}
    layers = resolve_layers(tiny_backbone.unet, "all")
    own = [m for m in recorded.maps if m.layer is None and m.layer_set == "last"]
    assert len(own) == len(INDICES) and all(m.values.shape == (4, 8, 8) for m in recorded.maps)
    gradsam_layers = [m for m in recorded.maps if m.kind == "gradsam" and m.index == INDICES[0] and m.layer in layers]
    assert [m.layer for m in gradsam_layers] == layers  # one map per layer, execution order
    np.testing.assert_allclose(gradsam_layers[-1].values, own[0].values, rtol=1e-4, atol=1e-6)  # last layer = own score


def test_daam_in_a_chain_sums_the_steps_so_far_and_the_whole_chain_by_window(tiny_backbone):
    sample = make_sample()
    record = {"record": True, "kinds": ["daam"], "layers": "all", "daam": {"window": "both"}}
    out = GradSAM(injection_indices=INDICES, manipulate=False, attribution=record).generate(
        tiny_backbone, [sample], STEPS
    )
    maps = out[0].maps
    # The no_manipulation chain is the plain sampler: replay it and aggregate the attention by hand.
    scheduler = tiny_backbone.new_scheduler()
    timesteps = truncated_timesteps(scheduler, STEPS.num_inference_steps, 0.9)
    cond, uncond = encode_text(tiny_backbone, [sample.prompt]), encode_text(tiny_backbone, [""])
    shape = (tiny_backbone.latent_channels, tiny_backbone.latent_size, tiny_backbone.latent_size)
    z = draw_normal([sample.generator("init")], shape, tiny_backbone.device, torch.float32) * scheduler.init_noise_sigma
    seen = []
    denoise(
        tiny_backbone, scheduler, z, timesteps, TextConditioning(cond, uncond), STEPS, [sample.generator("steps")],
        on_step_end=lambda i, t, z_t, z_next: seen.append((t, z_t.clone())) or z_next,
    )  # fmt: skip
    unet, names = tiny_backbone.unet, resolve_layers(tiny_backbone.unet, "all")
    positions = [int(p) for p in out[0].info["subject_positions"].split(",")]
    steps = [subject_attention(unet, names, z_t, t, cond, positions) for t, z_t in seen]

    def recorded(index: int) -> torch.Tensor:  # the per-layer shares summed: the layer set's map [8, 8]
        return sum(torch.from_numpy(m.values[0]).double() for m in maps if m.kind == "daam" and m.index == index)

    first, length = INDICES[0], len(timesteps)
    causal = hand_daam(steps[:first], 8).sum(dim=0)  # the steps up to the first scoring call, tokens summed
    torch.testing.assert_close(recorded(first), causal, atol=1e-5, rtol=1e-4)
    full = hand_daam(steps, 8).sum(dim=0)  # every step of the chain: castorini/daam's map, once, at index L
    torch.testing.assert_close(recorded(length), full, atol=1e-5, rtol=1e-4)
    assert {m.index for m in maps if m.kind == "daam"} == {*INDICES, length}


def test_daam_can_drive_a_mask_only_with_the_causal_window():
    with pytest.raises(ConfigError, match="method.score.daam.window=full with method.score.kind=daam"):
        GradSAM(score={"kind": "daam", "daam": {"window": "full"}})
    GradSAM(score={"kind": "gradsam", "daam": {"window": "full"}})  # unused without kind=daam


def test_daam_and_noise_diff_drive_the_mask(tiny_backbone):
    for kind in ("daam", "noise_diff"):
        out = GradSAM(injection_indices=INDICES, mask=UNDILATED, score={"kind": kind}).generate(
            tiny_backbone, [make_sample()], STEPS
        )[0]
        assert out.failure is None and out.info["score_path"] == kind
        assert 0 < out.info["kept_frac_i2"] < 1


def test_every_new_switch_composes_with_method_gradsam(tiny_backbone):
    switches = [
        "method.score.kind=daam",
        "method.score.layers=res4",
        "method.mask.channel_rule=sum",
        "method.mask.dilation.scale_aware=true",
        "method.attribution.record=true",
        "method.attribution.kinds=[attention_only,noise_diff]",
        "method.attribution.layers=res8",
    ]
    cfg = compose_cfg(["method=gradsam", *switches])
    method = instantiate(cfg.method, _convert_="all")
    columns = method.columns()
    assert columns["score.kind"] == "daam" and columns["score.layers"] == "res4"
    assert columns["mask.channel_rule"] == "sum" and columns["mask.dilation.scale_aware"] is True
    method.config = replace(method.config, injection_indices=tuple(INDICES))
    out = method.generate(tiny_backbone, [make_sample()], STEPS)[0]
    assert out.failure is None and {m.kind for m in out.maps} == {"daam", "attention_only", "noise_diff"}
    assert {m.layer for m in out.maps if m.kind == "attention_only"} == set(
        resolve_layers(tiny_backbone.unet, "res8", 8)
    )
    assert "mask.channel_rule" not in GradSAM().columns()  # default rows keep their columns


def test_dry_run_lists_the_cross_attention_layers_with_their_sizes(tmp_path):
    proc = run_cli(["dry_run=true", "method=gradsam", "model.image_size=32", "device=cpu", "metrics=none"], tmp_path)
    assert "cross-attention layers" in proc.stdout
    assert "up_blocks.2.attentions.1.transformer_blocks.0.attn2  8x8" in proc.stdout
