"""Sanity checks of the attribution maps (Adebayo et al. 2018, "Sanity Checks for Saliency Maps"; Quantus' MPRT),
recomputed from the control chain's recorded latents: `python -m bench.attribution --stage sanity`.

The maps stage's control job (row no_manipulation) keeps z_t of every denoising step (method.attribution.latents).
Every map of every recorded kind is recomputed here at exactly those inputs (z_t, t, prompt), by the chain's own
recorder (method.attribution.MapRecorder, replayed over the recorded steps), on UNets whose weights were
re-initialised, or for words that are not the subject:

    cascade          a copy of the UNet re-initialised block by block from the output side back to the input,
                     cumulative: none, conv_out (+ conv_norm_out), up_blocks.<n-1> .. up_blocks.0, mid_block,
                     down_blocks.<n-1> .. down_blocks.0, conv_in (+ the time embedding)
    cross_attention  a fresh copy with only every attn2's to_q, to_k, to_v and to_out re-initialised
    text             the unrandomised UNet asked about another word at this sample's z_t: the prompt's last word
                     that is not the subject (`other_word`: the toy world's scene noun), and the subject word of
                     another prompt (`shuffled_partners`: a seeded pairing in which the subject words differ)

A module is re-initialised by its own `reset_parameters`, drawn on the CPU from a generator seeded by the stage's
name alone (`stage_seed`; the same weights on any device). Per (sample, scoring step, kind, layer set, stage):
the Spearman rank correlation of the channel-summed map with the unrandomised one, and the study's metrics
(bench.truth.scores) against the control chain's recorded subject truth, beside the study's chance maps. A map
that still finds the subject once the weights that made it are random reads a spatial prior, not the model; one
that finds it for another word reads saliency, not the text.

Maps go to outputs/attribution/sanity/<plan>/<sample>/<stage>.npz (written as the study's maps.npz, so they are
read and summed into layer sets by the same code; a rerun skips what exists), per-sample rows to
results/attribution/samples_sanity.csv and the plan, wall time and checks to sanity.json.
bench/attribution/sanity_report.py turns them into tables, figures and report sections.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import os
import string
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf
from scipy.stats import ConstantInputWarning, spearmanr
from torch import nn

from bench.attribution.inputs import maps_samples
from bench.attribution.report import CONTROL_LABEL, truth_function
from bench.attribution.sanity_report import CROSS, NONE, PLAN_FILE, SAMPLES_FILE, SCENE_WORD, SHUFFLED, write_sanity
from bench.attribution.study import TruthCells, cell_maps, load_maps, nan_reason, sample_rng_of
from bench.cli_checks import exit_with
from bench.config import REPO_ROOT, build
from bench.records import (
    DAMAGED_FIX,
    MAPS_FILE,
    NPZ_ERRORS,
    StorageError,
    atomic_write_bytes,
    atomic_write_text,
    latents_from_npz,
    maps_from_npz,
    maps_to_npz,
    write_csv,
)
from bench.reporting.samples_table import ResultsError, read_samples
from bench.sd.config import from_mapping
from bench.sd.diffusion import SamplingConfig, encode_text, truncated_timesteps
from bench.sd.errors import ConfigError
from bench.sd.maps import LatentRecord, MapRecord
from bench.truth.scores import attribution_metrics, centre_prior, uniform_map
from method.attention import cross_attention_layers, layer_resolutions
from method.attribution import MapRecorder, Schedule
from method.config import DAAMConfig, GradSAMConfig
from method.gradsam import ScoreInputs
from method.kinds import ScoreKind, layers_on, score_kind
from method.sampler import GradSAM
from method.tokens import subject_tokens

if TYPE_CHECKING:  # annotations only (importing diffusers costs seconds; the stage builds its model by config)
    from bench.sd.backbone import Backbone

TASK = "attribution"
STAGES_FILE = "stages.json"  # in the store: every stage's (check, name, order, file)
RECOMPUTED_KINDS = ("gradsam", "attention_only", "daam", "noise_diff")  # the chance kinds are the study's lines
OUTPUT_SIDE = ("conv_norm_out", "conv_out")  # the cascade's first stage
INPUT_SIDE = "conv_in"  # the cascade's last stage: conv_in, the time embedding and any other top-level module
RECOMPUTE_TOLERANCE = 1e-2  # largest |recomputed - recorded| / the recorded map's max allowed at stage none


@dataclass(frozen=True)
class SanityPlan:
    """Which recorded control samples, scoring steps and Grad-SAM layer sets the stage recomputes.

    Grad-SAM's per-layer maps (layer sets last, all, res<k>) take the general path: one batched VJP pass per
    latent row, the stage's dominant cost; every sample gets the method's own map (own:last: the paper's layer,
    the fast tail path) and every other kind at every layer set.
    """

    samples: int | None = None  # the first n control samples in `spread` order (None: every one)
    indices: tuple[int, ...] | None = None  # scoring indices k (None: every recorded one)
    general_samples: int | None = None  # how many of those (the first) also get Grad-SAM per layer (None: all)

    @property
    def digest(self) -> str:
        """The store's folder name: a rerun with another plan never mixes its maps with this one's."""
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:12]


# Measured on the offline profile (docs/attribution.md, "Sanity checks"): Grad-SAM per layer costs ~20 s a call
# uncontended on this CPU (~90 s at load 12), a replayed DAAM step ~0.05 s, the other kinds < 0.3 s a call.
PLANS = {
    "offline": SanityPlan(samples=20, indices=(18,), general_samples=2),
    "smoke": SanityPlan(indices=(4,), general_samples=1),  # tests: one step, Grad-SAM per layer on one sample
    "gpu": SanityPlan(samples=20, indices=(18,), general_samples=4),
}


@dataclass(frozen=True)
class Stage:
    """One model or text a sample's maps are recomputed with; `order` places it on the figures' x axis."""

    check: str  # cascade | cross_attention | text
    name: str
    order: int

    @property
    def file(self) -> str:
        return self.name.replace(" ", "_") + ".npz"


# -- model randomisation --------------------------------------------------------------------------------------


def cascade_stages(unet: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """(stage name, modules re-initialised at that stage), from the output side back to the input: conv_out with
    conv_norm_out, each up block from the last, the mid block, each down block from the last, then conv_in with
    the time embedding and every other top-level module. Together they hold every parameter, each once."""
    children = dict(unet.named_children())
    blocks = {"down_blocks", "up_blocks", "mid_block", *OUTPUT_SIDE}
    stages = [("conv_out", [children[n] for n in OUTPUT_SIDE if children.get(n) is not None])]
    stages += [(f"up_blocks.{i}", [b]) for i, b in reversed(list(enumerate(unet.up_blocks)))]
    stages += [("mid_block", [unet.mid_block])] if unet.mid_block is not None else []
    stages += [(f"down_blocks.{i}", [b]) for i, b in reversed(list(enumerate(unet.down_blocks)))]
    stages.append((INPUT_SIDE, [m for n, m in children.items() if n not in blocks and m is not None]))
    return stages


def cross_attention_projections(unet: nn.Module) -> list[nn.Module]:
    """Every cross-attention layer's (attn2's) to_q, to_k, to_v and to_out, in execution order."""
    layers = [unet.get_submodule(name) for name in cross_attention_layers(unet)]
    return [getattr(attn, part) for attn in layers for part in ("to_q", "to_k", "to_v", "to_out")]


def stage_seed(name: str) -> int:
    """The seed of a stage's new weights: a function of its name alone."""
    return int.from_bytes(hashlib.sha256(f"sanity|{name}".encode()).digest()[:8], "little")


@torch.no_grad()
def reinitialise(modules: list[nn.Module], name: str) -> None:
    """Re-initialise every parameter of `modules` with its module's own `reset_parameters`, in module order, drawn
    on the CPU (float32) from the global generator seeded by `stage_seed(name)` inside `torch.random.fork_rng`
    (the caller's stream is untouched), then copied into place: the same weights on any device."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stage_seed(name))
        for module in modules:
            for sub_name, sub in module.named_modules():
                own = dict(sub.named_parameters(recurse=False))
                if not own:
                    continue
                if not hasattr(sub, "reset_parameters"):
                    raise TypeError(
                        f"stage {name}: {sub_name or type(sub).__name__} ({type(sub).__name__}) holds parameters "
                        f"{sorted(own)} but has no reset_parameters; it cannot be re-initialised by its own init."
                    )
                fresh = copy.deepcopy(sub).to(device="cpu", dtype=torch.float32)
                fresh.reset_parameters()
                for key, value in fresh.named_parameters(recurse=False):
                    own[key].copy_(value.to(own[key].device, own[key].dtype))


def randomised_unets(unet: nn.Module) -> Iterator[tuple[Stage, nn.Module]]:
    """A copy of `unet` (never `unet` itself) at each stage: unrandomised, each cumulative cascade stage, then
    the unrandomised copy with only the cross-attention projections re-initialised. The copy is mutated in place
    between yields: use it before asking for the next."""
    model = copy.deepcopy(unet)
    yield Stage("cascade", NONE, 0), model
    order = 0
    for order, (name, modules) in enumerate(cascade_stages(model), 1):
        reinitialise(modules, name)
        yield Stage("cascade", name, order), model
    model.load_state_dict(unet.state_dict())
    reinitialise(cross_attention_projections(model), CROSS)
    yield Stage("cross_attention", CROSS, order + 1), model


# -- the run's settings and a sample's recorded inputs --------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Recompute:
    """A run's settings for recomputing its maps at recorded inputs (what its chain's recorder was built with)."""

    backbone: Backbone
    method: GradSAM  # the control row's method: its score settings, scoring indices and recorded kinds
    sampling: SamplingConfig

    @classmethod
    def of_run(cls, run_dir: Path) -> Recompute:
        """From a run folder's config.yaml: the backbone, the method and the sampling protocol that ran."""
        cfg = OmegaConf.load(run_dir / "config.yaml")
        method = build(cfg.method)
        if not isinstance(method, GradSAM):
            raise ConfigError(f"{run_dir}: method {type(method).__name__}; the sanity stage recomputes GradSAM maps.")
        return cls(build(cfg.model), method, from_mapping(SamplingConfig, cfg.sampling, "sampling"))

    @property
    def config(self) -> GradSAMConfig:
        return self.method.config

    def timesteps(self) -> tuple[torch.Tensor, object]:
        """The chain's truncated schedule t_0 > t_1 > ... and its scheduler (timesteps set, as the chain's)."""
        scheduler = self.backbone.new_scheduler()
        return truncated_timesteps(scheduler, self.sampling.num_inference_steps, self.config.strength), scheduler

    def check(self) -> None:
        """Refuse settings whose maps cannot be recomputed from the latents alone, before any work."""
        if self.config.score.vjp_basis != "identity":
            raise ConfigError(
                f"method.score.vjp_basis={self.config.score.vjp_basis}: its random cotangents come from the chain's "
                "generator state, which is not recorded; the sanity stage recomputes exact (identity) maps only."
            )


@dataclass(frozen=True, eq=False)
class Query:
    """What a map is asked about: the word, its token columns in the conditional text [1, 77, D], and noise_diff's
    scene text [1, 77, D] (None: no noise_diff map: the noise difference does not depend on the word)."""

    word: str
    text: torch.Tensor
    positions: tuple[int, ...]
    scene: torch.Tensor | None


def subject_query(run: Recompute, row: pd.Series) -> Query:
    """The sample's own subject: its prompt and the recorded subject columns; the scene text of noise_diff as the
    chain's (the subcategory, "_" read as a space)."""
    positions = tuple(int(p) for p in str(row["subject_positions"]).split(","))
    scene = encode_text(run.backbone, [str(row["subcategory"]).replace("_", " ")])
    return Query(str(row["subject"]), encode_text(run.backbone, [row["prompt"]]), positions, scene)


def other_word(prompt: str, subject: str) -> str | None:
    """The prompt's last content word that is not the subject word, punctuation stripped (None if there is none):
    the scene noun of the toy world's captions ('a red ball in a forest' -> 'forest'), the verb of the protocol's
    ('Deer roaming' -> 'roaming'). Articles, prepositions and conjunctions (FUNCTION_WORDS) are passed over."""
    words = [w.strip(string.punctuation) for w in prompt.split()]
    content = [w for w in words if w and w.lower() != subject.lower() and w.lower() not in FUNCTION_WORDS]
    return content[-1] if content else None


FUNCTION_WORDS = frozenset(
    {"a", "an", "the", "in", "on", "at", "of", "with", "by", "from", "into", "onto", "over", "under", "near"}
    | {"and", "or", "but", "to", "for", "its", "their", "his", "her"}
)


def word_query(run: Recompute, prompt: str, word: str) -> Query:
    """Another word of a prompt: its columns in that prompt's text (every occurrence), no noise_diff."""
    index_mode = run.config.subject.index_mode
    positions = subject_tokens(run.backbone.tokenizer, prompt, word, index_mode).positions
    return Query(word, encode_text(run.backbone, [prompt]), positions, None)


def shuffled_partners(rows: pd.DataFrame) -> dict[str, str]:
    """sample_key -> the sample whose prompt and subject word are asked at this sample's latent: a seeded shuffle
    of the samples grouped by subject word, each paired with the sample m places on (m = the largest group's
    size), so that every partner's subject word differs from the sample's and each sample is a partner once.
    {} when no such pairing exists (one subject word holds more than half the samples)."""
    if len(rows) < 2:
        return {}
    rng = np.random.default_rng(stage_seed("text pairing|" + "|".join(sorted(rows["sample_key"]))))
    groups = {s: list(g["sample_key"]) for s, g in rows.groupby("subject", sort=True)}
    order = [key for subject in rng.permutation(sorted(groups)) for key in rng.permutation(sorted(groups[subject]))]
    largest = max(len(g) for g in groups.values())
    if 2 * largest > len(order):
        return {}
    return {key: order[(i + largest) % len(order)] for i, key in enumerate(order)}


def spread(rows: pd.DataFrame) -> pd.DataFrame:
    """The control samples in the stage's order: the reference images (the bootstrap's clusters) in a seeded
    shuffle, one prompt of each before any image's second, so that the first n cover as many images as n allows."""
    frame = rows.sort_values(["image_id", "prompt", "seed"], kind="stable").reset_index(drop=True)
    images = sorted(frame["image_id"].unique())
    rank = {img: r for r, img in enumerate(np.random.default_rng(stage_seed("samples")).permutation(images))}
    frame["_round"] = frame.groupby("image_id").cumcount()
    frame["_rank"] = frame["image_id"].map(rank)
    return frame.sort_values(["_round", "_rank"], kind="stable").drop(columns=["_round", "_rank"])


# -- recomputing one sample's maps ------------------------------------------------------------------------------


def query_kinds(run: Recompute, query: Query, general: bool) -> dict[str, ScoreKind]:
    """The recorded kinds as the chain's recorder builds them (method.attribution.attribution_recorder), less the
    chance kinds, Grad-SAM per layer unless `general`, and noise_diff when the query has no scene text."""
    config = run.config.attribution
    kinds = {}
    for name in config.kinds:
        if name not in RECOMPUTED_KINDS or (name == "gradsam" and not general):
            continue
        if name == "noise_diff" and query.scene is None:
            continue
        layers = layers_on(run.backbone, "all" if name == "noise_diff" else config.layers)
        kinds[name] = score_kind(name, run.config.score, layers, None if query.scene is None else query.scene[0])
    return kinds


def recompute_maps(
    run: Recompute, unet: nn.Module, latents: list[LatentRecord], query: Query, indices: tuple[int, ...], general: bool
) -> list[MapRecord]:
    """Every map the chain recorded at scoring indices `indices`, recomputed on `unet` for `query` at the recorded
    latents: the chain's callbacks replayed (each step observed up to the last index; at index k the method's own
    map and every kind's per-layer maps from the UNet call at (z_{t_{k-1}}, t_{k-1})), into a MapRecorder built as
    the chain's (causal DAAM window). Returns its records (tokens summed, [C, h, w] float32)."""
    timesteps, scheduler = run.timesteps()
    config = dataclasses.replace(run.config.attribution, latents=False, daam=DAAMConfig(window="causal"))
    sides = layer_resolutions(run.backbone.unet, run.backbone.latent_size)
    schedule = Schedule(last_score=max(indices), length=len(timesteps))
    recorder = MapRecorder(config, [query_kinds(run, query, general)], sides, schedule)
    scene = None if query.scene is None else query.scene[0]
    own = score_kind(run.config.score.kind, run.config.score, layers_on(run.backbone, run.config.score.layers), scene)
    for i in range(max(indices)):
        step = latents[i]
        if step.index != i or step.timestep != int(timesteps[i]):
            raise ValueError(
                f"recorded latent {i} is step {step.index} at t={step.timestep}, not t={int(timesteps[i])}"
            )
        inputs = ScoreInputs(
            unet=unet,
            latents=torch.from_numpy(step.values)[None].to(run.backbone.device),
            timestep=timesteps[i],
            text_embeddings=query.text,
            token_positions=query.positions,
            guidance_scale=run.sampling.guidance_scale,
            scheduler=scheduler,
        )
        own.observe(inputs)
        recorder.observe(0, i + 1, inputs)
        if i + 1 in indices:
            scores, _ = own.total(inputs)  # [T, C, h, w], as GradSAM.compute_mask
            recorder.scored(0, run.method.own_record(i + 1, inputs, scores.sum(dim=0, keepdim=True)[0]), inputs)
    return recorder.records(0)


# -- the stage: which samples, where their maps go ------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Selection:
    """The plan applied to the study's samples table: the chosen control samples, in order, and their store."""

    plan: SanityPlan
    root: Path  # paths.root_dir: outputs/ and results/ lie under it
    samples: pd.DataFrame  # results/attribution/samples.csv (every row: the truth lookup needs them)
    rows: pd.DataFrame  # the chosen control rows, in `spread` order
    partners: dict[str, str]  # sample_key -> the sample whose subject word the shuffled-prompt check asks

    @property
    def store(self) -> Path:
        return self.root / "outputs" / TASK / "sanity" / self.plan.digest

    def folder(self, key: str) -> Path:
        return self.store / key

    def general(self, key: str) -> bool:
        """Whether this sample also gets Grad-SAM per layer (the first `general_samples` of the order)."""
        count = self.plan.general_samples
        return count is None or key in set(self.rows["sample_key"].iloc[:count])

    @property
    def indices(self) -> tuple[int, ...]:
        """The plan's scoring indices (default: every one the chosen samples scored at); a one-line refusal when
        the plan names one the runs did not score at."""
        recorded = {int(k) for text in self.rows["method.injection_indices"] for k in str(text).split(",")}
        chosen = self.plan.indices or tuple(recorded)
        if not set(chosen) <= recorded:
            exit_with(
                f"sanity plan indices {list(chosen)}: the control runs scored at {sorted(recorded)}. Fix: pick from "
                "those (SanityPlan.indices in bench/attribution/sanity.py PLANS)."
            )
        return tuple(sorted(chosen))


def has_latents(path: Path) -> bool:
    """Whether a maps.npz exists and kept the chain's latents (method.attribution.latents=true)."""
    if not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as data:
            return "latents" in data.files
    except NPZ_ERRORS as exc:
        raise StorageError(f"{path} is damaged ({' '.join(str(exc).split())}). {DAMAGED_FIX}") from None


def select(root: Path, plan: SanityPlan) -> Selection:
    """The control samples (row no_manipulation, ablation none, ok) whose maps kept their latents, in `spread`
    order, the first `plan.samples`; a one-line refusal naming the fix when there are none (before any work)."""
    csv = maps_samples(root)
    try:
        samples = read_samples(csv)
    except ResultsError as exc:
        exit_with(str(exc))
    control = samples[(samples["label"] == CONTROL_LABEL) & (samples["ablation"] == "none")]
    control = control[control["status"] == "ok"]
    kept = control[[has_latents(root / str(d) / MAPS_FILE) for d in control["masks_dir"]]]
    if kept.empty:
        exit_with(
            f"no {CONTROL_LABEL} sample in {csv} kept its latents ({len(control)} control samples; the sanity "
            "stage recomputes maps at the recorded z_t). Fix: rerun the maps stage (its control job sets "
            "method.attribution.latents=true): python -m bench.attribution --stage maps"
        )
    rows = spread(kept)
    rows = (rows.head(plan.samples) if plan.samples else rows).reset_index(drop=True)
    selection = Selection(plan, root, samples, rows, shuffled_partners(rows))
    _ = selection.indices  # refuse indices the runs did not score at, before any work
    return selection


def run_folder(root: Path, row: pd.Series) -> Path:
    """The run folder of a sample (its masks_dir is <run>/masks/<sample_key>)."""
    return root / Path(str(row["masks_dir"])).parents[len(Path(str(row["sample_key"])).parts)]


def stage_list(unet: nn.Module) -> list[Stage]:
    """Every stage in figure order: the cascade (none first), the cross-attention stage, the two text checks."""
    cascade = [Stage("cascade", name, i) for i, (name, _) in enumerate(cascade_stages(unet), 1)]
    count = len(cascade) + 1
    text = [Stage("text", SCENE_WORD, count + 1), Stage("text", SHUFFLED, count + 2)]
    return [Stage("cascade", NONE, 0), *cascade, Stage("cross_attention", CROSS, count), *text]


def text_queries(run: Recompute, selection: Selection, row: pd.Series) -> dict[str, Query]:
    """The text checks' queries of a sample: the prompt's other word, and its partner's subject (when paired)."""
    queries = {}
    word = other_word(str(row["prompt"]), str(row["subject"]))
    if word is not None:
        queries[SCENE_WORD] = word_query(run, str(row["prompt"]), word)
    partner_key = selection.partners.get(row["sample_key"])
    if partner_key is not None:
        partner = selection.rows.set_index("sample_key").loc[partner_key]
        queries[SHUFFLED] = subject_query(run, partner)
    return queries


def save_maps(path: Path, maps: list[MapRecord]) -> None:
    atomic_write_bytes(path, maps_to_npz(maps))


def run_shard(selection: Selection, shard: int, shards: int) -> int:
    """This shard's samples (every `shards`-th of the order): their maps at each stage, then the text checks on
    the unrandomised UNet; a map file that exists is kept (a rerun resumes). Returns how many it computed."""
    mine = selection.rows.iloc[shard::shards]
    computed = 0
    folders = pd.Series([str(run_folder(selection.root, r)) for _, r in mine.iterrows()], index=mine.index)
    for run_dir, part in mine.groupby(folders):  # a Series key: one folder string per group (a list may give tuples)
        run = Recompute.of_run(Path(run_dir))
        run.check()
        indices = selection.indices
        stages = stage_list(run.backbone.unet)
        atomic_write_text(selection.store / STAGES_FILE, json.dumps([dataclasses.asdict(s) for s in stages]) + "\n")
        latents = {r["sample_key"]: latents_of(selection.root, r) for _, r in part.iterrows()}
        for stage, unet in randomised_unets(run.backbone.float32_unet()):
            for _, row in part.iterrows():
                path = selection.folder(row["sample_key"]) / stage.file
                if not path.exists():
                    query, general = subject_query(run, row), selection.general(row["sample_key"])
                    save_maps(path, recompute_maps(run, unet, latents[row["sample_key"]], query, indices, general))
                    computed += 1
        for _, row in part.iterrows():
            for name, query in text_queries(run, selection, row).items():
                path = selection.folder(row["sample_key"]) / Stage("text", name, 0).file
                if not path.exists():
                    general = selection.general(row["sample_key"])
                    unet = run.backbone.float32_unet()
                    save_maps(path, recompute_maps(run, unet, latents[row["sample_key"]], query, indices, general))
                    computed += 1
    return computed


def latents_of(root: Path, row: pd.Series) -> list[LatentRecord]:
    """The control chain's recorded z_t of a sample, in step order; a damaged maps.npz raises StorageError."""
    path = root / str(row["masks_dir"]) / MAPS_FILE
    try:
        return latents_from_npz(path)
    except NPZ_ERRORS as exc:
        raise StorageError(f"{path} is damaged ({' '.join(str(exc).split())}). {DAMAGED_FIX}") from None


# -- per-sample rows ---------------------------------------------------------------------------------------------

MapKey = tuple[str, str, int, int]  # (kind, layer set, index, timestep)


def cell_maps_of(path: Path) -> dict[MapKey, np.ndarray]:
    """A stored stage's maps as the study reads a maps.npz (study.load_maps, study.cell_maps): every kind and layer
    set but single layers, each summed over channels [h, w]."""
    out = {}
    for kind, layer_set, index, timestep, channels in cell_maps(load_maps(path)):
        if not layer_set.startswith("layer:"):
            out[(kind, layer_set, int(index), int(timestep))] = channels.sum(axis=0)
    return out


def rank_correlation(cells: np.ndarray, reference: np.ndarray | None) -> float:
    """Spearman's rho of two maps over their cells (scipy.stats.spearmanr); NaN when either is constant."""
    if reference is None:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        return float(spearmanr(cells.ravel(), reference.ravel()).statistic)


def sample_base(row: pd.Series, truth: TruthCells) -> dict:
    """The columns every row of a sample carries: its identity and its truth's source and state."""
    base = {k: row[k] for k in ("sample_key", "image_id", "prompt", "subject", "seed", "label")}
    base |= {"truth": "no_manipulation", **truth.columns, "true_area": float(truth.cells.mean())}
    return base | {"truth_nan_reason": nan_reason(truth.cells, truth.reason)}


def stage_rows(
    base: dict, truth: np.ndarray, folder: Path, stages: list[Stage], words: dict[str, tuple[str, str]]
) -> list[dict]:
    """Per stored stage and map: Spearman with the unrandomised (stage none) map and the study's metrics against
    the sample's truth [h, w]. `words`: per text check, the word asked and the prompt it is from."""
    reference = cell_maps_of(folder / Stage("cascade", NONE, 0).file)
    rows = []
    for stage in stages:
        path = folder / stage.file
        if not path.exists():
            continue  # a text check that does not apply to this sample (see sanity.json)
        word, prompt = words.get(stage.name, (base["subject"], base["prompt"]))
        keys = {"check": stage.check, "stage": stage.name, "order": stage.order, "word": word, "word_prompt": prompt}
        for (kind, layer_set, index, timestep), cells in cell_maps_of(path).items():
            row = base | keys | {"kind": kind, "layer_set": layer_set, "index": index, "timestep": timestep}
            row["spearman"] = rank_correlation(cells, reference.get((kind, layer_set, index, timestep)))
            rows.append(row | attribution_metrics(cells, truth))
    return rows


def chance_rows(base: dict, row: pd.Series, root: Path, indices: tuple[int, ...], truth: np.ndarray) -> list[dict]:
    """The study's chance maps of the sample at `indices`: the centre prior, and the uniform map drawn exactly as
    the study draws it (study.sample_rng_of, one draw per recorded scoring step in order), so both lines are the
    study's own per-sample values."""
    recorded = maps_from_npz(root / str(row["masks_dir"]) / MAPS_FILE)
    rng, rows = sample_rng_of(row), []
    for index, timestep in sorted({(r.index, r.timestep) for r in recorded}):
        uniform = uniform_map(*truth.shape, rng)
        if index not in indices:
            continue
        for kind, cells in (("chance:uniform", uniform), ("chance:centre", centre_prior(*truth.shape))):
            keys = {"check": "chance", "stage": "-", "order": -1, "word": "", "word_prompt": ""}
            keys |= {"kind": kind, "layer_set": "-", "index": index, "timestep": timestep, "spearman": np.nan}
            rows.append(base | keys | attribution_metrics(cells, truth))
    return rows


def sanity_rows(selection: Selection, stages: list[Stage], indices: tuple[int, ...]) -> list[dict]:
    """Every chosen sample's rows: each stored stage's maps, then the chance lines at the same scoring steps."""
    truth_of = truth_function(selection.samples, selection.root, "own", "main")
    rows = []
    for _, row in selection.rows.iterrows():
        folder = selection.folder(row["sample_key"])
        if not (folder / Stage("cascade", NONE, 0).file).exists():
            exit_with(f"{folder} holds no stage maps: the sanity shards did not finish. Fix: rerun the stage.", 1)
        height, width = latents_of(selection.root, row)[0].values.shape[-2:]
        truth = truth_of(row, height, width)
        base = sample_base(row, truth)
        words = {SCENE_WORD: (other_word(row["prompt"], row["subject"]) or "", row["prompt"])}
        partner = selection.partners.get(row["sample_key"])
        if partner is not None:
            other = selection.rows.set_index("sample_key").loc[partner]
            words[SHUFFLED] = (other["subject"], other["prompt"])
        rows += stage_rows(base, truth.cells, folder, stages, words)
        rows += chance_rows(base, row, selection.root, indices, truth.cells)
    return rows


def recompute_check(selection: Selection) -> dict:
    """Stage none against the recorded maps.npz, map by map (both quantised alike): how many were compared, how
    many are identical, and the largest difference relative to the recorded map's max. Above RECOMPUTE_TOLERANCE
    the recorded latents, model or settings are not the ones that made the maps: the stage stops."""
    compared = identical = 0
    worst, where = 0.0, ""
    for _, row in selection.rows.iterrows():
        path = selection.root / str(row["masks_dir"]) / MAPS_FILE
        recorded = {(r.kind, r.layer, r.layer_set, r.index): r.values for r in maps_from_npz(path)}
        for r in maps_from_npz(selection.folder(row["sample_key"]) / Stage("cascade", NONE, 0).file):
            expected = recorded.get((r.kind, r.layer, r.layer_set, r.index))
            if expected is None:
                continue
            compared += 1
            identical += int(np.array_equal(r.values, expected))
            error = float(np.abs(r.values - expected).max() / max(float(np.abs(expected).max()), 1e-30))
            if error > worst:
                worst, where = error, f"{row['sample_key']} {r.kind} {r.layer or r.layer_set} k={r.index}"
    if compared == 0:
        exit_with("stage none recomputed no map that the maps stage recorded: nothing to check it against.", 1)
    if worst > RECOMPUTE_TOLERANCE:
        exit_with(
            f"recomputed maps differ from the recorded ones (largest relative difference {worst:.3g} at {where}): "
            "the latents, the model or the settings are not those of the recorded run. Fix: rerun the maps stage "
            "(python -m bench.attribution --stage maps), then this one.",
            1,
        )
    return {"compared": compared, "identical": identical, "max_relative_difference": worst, "where": where}


# -- the stage ---------------------------------------------------------------------------------------------------


def run_shards(selection: Selection, shards: int) -> None:
    """`shards` processes of one CPU thread each (`python -m bench.attribution.sanity --shard i`), or this one."""
    if shards <= 1:
        run_shard(selection, 0, 1)
        return
    plan = json.dumps(dataclasses.asdict(selection.plan))
    base = [sys.executable, "-m", "bench.attribution.sanity", "--root-dir", str(selection.root), "--plan", plan]
    procs = []
    for index in range(shards):
        cmd = [*base, "--shard", str(index), "--shards", str(shards)]
        print("+", " ".join(cmd), flush=True)
        procs.append(subprocess.Popen(cmd, cwd=REPO_ROOT, env=os.environ.copy()))
    codes = [p.wait() for p in procs]
    if any(codes):
        exit_with(f"a sanity shard failed (exit codes {codes}); see its message above. A rerun resumes.", 1)


def stored_maps(selection: Selection) -> int:
    return sum(1 for _ in selection.store.rglob("*.npz")) if selection.store.exists() else 0


def run_sanity(root: Path, plan: SanityPlan, shards: int = 1) -> Path:
    """The sanity stage: choose the samples (refusing before any work if none kept latents), recompute their maps
    at every stage (`shards` processes; stored maps are reused), check stage none against the recorded maps, and
    write results/attribution/samples_sanity.csv and sanity.json (plan, samples, pairing, wall time, machine load,
    the recompute check). Returns the CSV's path; bench/attribution/sanity_report.py makes the tables."""
    start, load = time.monotonic(), os.getloadavg()
    selection = select(root, plan)
    before = stored_maps(selection)
    run_shards(selection, shards)
    stages = [Stage(**s) for s in json.loads((selection.store / STAGES_FILE).read_text())]
    indices = selection.indices
    check = recompute_check(selection)
    folder = root / "results" / TASK
    write_csv(pd.DataFrame(sanity_rows(selection, stages, indices)), folder / SAMPLES_FILE)
    record = {
        "plan": dataclasses.asdict(plan),
        "store": str(selection.store.relative_to(root)),
        "samples": list(selection.rows["sample_key"]),
        "general_samples": [k for k in selection.rows["sample_key"] if selection.general(k)],
        "indices": list(indices),
        "stages": [dataclasses.asdict(s) for s in stages],
        "partners": selection.partners,
        "maps_computed": stored_maps(selection) - before,
        "maps_reused": before,
        "shards": shards,
        "wall_s": round(time.monotonic() - start, 1),
        "load_average": {"start": [round(x, 2) for x in load], "end": [round(x, 2) for x in os.getloadavg()]},
        "cpus": os.cpu_count(),
        "recompute_check": check,
    }
    atomic_write_text(folder / PLAN_FILE, json.dumps(record, indent=2) + "\n")
    return folder / SAMPLES_FILE


def run_stage(args: argparse.Namespace, root: Path) -> dict[str, Path] | None:
    """`python -m bench.attribution --stage sanity|all`: the recomputation (unless --report-only) with the profile's
    plan, then sanity.csv, its figures and sanity.md. With --stage all and no rows yet (--report-only), nothing is
    written (None)."""
    if not args.report_only:
        run_sanity(root, PLANS[args.profile], args.shards)
    folder = root / "results" / TASK
    if not (folder / SAMPLES_FILE).is_file():
        if args.stage == "sanity":
            exit_with(f"{folder / SAMPLES_FILE} does not exist. Fix: run the sanity stage without --report-only.")
        print(f"sanity: no rows in {folder} yet; its sections are left out.")
        return None
    paths = write_sanity(folder)
    if args.stage == "sanity":
        print(paths["md"].read_text())
    print(f"sanity: {paths['csv']}, {paths['md']}", flush=True)
    return paths


def plan_from_json(text: str) -> SanityPlan:
    """A SanityPlan from its JSON (as `run_shards` passes it); a one-line refusal naming the fields otherwise."""
    fields = [f.name for f in dataclasses.fields(SanityPlan)]
    try:
        values = json.loads(text)
        indices = values.get("indices")
        return SanityPlan(**{**values, "indices": tuple(int(k) for k in indices) if indices else None})
    except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
        exit_with(f"--plan {text!r}: expected a JSON object with fields {fields} ({exc}). Fix: e.g. --plan '{{}}'.")


def main(argv: list[str] | None = None) -> None:
    """One shard of the stage (bench.attribution --stage sanity starts them)."""
    parser = argparse.ArgumentParser(description="One shard of the attribution study's sanity stage.")
    parser.add_argument("--root-dir", type=Path, default=REPO_ROOT)
    parser.add_argument("--plan", required=True, help="the SanityPlan as JSON")
    parser.add_argument("--shard", type=int, default=0)
    parser.add_argument("--shards", type=int, default=1)
    args = parser.parse_args(argv)
    if not 0 <= args.shard < args.shards:
        exit_with(f"--shard {args.shard} --shards {args.shards}: expected 0 <= shard < shards. Fix: e.g. --shard 0.")
    plan = plan_from_json(args.plan)
    if args.shards > 1:
        torch.set_num_threads(1)
    computed = run_shard(select(args.root_dir.resolve(), plan), args.shard, args.shards)
    print(f"sanity shard {args.shard}/{args.shards}: {computed} stage maps computed", flush=True)


if __name__ == "__main__":
    main()
