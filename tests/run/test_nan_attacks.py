"""A dying GPU (#15): NaN in the decoded pixels or in the Grad-SAM scores fails that sample alone.

The NaN is injected through a forward hook (the stand-in for a float16 VAE or a faulty card); the
poisoned sample is recorded failed with its stage and reason, its batch neighbour is bit-identical
to a clean run, the run goes on and the table counts the failure.
"""

from __future__ import annotations

import pandas as pd
import torch

from baselines.sdedit import SDEdit
from bench.reporting.tables import summarize
from bench.sd.diffusion import encode_text
from bench.task import run_benchmark
from method.sampler import GradSAM
from tests.conftest import FAST, PIXEL_ONLY, compose_cfg

POISON_PROMPT = "Deer roaming"  # forest's first prompt; ocean's is the clean neighbour in the same batch
BATCH = [*FAST, *PIXEL_ONLY, "model.image_size=32", "cpu_threads=1", "seeds=[1]", "batch_size=2"]
GRADSAM = [*BATCH, "method=gradsam", "method.injection_indices=[2,5]"]


class DecodeNaNSDEdit(SDEdit):
    """SDEdit on a VAE whose decoder returns NaN for one sample of the batch (one decoder call per sample)."""

    def __init__(self, poison_prompt: str, **kwargs):
        super().__init__(**kwargs)
        self.poison_prompt = poison_prompt

    def generate(self, backbone, samples, sampling):
        calls = iter([s.prompt == self.poison_prompt for s in samples])

        def hook(module, args, output):
            return output * float("nan") if next(calls) else output

        handle = backbone.vae.decoder.register_forward_hook(hook)
        try:
            return super().generate(backbone, samples, sampling)
        finally:
            handle.remove()


class ScoreNaNGradSAM(GradSAM):
    """Grad-SAM whose UNet yields NaN in the score passes of one sample (a batch of 1 with its prompt alone;
    the sampling calls carry its prompt and the negative prompt together)."""

    def __init__(self, poison_prompt: str, **kwargs):
        super().__init__(**kwargs)
        self.poison_prompt = poison_prompt

    def generate(self, backbone, samples, sampling):
        poisoned = encode_text(backbone, [self.poison_prompt]).float()
        unet = backbone.float32_unet()
        state = {"on": False}

        def pre_hook(module, args, kwargs):
            context = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
            alone = context is not None and context.shape == poisoned.shape
            state["on"] = alone and torch.equal(context.float(), poisoned)

        def hook(module, args, output):
            return output * float("nan") if state["on"] else output

        handles = [unet.register_forward_pre_hook(pre_hook, with_kwargs=True), unet.conv_in.register_forward_hook(hook)]
        try:
            return super().generate(backbone, samples, sampling)
        finally:
            for handle in handles:
                handle.remove()


def samples_of(root) -> pd.DataFrame:
    return pd.read_csv(root / "results/demo/samples.csv", keep_default_na=False, na_values=[""])


def check_one_failed(tmp_path, failure_start: str) -> None:
    samples = samples_of(tmp_path / "nan").set_index("prompt")
    failed = samples.loc[POISON_PROMPT]
    assert failed["status"] == "failed" and pd.isna(failed["image_path"])
    assert failed["failure"].startswith(failure_start), failed["failure"]
    clean = samples_of(tmp_path / "clean").set_index("prompt")
    neighbour = samples.drop(index=POISON_PROMPT)
    assert neighbour["status"].tolist() == ["ok"]
    path = neighbour["image_path"].iloc[0]
    assert (tmp_path / "nan" / path).read_bytes() == (tmp_path / "clean" / path).read_bytes()
    assert clean["status"].tolist() == ["ok", "ok"]
    table = summarize(samples.reset_index(), intervals=False)
    assert table[["N", "failures"]].to_dict("records") == [{"N": 1, "failures": 1}]


def test_nan_decoded_pixels_fail_that_sample_alone(tmp_path):
    overrides = [*BATCH, "method=sdedit"]
    run_benchmark(compose_cfg(overrides, tmp_path / "clean"))
    poison = [f"method._target_={__name__}.DecodeNaNSDEdit", f"+method.poison_prompt='{POISON_PROMPT}'"]
    run_benchmark(compose_cfg([*overrides, *poison], tmp_path / "nan"))
    check_one_failed(tmp_path, "decode: non-finite decoded pixels (")


def test_nan_gradsam_scores_fail_that_sample_alone(tmp_path):
    run_benchmark(compose_cfg(GRADSAM, tmp_path / "clean"))
    poison = [f"method._target_={__name__}.ScoreNaNGradSAM", f"+method.poison_prompt='{POISON_PROMPT}'"]
    run_benchmark(compose_cfg([*GRADSAM, *poison], tmp_path / "nan"))
    check_one_failed(tmp_path, "score at injection index 2: ")
