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
from dataclasses import dataclass, field, replace

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
from bench.sd.maps import MapRecord
from bench.sd.methods import Generated, Method, Sample, images_or_failures
from bench.sd.seeding import draw_normal
from method.attention import layer_resolutions, resolve_layers
from method.config import LAYERED_KINDS, GradSAMConfig, ScoreConfig
from method.gradsam import attention_maps, attention_scores, layer_scores, noise_difference, scores_with_config
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
    daam: dict = field(default_factory=dict)  # layer -> subject attention summed over the steps so far [T, h, w]
    maps: list = field(default_factory=list)  # recorded: (kind, layer, index k, timestep, layer side, [C, h, w])

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
            # new switches appear only when set, so the rows of existing configs keep their columns
            **({"mask.channel_rule": cfg.mask.channel_rule} if cfg.mask.channel_rule != "per_channel" else {}),
            **({"mask.dilation.scale_aware": True} if dil.enabled and dil.scale_aware else {}),
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
        self.layers_of(backbone, self.config.score.layers)  # an unknown layer name fails now, listing them
        record = self.config.attribution
        if record.record:
            self.layers_of(backbone, record.layers)
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
        kinds = self.recorded_kinds()
        scene = encode_text(backbone, [s.scene.replace("_", " ") for s in samples]) if "noise_diff" in kinds else None
        daam_layers = self.daam_layers(backbone) if "daam" in kinds else []

        def on_step_end(i: int, t: torch.Tensor, z_t: torch.Tensor, z_next: torch.Tensor) -> torch.Tensor:
            k = i + 1  # z_next lives at t_k
            if daam_layers and k <= self.injection_indices[-1]:  # DAAM sums every step up to the last score
                for b, state in enumerate(states):
                    self.accumulate_daam(backbone, z_t[b], t, cond[b], state, daam_layers)
            if k in self.injection_indices:
                for b, state in enumerate(states):
                    extra = {"scene": scene[b] if scene is not None else None, "k": k}
                    mask = self.compute_mask(backbone, scheduler, z_t[b], t, cond[b], state, sampling, **extra)
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
            result.maps = state.maps
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

    # -- scores -----------------------------------------------------------------------------------
    def recorded_kinds(self) -> set[str]:
        """Score kinds computed during the chain: the method's own, and those recorded beside it."""
        record = self.config.attribution
        return {self.config.score.kind, *(record.kinds if record.record else ())}

    def daam_layers(self, backbone: Backbone) -> list[str]:
        """Layers whose attention DAAM accumulates: the score's layer set and the recorded one."""
        unet, cfg = backbone.unet, self.config
        wanted = set(self.layers_of(backbone, cfg.score.layers)) if cfg.score.kind == "daam" else set()
        if cfg.attribution.record and "daam" in cfg.attribution.kinds:
            wanted |= set(self.layers_of(backbone, cfg.attribution.layers))
        return [name for name in resolve_layers(unet, "all") if name in wanted]

    @staticmethod
    def layers_of(backbone: Backbone, layers) -> tuple[str, ...]:
        """A layer set (last, all, res<k> on this backbone's latent, names) -> names in execution order."""
        return tuple(resolve_layers(backbone.unet, layers, backbone.latent_size))

    def accumulate_daam(self, backbone, z_t, t, cond, state: SampleState, layers: list[str]) -> None:
        """DAAM (Tang et al. 2022): add this step's bicubic-upsampled, head-summed subject attention per layer."""
        unet, positions = backbone.float32_unet(), state.subject.positions
        maps = attention_maps(unet, z_t[None], t, cond[None], positions, layers, "bicubic")
        for name, layer_map in maps.items():  # [T, h, w]
            state.daam[name] = state.daam[name] + layer_map if name in state.daam else layer_map

    def layer_maps(self, kind: str, layers, backbone, scheduler, z_t, t, cond, state, sampling, scene) -> dict:
        """{layer: score [T, C, h, w]} of one score kind (noise_diff: {"-": [1, C, h, w]}), summed over
        the layers of `layers` it is that kind's score."""
        unet, channels = backbone.float32_unet(), z_t.shape[0]
        positions = state.subject.positions
        if kind == "gradsam":
            cfg = replace(self.config.score, layers=self.layers_of(backbone, layers))
            extra = {"guidance_scale": sampling.guidance_scale, "generator": state.method_generator}
            return layer_scores(unet, z_t[None], t, cond[None], positions, cfg, scheduler=scheduler, **extra)
        if kind == "noise_diff":
            return {"-": noise_difference(unet, z_t[None], t, cond[None], scene[None])[None]}
        if kind == "attention_only":
            maps = attention_maps(unet, z_t[None], t, cond[None], positions, self.layers_of(backbone, layers))
        else:  # daam: the running sums of accumulate_daam
            maps = {name: state.daam[name] for name in self.layers_of(backbone, layers)}
        return {name: m[:, None].expand(-1, channels, -1, -1) for name, m in maps.items()}

    def record_maps(self, backbone, scheduler, z_t, t, cond, state, sampling, scene, k: int) -> None:
        """Append the continuous maps of every recorded kind at scoring index k (one subject word: tokens summed)."""
        record, sides = self.config.attribution, layer_resolutions(backbone.unet, backbone.latent_size)
        for kind in record.kinds:
            layers = "all" if kind == "noise_diff" else record.layers
            maps = self.layer_maps(kind, layers, backbone, scheduler, z_t, t, cond, state, sampling, scene)
            for name, score in maps.items():
                side = sides.get(name, z_t.shape[-2])  # the layer's own map size (noise_diff: the latent's)
                values = score.sum(dim=0).float().cpu().numpy()
                layer = None if name == "-" else name
                state.maps.append(MapRecord(kind, layer, None, k, int(t), side, values))

    def compute_mask(
        self,
        backbone: Backbone,
        scheduler,
        z_t: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        state: SampleState,
        sampling: SamplingConfig,
        scene: torch.Tensor | None = None,
        k: int = 0,
    ) -> torch.Tensor:
        """M [C, h, w] from the scores of the UNet call at (z_t, t_i); the pieces of the subject word summed."""
        positions, cfg = state.subject.positions, self.config.score
        unet = backbone.float32_unet()  # the sampling UNet, or its float32 twin when sampling in half precision
        if cfg.kind == "attention_only":
            scores = attention_scores(unet, z_t[None], t, cond[None], positions, self.layers_of(backbone, cfg.layers))
            state.path = "attention"
        elif cfg.kind in ("daam", "noise_diff"):
            maps = self.layer_maps(cfg.kind, cfg.layers, backbone, scheduler, z_t, t, cond, state, sampling, scene)
            scores = torch.zeros_like(next(iter(maps.values())))
            for layer_map in maps.values():
                scores = scores + layer_map
            state.path = cfg.kind
        else:
            if isinstance(cfg.layers, str) and cfg.layers.startswith("res"):  # resolved on this latent
                cfg = replace(cfg, layers=self.layers_of(backbone, cfg.layers))
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
        if self.config.attribution.record:  # the map that drives the mask, then the recorded kinds per layer
            own = self.config.score.layers
            layer_set = own if isinstance(own, str) else ",".join(own)
            layer_set = layer_set if cfg.kind in LAYERED_KINDS else None
            values = word_score[0].float().cpu().numpy()
            state.maps.append(MapRecord(cfg.kind, None, layer_set, k, int(t), z_t.shape[-2], values))
            self.record_maps(backbone, scheduler, z_t, t, cond, state, sampling, scene, k)
        state.check_finite("score", k, word_score)
        mask = union_mask(word_score, self.config.mask)
        state.check_finite("mask", k, mask)
        return mask
