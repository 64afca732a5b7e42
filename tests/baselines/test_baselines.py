"""Baseline rows on the tiny profile, and DiffEdit checked piece by piece against diffusers' own pipeline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import StableDiffusionDiffEditPipeline
from PIL import Image

from baselines.diffedit import (
    DiffEdit,
    ddim_inversion,
    ddim_schedulers,
    masked_decoding,
    noise_difference_map,
    threshold_difference,
)
from bench.datasets.base import WorkUnit
from bench.datasets.synthetic import SyntheticPlaces
from bench.sd.diffusion import SamplingConfig, TextConditioning, encode_text, truncated_timesteps
from bench.sd.errors import ConfigError
from bench.task import run_benchmark
from tests.conftest import compose_cfg, minimal_run

STEPS = 5


@pytest.fixture(scope="module")
def pipeline(tiny_backbone):
    """diffusers' DiffEdit pipeline on the tiny backbone's modules, with the protocol's DDIM grids.

    The pipeline's constructor rewrites a scheduler's steps_offset to 1, so fresh schedulers are set after it.
    """
    ddim, inverse = ddim_schedulers(tiny_backbone.scheduler)
    pipe = StableDiffusionDiffEditPipeline(
        vae=tiny_backbone.vae,
        text_encoder=tiny_backbone.text_encoder,
        tokenizer=None,
        unet=tiny_backbone.unet,
        scheduler=ddim,
        safety_checker=None,
        feature_extractor=None,
        inverse_scheduler=inverse,
        requires_safety_checker=False,
    )
    pipe.scheduler, pipe.inverse_scheduler = ddim_schedulers(tiny_backbone.scheduler)
    assert pipe.scheduler.config.steps_offset == 0
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def texts(tiny_backbone):
    return {t: encode_text(tiny_backbone, [t]) for t in ("forest", "Deer roaming", "")}


def latent(seed: int) -> torch.Tensor:
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seed", [1, 2])
def test_mask_equals_diffusers_generate_mask(tiny_backbone, pipeline, texts, seed):
    z0, draws = latent(seed), 4
    ddim, _ = ddim_schedulers(tiny_backbone.scheduler)
    t_mask = truncated_timesteps(ddim, STEPS, 0.5)[0]
    noise = torch.randn((draws, 4, 8, 8), generator=torch.Generator().manual_seed(seed + 10))
    difference = noise_difference_map(tiny_backbone, ddim, z0, t_mask, texts["forest"], texts["Deer roaming"], noise)
    ours = threshold_difference(difference, 3.0, 0.5)
    theirs = pipeline.generate_mask(
        image=z0,  # 4-channel input = latents, used as they are
        source_prompt_embeds=texts["forest"],
        source_negative_prompt_embeds=texts[""],
        target_prompt_embeds=texts["Deer roaming"],
        target_negative_prompt_embeds=texts[""],
        num_maps_per_mask=draws,
        mask_encode_strength=0.5,
        mask_thresholding_ratio=3.0,
        num_inference_steps=STEPS,
        guidance_scale=8.0,  # cancels in the normalised mask; ours skips the unconditional pass
        generator=torch.Generator().manual_seed(seed + 10),  # the same noise draws
    )
    assert 0 < ours.sum() < ours.numel()
    assert np.array_equal(ours.numpy(), theirs[0])


def test_inversion_equals_diffusers_invert(tiny_backbone, pipeline, texts):
    z0 = latent(3)
    ddim, inverse = ddim_schedulers(tiny_backbone.scheduler)
    timesteps = truncated_timesteps(ddim, STEPS, 0.8)
    chain = ddim_inversion(tiny_backbone, inverse, z0, STEPS, len(timesteps), texts[""])
    theirs = pipeline.invert(
        image=z0,
        prompt_embeds=texts[""],
        negative_prompt_embeds=texts[""],
        num_inference_steps=STEPS,
        inpaint_strength=0.8,
        guidance_scale=1.0,
    ).latents  # [1, K, C, h, w], noisiest first
    assert len(chain) == len(timesteps) == theirs.shape[1] == 4
    torch.testing.assert_close(torch.cat(chain), theirs[0].flip(0), rtol=0, atol=1e-6)


def test_decoding_with_an_all_ones_mask_equals_the_diffusers_pipeline(tiny_backbone, pipeline, texts):
    z0 = latent(4)
    ddim, inverse = ddim_schedulers(tiny_backbone.scheduler)
    timesteps = truncated_timesteps(ddim, STEPS, 0.8)
    chain = ddim_inversion(tiny_backbone, inverse, z0, STEPS, len(timesteps), texts[""])
    ones = torch.ones(1, 1, 8, 8)
    sampling = SamplingConfig(num_inference_steps=STEPS, guidance_scale=8.0)
    decoding = TextConditioning(texts["Deer roaming"], texts[""])
    ours = masked_decoding(tiny_backbone, ddim, timesteps, chain, z0, ones, decoding, sampling)
    theirs = pipeline(
        prompt_embeds=texts["Deer roaming"],
        negative_prompt_embeds=texts[""],
        mask_image=ones,
        image_latents=torch.stack(chain[::-1], dim=1),
        inpaint_strength=0.8,
        num_inference_steps=STEPS,
        guidance_scale=8.0,
        output_type="latent",
    ).images
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_outside_the_mask_the_reference_latent_is_kept_at_matching_noise_levels(tiny_backbone, texts):
    z0 = latent(5)
    ddim, inverse = ddim_schedulers(tiny_backbone.scheduler)
    timesteps = truncated_timesteps(ddim, STEPS, 0.8)
    chain = ddim_inversion(tiny_backbone, inverse, z0, STEPS, len(timesteps), texts[""])
    # After DDIM step i from t_i the sample is at t_i - 1000/STEPS; the background pasted then is chain[K-2-i].
    levels = inverse.timesteps[: len(timesteps)].tolist()
    for i, t in enumerate(timesteps.tolist()[:-1]):
        assert levels[len(timesteps) - 2 - i] == t - 1000 // STEPS
    half = torch.zeros(1, 1, 8, 8)
    half[..., 4:] = 1.0
    sampling = SamplingConfig(num_inference_steps=STEPS)
    decoding = TextConditioning(texts["Deer roaming"], texts[""])
    z = masked_decoding(tiny_backbone, ddim, timesteps, chain, z0, half, decoding, sampling)
    assert torch.equal(z[..., :4], z0[..., :4])  # the background is the encoded reference, bit for bit
    assert (z[..., 4:] - z0[..., 4:]).abs().max() > 0.1


def test_diffedit_samples_do_not_depend_on_the_batch(tiny_backbone):
    method = DiffEdit(mask_noise_draws=2)
    refs = SyntheticPlaces(
        "synthetic_places",
        compose_cfg().protocol,
        image_size=32,
        subcategories=["forest", "ocean"],
        prompts_per_subcategory=1,
    ).references()
    samples = [WorkUnit(r, r.prompts[0], 51828).sample(np.asarray(r.load())) for r in refs]
    sampling = SamplingConfig(num_inference_steps=3)
    together = method.generate(tiny_backbone, samples, sampling)
    alone = [method.generate(tiny_backbone, [s], sampling)[0] for s in samples]
    for a, b in zip(together, alone, strict=True):
        assert np.array_equal(a.image, b.image)
        assert np.array_equal(a.masks["subject_mask"], b.masks["subject_mask"])
        assert a.masks["subject_mask"].shape == (8, 8) and set(np.unique(a.masks["subject_mask"])) <= {0.0, 1.0}
        assert a.info["mask_fraction"] == pytest.approx(a.masks["subject_mask"].mean())
    assert method.texts(samples[0]) == ("ocean", "Seagull standing")


def test_diffedit_records_its_pre_threshold_map_without_changing_the_image(tiny_backbone):
    ref = SyntheticPlaces(
        "synthetic_places", compose_cfg().protocol, image_size=32, subcategories=["forest"], prompts_per_subcategory=1
    ).references()[0]
    sample = WorkUnit(ref, ref.prompts[0], 51828).sample(np.asarray(ref.load()))
    sampling = SamplingConfig(num_inference_steps=3)
    plain = DiffEdit(mask_noise_draws=2).generate(tiny_backbone, [sample], sampling)[0]
    recorded = DiffEdit(mask_noise_draws=2, attribution={"record": True}).generate(tiny_backbone, [sample], sampling)[0]
    assert np.array_equal(plain.image, recorded.image) and plain.maps == []
    [record] = recorded.maps
    assert (record.kind, record.layer, record.layer_set, record.side) == ("noise_diff", None, None, 8)
    assert record.values.shape == (4, 8, 8)
    difference = record.values.sum(axis=0)
    scaled = np.clip(difference, 0, 3.0 * difference.mean()) / (3.0 * difference.mean())
    assert np.array_equal((scaled > 0.5).astype(np.float32), recorded.masks["subject_mask"])


def test_diffedit_rejects_bad_settings():
    with pytest.raises(ConfigError, match="method.strength"):
        DiffEdit(strength=1.5)
    with pytest.raises(ConfigError, match="not a valid template"):
        DiffEdit(source_prompt="a photo of {place}")
    with pytest.raises(ConfigError, match="mask_noise_draws"):
        DiffEdit(mask_noise_draws=0)


@pytest.mark.parametrize("row", ["sdedit_0.6", "txt2img", "diffedit"])
def test_every_baseline_row_runs_on_the_tiny_profile_and_writes_rows(tmp_path, row):
    overrides = [f"row={row}", *minimal_run(), "dataset.image_size=32"]
    if row == "diffedit":
        overrides.append("method.mask_noise_draws=2")
    summary = run_benchmark(compose_cfg(overrides, tmp_root=tmp_path))
    rows = pd.read_csv(summary["samples_csv"])
    assert len(rows) == 1 and rows.status.tolist() == ["ok"] and rows.model.tolist() == ["tiny"]
    image = np.asarray(Image.open(tmp_path / rows.image_path[0]))
    assert image.shape == (32, 32, 3) and image.std() > 0
    if row == "diffedit":
        mask = np.asarray(Image.open(tmp_path / rows.masks_dir[0] / "subject_mask.png"))
        assert mask.shape == (8, 8) and rows["method.sampler"][0] == "ddim"
        assert rows.mask_fraction[0] == pytest.approx((mask > 127).mean())
