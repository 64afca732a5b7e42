"""The method-side operators of the attribution study: the faithfulness mask (the paper's operator at a chosen kept
area), the chance score kinds, and the chain's latents kept so that maps can be recomputed at the same inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.sd.config import from_mapping
from bench.sd.errors import ConfigError
from bench.sd.maps import centre_prior
from method.config import MaskConfig
from method.gradsam import ScoreInputs, attention_maps
from method.masks import subject_mask, top_cells
from method.sampler import GradSAM
from tests.method.test_sampler import INDICES, STEPS, make_sample

TOP = {"rule": "top_fraction", "blur": {"enabled": False}, "dilation": {"enabled": False}}


def top_mask(score: torch.Tensor, fraction: float) -> torch.Tensor:
    return subject_mask(score, from_mapping(MaskConfig, {**TOP, "keep_fraction": fraction}, "method.mask"))


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_top_fraction_keeps_exactly_that_share_of_the_highest_cells_in_every_channel(fraction):
    score = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(3))
    mask = top_mask(score, fraction)
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and torch.equal(mask[0], mask[3])
    kept = mask[0].bool()
    assert int(kept.sum()) == round(fraction * 256)
    cells = score.sum(dim=0)
    if 0 < fraction < 1:  # every kept cell scores above every dropped one
        assert cells[kept].min() > cells[~kept].max()


def test_top_fraction_breaks_ties_in_row_major_order_and_refuses_smoothing():
    flat = torch.zeros(4, 4)
    assert torch.equal(top_cells(flat, 0.25).flatten().nonzero().flatten(), torch.arange(4))
    with pytest.raises(ConfigError, match="rule=top_fraction keeps exactly"):
        from_mapping(MaskConfig, {"rule": "top_fraction"}, "method.mask")  # the paper's blur and dilation are on


def test_a_faithfulness_point_at_100_percent_is_the_no_manipulation_image(tiny_backbone):
    sample = make_sample()
    control = GradSAM(injection_indices=INDICES, manipulate=False).generate(tiny_backbone, [sample], STEPS)[0]
    kept_all = GradSAM(injection_indices=INDICES, mask={**TOP, "keep_fraction": 1.0})
    out = kept_all.generate(tiny_backbone, [sample], STEPS)[0]
    assert np.array_equal(out.image, control.image)  # bit for bit: M = 1 keeps z, replaces nothing
    assert all(out.info[f"kept_frac_i{k}"] == 1.0 for k in INDICES)


def test_a_faithfulness_point_at_0_percent_replaces_every_cell(tiny_backbone):
    sample = make_sample()
    nothing = GradSAM(injection_indices=INDICES, mask={**TOP, "keep_fraction": 0.0})
    out = nothing.generate(tiny_backbone, [sample], STEPS)[0]
    assert all(out.info[f"kept_frac_i{k}"] == 0.0 for k in INDICES)
    assert all(not out.masks[f"mask_i{k}"].any() for k in INDICES)
    for kind in ("centre_prior", "uniform", "gradsam"):  # whatever the map: nothing of the chain is kept
        other = GradSAM(injection_indices=INDICES, score={"kind": kind}, mask={**TOP, "keep_fraction": 0.0})
        assert np.array_equal(other.generate(tiny_backbone, [sample], STEPS)[0].image, out.image)


def test_the_chance_kinds_are_the_centre_prior_and_identity_seeded_uniform_cells(tiny_backbone):
    half = {**TOP, "keep_fraction": 0.25}
    centre = GradSAM(injection_indices=INDICES, score={"kind": "centre_prior"}, mask=half)
    out = centre.generate(tiny_backbone, [make_sample()], STEPS)[0]
    prior = centre_prior(8, 8)
    expected = prior >= np.sort(prior.ravel())[::-1][15]  # the 16 most central cells of the 8x8 latent
    assert out.info["score_path"] == "centre_prior" and np.array_equal(out.masks["subject_mask"] > 0.5, expected)
    uniform = GradSAM(injection_indices=INDICES, score={"kind": "uniform"}, mask=half)
    first, again = (uniform.generate(tiny_backbone, [make_sample()], STEPS)[0] for _ in range(2))
    other = uniform.generate(tiny_backbone, [make_sample("Tiger walking", "Tiger")], STEPS)[0]
    assert np.array_equal(first.masks["mask_i2"], again.masks["mask_i2"])  # a function of the sample's identity
    assert not np.array_equal(first.masks["mask_i2"], other.masks["mask_i2"])
    assert not np.array_equal(first.masks["mask_i2"], first.masks["mask_i4"])  # a new draw at each scoring step


def test_kept_latents_recompute_the_recorded_maps_bit_for_bit(tiny_backbone):
    sample = make_sample()
    record = {"record": True, "kinds": ["attention_only"], "layers": "all", "latents": True}
    out = GradSAM(injection_indices=INDICES, attribution=record).generate(tiny_backbone, [sample], STEPS)[0]
    assert [r.index for r in out.latents] == list(range(9))  # every step of the 9-step schedule
    positions = tuple(int(p) for p in out.info["subject_positions"].split(","))
    cond = tiny_backbone.text_encoder(tiny_backbone.tokenizer([sample.prompt]))[0]
    for k in INDICES:
        step = out.latents[k - 1]  # the score at index k comes from the UNet call at t_{k-1}
        inputs = ScoreInputs(tiny_backbone.unet, torch.from_numpy(step.values)[None], step.timestep, cond, positions)
        again = attention_maps(inputs, "all")
        recorded = {m.layer: m.values for m in out.maps if m.kind == "attention_only" and m.index == k}
        for layer, layer_map in again.items():
            expected = layer_map.sum(dim=0)[None].expand(4, -1, -1).numpy()  # tokens summed, every channel
            np.testing.assert_array_equal(recorded[layer], expected)
