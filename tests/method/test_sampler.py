"""The Grad-SAM sampler (docs/paper.md §2.2), its ablations and the blended_latent baseline, on the tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from baselines.blended_latent import BlendedLatent
from baselines.sdedit import SDEdit
from bench.config import CONF_DIR, ConfigError
from bench.sd.diffusion import (
    SamplingConfig,
    TextConditioning,
    decode_latents,
    denoise,
    encode_text,
    truncated_timesteps,
)
from bench.sd.methods import Sample
from bench.sd.seeding import draw_normal
from method.sampler import GradSAM, SampleState
from method.tokens import SubjectTokens
from tests.conftest import FAST, compose_cfg, run_cli

STEPS = SamplingConfig(num_inference_steps=10)  # 9 steps at strength 0.9
INDICES = [2, 4, 6]
# On an 8x8 latent the paper's 3x3 x3 mask dilation covers everything: no dilation where blending must show.
UNDILATED = {"dilation": {"enabled": False}}
ABLATIONS = sorted(p.stem for p in (CONF_DIR / "ablation").glob("*.yaml") if p.stem != "none")


def make_sample(prompt: str = "Deer roaming", subject: str = "Deer", size: int = 32) -> Sample:
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.stack([xx * 8 % 256, yy * 8 % 256, (xx + yy) * 4 % 256], axis=-1).astype(np.uint8)
    return Sample("forest/00000", prompt, subject, 51828, image, scene="forest")


def plain_chain(backbone, sample: Sample) -> np.ndarray:
    """The plain sampler with the sample's generators: txt2img at strength 0.9, from noise."""
    scheduler = backbone.new_scheduler()
    timesteps = truncated_timesteps(scheduler, STEPS.num_inference_steps, 0.9)
    cond, uncond = encode_text(backbone, [sample.prompt]), encode_text(backbone, [""])
    shape = (backbone.latent_channels, backbone.latent_size, backbone.latent_size)
    z = draw_normal([sample.generator("init")], shape, backbone.device, torch.float32) * scheduler.init_noise_sigma
    z = denoise(backbone, scheduler, z, timesteps, TextConditioning(cond, uncond), STEPS, [sample.generator("steps")])
    return decode_latents(backbone, z)[0]


def test_no_manipulation_equals_the_plain_sampler_bit_for_bit(tiny_backbone):
    sample = make_sample()
    control = GradSAM(injection_indices=INDICES, manipulate=False).generate(tiny_backbone, [sample], STEPS)[0]
    assert np.array_equal(control.image, plain_chain(tiny_backbone, sample))
    assert {f"kept_frac_i{k}" for k in INDICES} <= set(control.info)  # masks still computed and recorded
    full = GradSAM(injection_indices=INDICES, mask=UNDILATED).generate(tiny_backbone, [sample], STEPS)[0]
    assert not np.array_equal(full.image, control.image)  # the injections do change the image
    assert full.info["kept_frac_i2"] < 1


def test_a_batch_gives_the_images_of_single_samples(tiny_backbone):
    samples = [make_sample(), make_sample("Cacti blooming", "Cacti")]
    method = GradSAM(injection_indices=INDICES, mask=UNDILATED, ref_noise="fresh")
    together = method.generate(tiny_backbone, samples, STEPS)
    for sample, out in zip(samples, together, strict=True):
        alone = method.generate(tiny_backbone, [sample], STEPS)[0]
        assert np.array_equal(out.image, alone.image) and out.info == alone.info


def test_noised_reference_start_without_manipulation_is_sdedit(tiny_backbone):
    sample = make_sample()
    method = GradSAM(injection_indices=INDICES, manipulate=False, init_latent="noised_ref")
    image = method.generate(tiny_backbone, [sample], STEPS)[0].image
    assert np.array_equal(image, SDEdit(strength=0.9).generate(tiny_backbone, [sample], STEPS)[0].image)


def test_rows_carry_masks_and_kept_fractions(tiny_backbone):
    out = GradSAM(injection_indices=INDICES).generate(tiny_backbone, [make_sample()], STEPS)[0]
    c, h = tiny_backbone.latent_channels, tiny_backbone.latent_size
    for k in INDICES:
        mask = out.masks[f"mask_i{k}"]
        assert mask.shape == (c, h, h) and set(np.unique(mask)) <= {0.0, 1.0}
        assert out.info[f"kept_frac_i{k}"] == pytest.approx(mask.mean())
    np.testing.assert_array_equal(out.masks["subject_mask"], out.masks["mask_i6"].max(axis=0))
    timesteps = truncated_timesteps(tiny_backbone.new_scheduler(), 10, 0.9)  # 880, 780, ..., 80
    assert out.info["score_timesteps"] == ",".join(str(int(timesteps[k - 1])) for k in INDICES)
    assert out.info["inject_timesteps"] == ",".join(str(int(timesteps[k])) for k in INDICES)
    assert out.info["subject_positions"] == "1" and out.info["score_path"] == "tail"


def test_blend_keeps_ones_and_takes_the_noised_reference_at_zeros(tiny_backbone):
    sample = make_sample()
    scheduler = tiny_backbone.new_scheduler()
    truncated_timesteps(scheduler, 10, 0.9)
    t = torch.tensor(480)
    z, z0 = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    stream = sample.generator("ref_noise")
    first, second = torch.randn(4, 8, 8, generator=stream), torch.randn(4, 8, 8, generator=stream)
    noised = lambda eps: scheduler.add_noise(z0[1:], eps[None], t.reshape(1))[0]  # noqa: E731
    for ref_noise, second_blend in (("shared", first), ("fresh", second)):
        method = GradSAM(injection_indices=INDICES, ref_noise=ref_noise)
        subject = SubjectTokens("Deer", (1,), ("deer</w>",))
        states = [
            SampleState(subject, sample.generator("ref_noise"), sample.generator("method"), mask=m)
            for m in (torch.ones(4, 8, 8), torch.zeros(4, 8, 8))
        ]
        out = method.blend(z, z0, states, scheduler, t)
        assert torch.equal(out[0], z[0])  # a mask of ones leaves the latent untouched
        assert torch.equal(out[1], noised(first))  # zeros: the reference noised to t with eps_ref
        assert torch.equal(method.blend(z, z0, states, scheduler, t)[1], noised(second_blend))


def test_injection_outside_the_schedule_names_its_length(tiny_backbone):
    with pytest.raises(ConfigError, match="schedule of 9 steps"):
        GradSAM().generate(tiny_backbone, [make_sample()], STEPS)  # 5, 18, 28 at 10 steps
    with pytest.raises(ConfigError, match="1..8"):
        GradSAM(injection_indices=[0, 3]).generate(tiny_backbone, [make_sample()], STEPS)


def test_unknown_layer_fails_before_sampling(tiny_backbone):
    wrong = "up_blocks.7.attentions.0.transformer_blocks.0.attn2"
    method = GradSAM(injection_indices=INDICES, score={"layers": [wrong]})
    with pytest.raises(ConfigError, match="up_blocks.2.attentions.1.transformer_blocks.0.attn2"):
        method.generate(tiny_backbone, [make_sample()], STEPS)


def test_prompt_without_its_subject_fails_before_sampling(tiny_backbone):
    with pytest.raises(ValueError, match="'Deer roaming'"):
        GradSAM(injection_indices=INDICES).generate(tiny_backbone, [make_sample(subject="Tiger")], STEPS)


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_every_ablation_flips_its_switch_and_runs(tiny_backbone, ablation):
    cfg = compose_cfg(["method=gradsam", f"ablation={ablation}"])
    steps, baseline = STEPS, GradSAM(injection_indices=INDICES)
    if "injection_indices" not in OmegaConf.load(CONF_DIR / "ablation" / f"{ablation}.yaml").method:
        cfg.method.injection_indices = INDICES
    else:
        steps, baseline = SamplingConfig(num_inference_steps=25), GradSAM()  # 22 steps: index 18 exists
    cfg.method.score.general_chunk_size = 256  # one batched backward pass per injection on the CPU
    method = instantiate(cfg.method, _convert_="all")
    changed = {k for k, v in method.columns().items() if baseline.columns().get(k) != v}
    assert changed, f"ablation={ablation} changes no switch"
    out = method.generate(tiny_backbone, [make_sample("Picnickers relaxing", "Picnickers")], steps)[0]
    assert out.failure is None and out.image.shape == (32, 32, 3)
    assert {f"kept_frac_i{k}" for k in method.injection_indices} <= set(out.info)
    assert out.masks["subject_mask"].shape == (8, 8)
    assert out.info["score_path"] == "tail"  # every ablation keeps the paper's layer (variants: tests/run/test_rows.py)
    assert out.info["subject_positions"] == "1,2,3"


def test_blended_latent_blends_at_every_step_from_the_first_score_index(tiny_backbone):
    method = instantiate(OmegaConf.load(CONF_DIR / "method" / "blended_latent.yaml"), _convert_="all")
    assert isinstance(method, BlendedLatent) and method.injection_indices == (5, 18, 28)
    assert method.blend_indices(45) == set(range(5, 45))
    assert GradSAM().blend_indices(45) == {5, 18, 28}
    assert method.columns()["blend"] == "every_step"
    bld = BlendedLatent(score_indices=INDICES, mask=UNDILATED)
    sample = make_sample()
    out = bld.generate(tiny_backbone, [sample], STEPS)[0]
    gradsam = GradSAM(injection_indices=INDICES, mask=UNDILATED).generate(tiny_backbone, [sample], STEPS)[0]
    assert out.info["kept_frac_i2"] == gradsam.info["kept_frac_i2"]  # same chain until the first mask
    assert not np.array_equal(out.image, gradsam.image)
    with pytest.raises(ConfigError, match="score_indices"):
        bld.check_schedule(2, STEPS)


def test_bad_switches_are_explained():
    with pytest.raises(ConfigError, match="init_latent"):
        GradSAM(init_latent="reference")
    with pytest.raises(ConfigError, match="unknown keys"):
        GradSAM(score={"transfrom": "abs"})
    with pytest.raises(ConfigError, match="vjp_basis"):
        GradSAM(score={"vjp_basis": "eye"})


def test_cli_gradsam_no_blur_writes_rows_with_masks(tmp_path: Path):
    args = [
        "cpu_threads=1",
        *FAST,
        "method=gradsam",
        "ablation=no_blur",
        "model.image_size=32",
        "metrics=none",
        f"method.injection_indices={INDICES}".replace(" ", ""),
        f"paths.root_dir={tmp_path}",
        "dataset.subcategories=[park]",
    ]
    run_cli(args, cwd=tmp_path)
    frame = pd.read_csv(tmp_path / "results" / "demo" / "samples.csv")
    assert len(frame) == 1 and frame.loc[0, "status"] == "ok"
    row = frame.iloc[0]
    assert row["label"] == "gradsam" and row["ablation"] == "no_blur" and row["method.mask.blur"] == "off"
    assert row["subject_pieces"] == "pic,nick,ers</w>"
    assert all(0 <= row[f"kept_frac_i{k}"] <= 1 for k in INDICES)
    masks = list((tmp_path / "outputs").rglob("masks/**/*.png"))
    assert {p.stem for p in masks} == {"mask_i2", "mask_i4", "mask_i6", "subject_mask"}


def test_preflight_resolves_layer_sets_at_the_backbone_s_latent_size(tiny_backbone):
    """At 32 px the tiny backbone's latent is 8x8 while its UNet's config.sample_size is 16: preflight must accept
    exactly the layer sets generate accepts (res2, res4, res8 here), and refuse res16 before any sample is made."""
    assert tiny_backbone.latent_size == 8 and tiny_backbone.unet.config.sample_size == 16
    sample = make_sample()
    for layers in ("res2", "res4", "res8"):  # res2 (the mid block) exists only at this latent size
        GradSAM(score={"layers": layers}).preflight(tiny_backbone, [sample])
        GradSAM(attribution={"record": True, "layers": layers}).preflight(tiny_backbone, [sample])
    for key, method in (
        ("method.score.layers", GradSAM(score={"layers": "res16"})),
        ("method.attribution.layers", GradSAM(attribution={"record": True, "layers": "res16"})),
    ):
        with pytest.raises(ConfigError, match=f"{key}='res16': no cross-attention layer of this UNet has a 16x16 map"):
            method.preflight(tiny_backbone, [sample])
        with pytest.raises(ConfigError, match=r"Valid: \['res2', 'res4', 'res8'\]"):  # the sets at this latent size
            method.preflight(tiny_backbone, [sample])
    out = GradSAM(injection_indices=INDICES, score={"layers": "res4"}).generate(tiny_backbone, [sample], STEPS)[0]
    assert out.failure is None and out.info["score_path"] == "general"


def test_cli_refuses_a_layer_set_of_another_latent_size_before_any_sample(tmp_path: Path):
    args = ["cpu_threads=1", *FAST, "method=gradsam", "model.image_size=32", "metrics=none"]
    args += ["method.injection_indices=[2,4,6]", f"paths.root_dir={tmp_path}", "dataset.subcategories=[park]"]
    proc = run_cli([*args, "method.score.layers=res16"], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "16x16 map" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("*.png")) and not list(tmp_path.rglob("rows/**/*.json"))  # refused before any write
    run_cli([*args, "method.score.layers=res4", "method.score.general_chunk_size=256"], cwd=tmp_path)  # exists at 8x8
    frame = pd.read_csv(tmp_path / "results" / "demo" / "samples.csv")
    assert list(frame["status"]) == ["ok"] and list(frame["method.score.layers"]) == ["res4"]
