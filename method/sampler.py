"""The Grad-SAM sampler (PAPER_SPEC §2.2): guided DDPM with subject-preserving background injections.

    z0_ref = VAE(reference); eps_ref ~ N(0, I)                      (one draw, or one per injection)
    z      = noise at t_0 (reference code, default) or the reference noised to t_0
    for i, t_i in truncated schedule (strength 0.9: 880, 860, ..., 0):
        z_next = DDPM step of z with guided eps(z, t_i)
        if i + 1 in injection indices (5, 18, 28 -> t = 780, 520, 320):
            S = Grad-SAM scores from the UNet call at (z, t_i)        (B10: score at t_i, applied at t_{i+1})
            M = mask(S) ;  z_next = M z_next + (1 - M) noised(z0_ref, t_{i+1})
        z = z_next

Built on bench.sd.diffusion.denoise: its step callback receives the step index and the timestep.
Randomness per sample: "vae" (posterior noise), "init" (start noise), "ref_noise" (eps_ref),
"steps" (DDPM noise), "method" (random_block8 matrices).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from bench.sd.backbone import Backbone
from bench.sd.config import from_mapping
from bench.sd.diffusion import (
    SamplingConfig,
    denoise,
    encode_images,
    encode_text,
    schedule_length,
    truncated_timesteps,
)
from bench.sd.errors import ConfigError
from bench.sd.methods import Generated, Method, Sample, images_or_failures
from bench.sd.seeding import draw_normal
from method.attention import resolve_layers
from method.config import GradSAMConfig, ScoreConfig
from method.gradsam import attention_scores, scores_with_config
from method.masks import replace_background, union_mask
from method.tokens import SubjectTokens, subject_tokens

__all__ = ["GradSAM", "GradSAMConfig", "SampleState", "ScoreConfig"]


@dataclass
class SampleState:
    """One sample's masks, reference noise and records during the chain."""

    subject: SubjectTokens
    ref_generator: torch.Generator
    method_generator: torch.Generator
    eps_ref: torch.Tensor | None = None  # [C, h, w], shared across injections
    mask: torch.Tensor | None = None  # current mask [C, h, w]
    path: str = ""
    info: dict = field(default_factory=dict)  # row columns, e.g. kept_frac_i5
    masks: dict = field(default_factory=dict)  # name -> float array [C, h, w]
    failure: str | None = None  # the first non-finite score or mask (stage and reason): the sample fails

    def check_finite(self, stage: str, k: int, values: torch.Tensor) -> bool:
        """Whether `values` are all finite; if not, record the first failure (the sample's image is then dropped)."""
        bad = int((~torch.isfinite(values)).sum())
        if bad and self.failure is None:
            self.failure = f"{stage} at injection index {k}: {bad} non-finite values (NaN/inf)"
        return bad == 0

    def set_mask(self, k: int, mask: torch.Tensor) -> None:
        """The mask in force from schedule index k on; its kept fraction and a copy go into the row."""
        self.mask = mask
        self.info[f"kept_frac_i{k}"] = float(mask.mean())
        self.masks[f"mask_i{k}"] = mask.float().cpu().numpy()


class GradSAM(Method):
    """Grad-SAM latent manipulation (the paper's method). Defaults: the `paper` preset (docs/method.md)."""

    uses_reference = True
    indices_key = "injection_indices"  # the config key of the score/injection indices (for messages)

    def __init__(
        self,
        name: str = "gradsam",
        label: str = "gradsam",
        strength: float = 0.9,
        injection_indices: Sequence[int] = (5, 18, 28),
        init_latent: str = "noise",
        ref_noise: str = "shared",
        manipulate: bool = True,
        score: Mapping | None = None,
        subject: Mapping | None = None,
        mask: Mapping | None = None,
    ):
        """The arguments are the `method` node; they are validated once, into `self.config` (method/config.py)."""
        self.name, self.label = name, label
        values = {
            "strength": strength,
            self.indices_key: injection_indices,
            "init_latent": init_latent,
            "ref_noise": ref_noise,
            "manipulate": manipulate,
            "score": score,
            "subject": subject,
            "mask": mask,
        }
        aliases = {"injection_indices": self.indices_key}
        self.config: GradSAMConfig = from_mapping(GradSAMConfig, values, "method", aliases=aliases)

    @property
    def strength(self) -> float:
        return self.config.strength

    @property
    def injection_indices(self) -> tuple[int, ...]:
        return self.config.injection_indices

    def columns(self) -> dict:
        cfg = self.config
        blur, dil = cfg.mask.blur, cfg.mask.dilation
        layers = cfg.score.layers if isinstance(cfg.score.layers, str) else ",".join(cfg.score.layers)
        return {
            "strength": cfg.strength,
            "injection_indices": ",".join(map(str, cfg.injection_indices)),
            "init_latent": cfg.init_latent,
            "ref_noise": cfg.ref_noise,
            "manipulate": cfg.manipulate,
            "score.kind": cfg.score.kind,
            "score.layers": layers,
            "score.transform": cfg.score.transform,
            "score.target": cfg.score.target,
            "score.vjp_basis": cfg.score.vjp_basis,
            "subject.index_mode": cfg.subject.index_mode,
            "mask.threshold_k": cfg.mask.threshold_k,
            "mask.threshold_scope": cfg.mask.threshold_scope,
            "mask.box_sum_once": cfg.mask.box_sum_once,
            "mask.blur": f"k{blur.kernel}_s{blur.sigma:g}_on_{blur.stage}" if blur.enabled else "off",
            "mask.dilation": f"k{dil.kernel}_x{dil.iterations}_on_{dil.stage}" if dil.enabled else "off",
        }

    # -- schedule ---------------------------------------------------------------------------------
    def check_schedule(self, length: int, sampling: SamplingConfig) -> None:
        """Injection index k uses t_{k-1} and t_k, so it must lie in [1, length - 1]."""
        bad = [k for k in self.injection_indices if not 1 <= k <= length - 1]
        if bad:
            raise ConfigError(
                f"method.{self.indices_key}={list(self.injection_indices)}: {bad} lie outside the truncated "
                f"schedule of {length} steps (strength {self.strength} of sampling.num_inference_steps="
                f"{sampling.num_inference_steps}); valid indices are 1..{length - 1}. Change the indices or the steps."
            )

    def check(self, sampling: SamplingConfig) -> None:
        """Strength and indices against the protocol's schedule, before any model is loaded."""
        super().check(sampling)
        self.check_schedule(schedule_length(sampling.num_inference_steps, self.strength), sampling)

    def preflight(self, backbone: Backbone, samples: list[Sample]) -> None:
        """Layer names and every subject word inside the tokenizer window, before any sample is generated."""
        resolve_layers(backbone.unet, self.config.score.layers)
        for s in samples:
            try:
                subject_tokens(backbone.tokenizer, s.prompt, s.subject, self.config.subject.index_mode)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None

    def blend_indices(self, length: int) -> set[int]:
        """Schedule indices k at which z_{t_k} is blended with the reference: the injections."""
        return set(self.injection_indices)

    # -- generation -------------------------------------------------------------------------------
    def generate(self, backbone: Backbone, samples: list[Sample], sampling: SamplingConfig) -> list[Generated]:
        scheduler = backbone.new_scheduler()
        timesteps = truncated_timesteps(scheduler, sampling.num_inference_steps, self.strength)
        self.check_schedule(len(timesteps), sampling)
        resolve_layers(backbone.unet, self.config.score.layers)  # an unknown layer name fails now, listing them
        # 1. Subject columns first: a prompt without its subject word fails before any sampling.
        states = [
            SampleState(
                subject=subject_tokens(backbone.tokenizer, s.prompt, s.subject, self.config.subject.index_mode),
                ref_generator=s.generator("ref_noise"),
                method_generator=s.generator("method"),
            )
            for s in samples
        ]
        # 2. Text conditioning [B, 77, D], reference latent z0 [B, C, h, w] (posterior sample).
        cond = encode_text(backbone, [s.prompt for s in samples])
        uncond = encode_text(backbone, [sampling.negative_prompt] * len(samples))
        z0 = encode_images(backbone, np.stack([s.reference for s in samples]), [s.generator("vae") for s in samples])
        # 3. Start latent at t_0: pure noise (B1, default) or the reference noised with it (SDEdit's start).
        eps = draw_normal([s.generator("init") for s in samples], z0.shape[1:], z0.device, torch.float32)
        if self.config.init_latent == "noise":
            z = eps * scheduler.init_noise_sigma
        else:
            z = scheduler.add_noise(z0, eps, timesteps[:1])
        # 4. Guided DDPM; the callback scores, masks and blends at the configured indices.
        blends = self.blend_indices(len(timesteps))

        def on_step_end(i: int, t: torch.Tensor, z_t: torch.Tensor, z_next: torch.Tensor) -> torch.Tensor:
            k = i + 1  # z_next lives at t_k
            if k in self.injection_indices:
                for b, state in enumerate(states):
                    mask = self.compute_mask(backbone, scheduler, z_t[b], t, cond[b], state, sampling, k)
                    state.set_mask(k, mask)
            if self.config.manipulate and k in blends and k < len(timesteps):
                z_next = self.blend(z_next, z0, states, scheduler, timesteps[k])
            return z_next

        steps = [s.generator("steps") for s in samples]
        z = denoise(backbone, scheduler, z, timesteps, cond, uncond, sampling, steps, on_step_end=on_step_end)
        results = images_or_failures(backbone, z)
        for b, state in enumerate(states):  # a non-finite score or mask fails its sample alone (the first cause)
            if state.failure is not None:
                results[b] = Generated(image=None, failure=state.failure)
        # 5. Per-sample columns and masks for the row.
        for result, state in zip(results, states, strict=True):
            last = state.masks[f"mask_i{self.injection_indices[-1]}"]
            result.masks = {**state.masks, "subject_mask": last.max(axis=0)}  # union over channels [h, w]
            result.info = {
                **state.info,
                "mask_fraction": float(result.masks["subject_mask"].mean()),
                "score_timesteps": ",".join(str(int(timesteps[k - 1])) for k in self.injection_indices),
                "inject_timesteps": ",".join(str(int(timesteps[k])) for k in self.injection_indices),
                "subject_positions": ",".join(map(str, state.subject.positions)),
                "subject_pieces": ",".join(state.subject.pieces),
                "score_path": state.path,
            }
        return results

    def blend(
        self, z: torch.Tensor, z0: torch.Tensor, states: list[SampleState], scheduler, t: torch.Tensor
    ) -> torch.Tensor:
        """z [B, C, h, w] at t: each sample's background (M = 0) <- its reference z0 noised to t with eps_ref."""
        out = z.clone()
        for b, state in enumerate(states):
            if state.mask is not None:
                z_ref = scheduler.add_noise(z0[b : b + 1], self.reference_noise(state, z0[b]), t.reshape(1))
                out[b] = replace_background(z[b], z_ref[0], state.mask)
        return out

    def reference_noise(self, state: SampleState, like: torch.Tensor) -> torch.Tensor:
        """eps_ref [1, C, h, w] for a blend: the sample's one shared draw (B11), or its stream's next draw (fresh)."""
        fresh = self.config.ref_noise == "fresh"
        if fresh or state.eps_ref is None:
            eps = torch.randn(tuple(like.shape), generator=state.ref_generator, dtype=torch.float32).to(like.device)
            if fresh:
                return eps[None]
            state.eps_ref = eps
        return state.eps_ref[None]

    def compute_mask(
        self,
        backbone: Backbone,
        scheduler,
        z_t: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        state: SampleState,
        sampling: SamplingConfig,
        k: int = 0,
    ) -> torch.Tensor:
        """M [C, h, w] from the scores of the UNet call at (z_t, t_i); the pieces of the subject word summed."""
        positions, cfg = state.subject.positions, self.config.score
        unet = backbone.float32_unet()  # the sampling UNet, or its float32 twin when sampling in half precision
        if cfg.kind == "attention_only":
            scores = attention_scores(unet, z_t[None], t, cond[None], positions, cfg.layers)
            state.path = "attention"
        else:
            scores, state.path = scores_with_config(
                unet,
                z_t[None],
                t,
                cond[None],
                positions,
                cfg,
                guidance_scale=sampling.guidance_scale,
                scheduler=scheduler,
                generator=state.method_generator,
            )
        word_score = scores.sum(dim=0, keepdim=True)  # [1, C, h, w]: one subject word
        state.check_finite("score", k, word_score)
        mask = union_mask(word_score, self.config.mask)
        state.check_finite("mask", k, mask)
        return mask
