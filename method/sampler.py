"""The Grad-SAM sampler (docs/paper.md §2.2): guided DDPM with subject-preserving background injections.

    z0_ref = VAE(reference); eps_ref ~ N(0, I)                      (one draw, or one per injection)
    z      = noise at t_0 (reference code, default) or the reference noised to t_0
    for i, t_i in truncated schedule (strength 0.9: 880, 860, ..., 0):
        z_next = DDPM step of z with guided eps(z, t_i)
        if i + 1 in injection indices (5, 18, 28 -> t = 780, 520, 320):
            S = Grad-SAM scores from the UNet call at (z, t_i)        (B10: score at t_i, applied at t_{i+1})
            M = mask(S) ;  z_next = M z_next + (1 - M) noised(z0_ref, t_{i+1})
        z = z_next

Built on bench.sd.diffusion.denoise: its step callback receives the step index and the timestep.
The score is one `ScoreKind` per sample (method/kinds.py: Grad-SAM by default). A `ChainRecorder`
(method/attribution.py) watches the chain for the attribution study; it never changes the image.
Randomness per sample: "vae" (posterior noise), "init" (start noise), "ref_noise" (eps_ref),
"steps" (DDPM noise), "method" (random_block8 matrices).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from bench.sd.config import from_mapping
from bench.sd.diffusion import (
    SamplingConfig,
    StepCallback,
    TextConditioning,
    denoise,
    encode_images,
    schedule_length,
    truncated_timesteps,
)
from bench.sd.errors import ConfigError
from bench.sd.maps import MapRecord
from bench.sd.methods import Generated, Method, Sample, images_or_failures
from bench.sd.seeding import draw_normal
from method.attribution import ChainRecorder, Schedule, attribution_recorder
from method.config import LAYERED_KINDS, GradSAMConfig, ScoreConfig
from method.gradsam import ScoreInputs
from method.kinds import ScoreKind, layers_on, scene_embeddings, score_kind
from method.masks import replace_background, union_mask
from method.tokens import SubjectTokens, subject_tokens

if TYPE_CHECKING:  # annotations only (importing diffusers costs seconds)
    from diffusers import DDPMScheduler

    from bench.sd.backbone import Backbone

__all__ = ["GradSAM", "GradSAMConfig", "SampleState", "ScoreConfig"]


@dataclass
class SampleState:
    """One sample's score, masks and reference noise during the chain."""

    subject: SubjectTokens
    ref_generator: torch.Generator
    method_generator: torch.Generator
    score: ScoreKind | None = None  # the map the mask is thresholded from (method.score.kind)
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


@dataclass(frozen=True, eq=False)
class Chain:
    """One batch's chain: what every step of it reads (the states change, the rest does not)."""

    backbone: Backbone
    scheduler: DDPMScheduler
    timesteps: torch.Tensor  # the truncated schedule t_0 > t_1 > ... (strength)
    sampling: SamplingConfig
    text: TextConditioning  # cond, uncond [B, 77, D]
    z0: torch.Tensor  # the references' latents [B, C, h, w]
    states: list[SampleState]
    recorder: ChainRecorder

    def inputs(self, b: int, z_t: torch.Tensor, t: torch.Tensor) -> ScoreInputs:
        """Sample b's UNet call at (z_t, t) as the score kinds take it (the float32 UNet for gradients)."""
        return ScoreInputs(
            unet=self.backbone.float32_unet(),  # the sampling UNet, or its float32 twin in half precision
            latents=z_t[b][None],
            timestep=t,
            text_embeddings=self.text.cond[b][None],
            token_positions=self.states[b].subject.positions,
            guidance_scale=self.sampling.guidance_scale,
            scheduler=self.scheduler,
            generator=self.states[b].method_generator,
        )


class GradSAM(Method):
    """Grad-SAM latent manipulation (the paper's method). Defaults: the `paper` preset (docs/method.md)."""

    uses_reference = True
    makes_mask = True
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
        attribution: Mapping | None = None,
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
            "attribution": attribution,
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
        blur, dil, top_fraction = cfg.mask.blur, cfg.mask.dilation, cfg.mask.rule == "top_fraction"
        return {
            "strength": cfg.strength,
            "injection_indices": ",".join(map(str, cfg.injection_indices)),
            "init_latent": cfg.init_latent,
            "ref_noise": cfg.ref_noise,
            "manipulate": cfg.manipulate,
            "score.kind": cfg.score.kind,
            "score.layers": layer_set_name(cfg.score.layers),
            "score.transform": cfg.score.transform,
            "score.target": cfg.score.target,
            "score.vjp_basis": cfg.score.vjp_basis,
            "subject.index_mode": cfg.subject.index_mode,
            "mask.threshold_k": cfg.mask.threshold_k,
            "mask.threshold_scope": cfg.mask.threshold_scope,
            "mask.box_sum_once": cfg.mask.box_sum_once,
            "mask.blur": f"k{blur.kernel}_s{blur.sigma:g}_on_{blur.stage}" if blur.enabled else "off",
            "mask.dilation": f"k{dil.kernel}_x{dil.iterations}_on_{dil.stage}" if dil.enabled else "off",
            # new switches appear only when set, so the rows of existing configs keep their columns
            **({"mask.channel_rule": cfg.mask.channel_rule} if cfg.mask.channel_rule != "per_channel" else {}),
            **({"mask.dilation.scale_aware": True} if dil.enabled and dil.scale_aware else {}),
            **({"mask.rule": cfg.mask.rule, "mask.keep_fraction": cfg.mask.keep_fraction} if top_fraction else {}),
        }

    # -- checks -----------------------------------------------------------------------------------
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

    def check_layers(self, backbone: Backbone) -> None:
        """The score's and the recorded layer sets on this backbone's latent (an unknown one lists the layers)."""
        layers_on(backbone, self.config.score.layers)
        if self.config.attribution.record:
            layers_on(backbone, self.config.attribution.layers, "method.attribution.layers")

    def preflight(self, backbone: Backbone, samples: list[Sample]) -> None:
        """Layer names and every subject word inside the tokenizer window, before any sample is generated."""
        self.check_layers(backbone)
        for s in samples:
            try:
                subject_tokens(backbone.tokenizer, s.prompt, s.subject, self.config.subject.index_mode)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None

    def blend_indices(self, length: int) -> set[int]:
        """Schedule indices k at which z_{t_k} is blended with the reference: the injections."""
        return set(self.injection_indices)

    # -- generation -------------------------------------------------------------------------------
    def generate(
        self,
        backbone: Backbone,
        samples: list[Sample],
        sampling: SamplingConfig,
        recorder: ChainRecorder | None = None,
    ) -> list[Generated]:
        """The paper's chain for a batch: start latent, guided DDPM, and at each injection index score, mask,
        replace the background; `recorder` (default: the one method.attribution asks for) watches it."""
        scheduler = backbone.new_scheduler()
        timesteps = truncated_timesteps(scheduler, sampling.num_inference_steps, self.strength)
        self.check_schedule(len(timesteps), sampling)
        self.check_layers(backbone)
        states = self.sample_states(backbone, samples)  # a prompt without its subject word fails here
        if recorder is None:
            schedule = Schedule(last_score=self.injection_indices[-1], length=len(timesteps))
            recorder = attribution_recorder(self.config.attribution, self.config.score, backbone, samples, schedule)
        text = TextConditioning.encode(backbone, [s.prompt for s in samples], sampling.negative_prompt)
        z0 = encode_images(backbone, np.stack([s.reference for s in samples]), [s.generator("vae") for s in samples])
        chain = Chain(backbone, scheduler, timesteps, sampling, text, z0, states, recorder)
        z = denoise(
            backbone,
            scheduler,
            self.start_latent(chain, samples),
            timesteps,
            text,
            sampling,
            [s.generator("steps") for s in samples],
            on_step_end=self.on_step_end(chain),
        )
        for b in range(len(samples)):
            recorder.finish(b)
        return self.results(chain, images_or_failures(backbone, z))

    def sample_states(self, backbone: Backbone, samples: list[Sample]) -> list[SampleState]:
        """Each sample's subject columns, its score kind and its generators."""
        layers = layers_on(backbone, self.config.score.layers)
        scenes = scene_embeddings(backbone, samples) if self.config.score.kind == "noise_diff" else None
        return [
            SampleState(
                subject=subject_tokens(backbone.tokenizer, s.prompt, s.subject, self.config.subject.index_mode),
                score=score_kind(
                    self.config.score.kind, self.config.score, layers, scenes[b] if scenes is not None else None
                ),
                ref_generator=s.generator("ref_noise"),
                method_generator=s.generator("method"),
            )
            for b, s in enumerate(samples)
        ]

    def start_latent(self, chain: Chain, samples: list[Sample]) -> torch.Tensor:
        """z at t_0: pure noise (B1, default) or the references noised with it (SDEdit's start) [B, C, h, w]."""
        eps = draw_normal([s.generator("init") for s in samples], chain.z0.shape[1:], chain.z0.device, torch.float32)
        if self.config.init_latent == "noise":
            return eps * chain.scheduler.init_noise_sigma
        return chain.scheduler.add_noise(chain.z0, eps, chain.timesteps[:1])

    def on_step_end(self, chain: Chain) -> StepCallback:
        """After DDPM step i (z_t at t_i -> z_next at t_{i+1}): observe, score and mask at the injection
        indices, blend at the blend indices."""
        blends, last = self.blend_indices(len(chain.timesteps)), self.injection_indices[-1]

        def step(i: int, t: torch.Tensor, z_t: torch.Tensor, z_next: torch.Tensor) -> torch.Tensor:
            k = i + 1  # z_next lives at t_k
            for b, state in enumerate(chain.states):
                inputs = chain.inputs(b, z_t, t)
                if k <= last:  # every step up to the last score is seen (DAAM sums them)
                    state.score.observe(inputs)
                chain.recorder.observe(b, k, inputs)
            if k in self.injection_indices:
                for b, state in enumerate(chain.states):
                    state.set_mask(k, self.compute_mask(chain, b, k, chain.inputs(b, z_t, t)))
            if self.config.manipulate and k in blends and k < len(chain.timesteps):
                z_next = self.blend(z_next, chain.z0, chain.states, chain.scheduler, chain.timesteps[k])
            return z_next

        return step

    def compute_mask(self, chain: Chain, b: int, k: int, inputs: ScoreInputs) -> torch.Tensor:
        """M [C, h, w] from the score of the UNet call at (z_t, t_{k-1}); the pieces of the subject word summed."""
        state = chain.states[b]
        scores, state.path = state.score.total(inputs)  # [T, C, h, w]
        word_score = scores.sum(dim=0, keepdim=True)  # [1, C, h, w]: one subject word
        chain.recorder.scored(b, self.own_record(k, inputs, word_score[0]), inputs)
        state.check_finite("score", k, word_score)
        mask = union_mask(word_score, self.config.mask)
        state.check_finite("mask", k, mask)
        return mask

    def own_record(self, k: int, inputs: ScoreInputs, score: torch.Tensor) -> MapRecord:
        """The map the mask is thresholded from [C, h, w], as the attribution study reads it."""
        kind = self.config.score.kind
        layer_set = layer_set_name(self.config.score.layers) if kind in LAYERED_KINDS else None
        values = score.float().cpu().numpy()
        return MapRecord(kind, None, layer_set, k, int(inputs.timestep), inputs.grid[1], values)

    def blend(
        self, z: torch.Tensor, z0: torch.Tensor, states: list[SampleState], scheduler: DDPMScheduler, t: torch.Tensor
    ) -> torch.Tensor:
        """z [B, C, h, w] at t: each sample's background (M = 0) <- its reference z0 noised to t with eps_ref."""
        out = z.clone()
        for b, state in enumerate(states):
            if state.mask is not None:
                eps = self.reference_noise(state, z0[b])
                z_ref = scheduler.add_noise(z0[b : b + 1], eps, t.reshape(1))
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

    def results(self, chain: Chain, results: list[Generated]) -> list[Generated]:
        """Per sample: its failure (the first non-finite score or mask), or its masks, maps and row columns."""
        timesteps, indices = chain.timesteps, self.injection_indices
        for b, (result, state) in enumerate(zip(results, chain.states, strict=True)):
            if state.failure is not None:
                results[b] = result = Generated(image=None, failure=state.failure)
            last = state.masks[f"mask_i{indices[-1]}"]
            result.masks = {**state.masks, "subject_mask": last.max(axis=0)}  # union over channels [h, w]
            result.maps, result.latents = chain.recorder.records(b), chain.recorder.latents(b)
            result.info = {
                **state.info,
                "mask_fraction": float(result.masks["subject_mask"].mean()),
                "score_timesteps": ",".join(str(int(timesteps[k - 1])) for k in indices),
                "inject_timesteps": ",".join(str(int(timesteps[k])) for k in indices),
                "subject_positions": ",".join(map(str, state.subject.positions)),
                "subject_pieces": ",".join(state.subject.pieces),
                "score_path": state.path,
            }
        return results


def layer_set_name(layers: str | tuple[str, ...]) -> str:
    """A layer set as the rows write it: `last`, `res8`, or names joined by commas."""
    return layers if isinstance(layers, str) else ",".join(layers)
