"""run_benchmark(cfg): plan the work, generate the missing samples, score them, record them."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm import tqdm

from bench.config import ConfigError, build, check_ablation, check_path_names, check_variant, is_safe_name
from bench.datasets.base import Dataset, DatasetError, ReferenceImage, WorkUnit, reference_digest, to_model_input
from bench.metrics.common import PerSampleMetric, SampleContext
from bench.records import (
    MAPS_FILE,
    NO_ROW,
    SampleFiles,
    atomic_write_bytes,
    atomic_write_text,
    environment_manifest,
    inspect_sample,
    maps_to_npz,
    mask_to_png,
    merge_samples,
    png_problem,
    relative_to_root,
    row_path,
    save_png,
    task_writers,
    write_csv,
    write_row,
    writing,
)
from bench.sd.config import from_mapping, integer, is_integer
from bench.sd.diffusion import SamplingConfig
from bench.sd.methods import Generated, Method, Sample
from bench.tracking import NullTracker
from bench.truth.record import TRUTH_FILE, TruthRecorder, TruthSources
from method.attention import describe_layers
from method.plans import describe_general_plans
from method.tokens import subject_tokens

if TYPE_CHECKING:  # annotations only: config checks and refusals import this module without diffusers
    from bench.sd.backbone import Backbone

log = logging.getLogger(__name__)


def plan_work(references: list[ReferenceImage], seeds: list[int], shard_index: int, shard_count: int) -> list[WorkUnit]:
    """Every (image, prompt, seed) in protocol order; shard k of K takes units k, k+K, k+2K, ..."""
    if shard_count < 1 or not 0 <= shard_index < shard_count:
        raise ConfigError(
            f"shard.index={shard_index}, shard.count={shard_count}; expected count >= 1 and 0 <= index < count."
        )
    if not seeds:
        raise ConfigError("seeds=[]; expected at least one seed, e.g. seeds=[51828].")
    units = [WorkUnit(image, prompt, seed) for image in references for prompt in image.prompts for seed in seeds]
    first: dict[str, WorkUnit] = {}
    for unit in units:
        other = first.setdefault(unit.key, unit)
        if other is not unit and other.prompt.text == unit.prompt.text and other.image.image_id == unit.image.image_id:
            raise ConfigError(
                f"image {unit.image.image_id!r} lists the prompt {unit.prompt.text!r} twice (prompts are compared "
                "after Unicode NFC normalisation: two spellings of one text are one prompt). Fix: remove the repeat "
                "from the dataset's protocol."
            )
        if other is not unit:
            raise ConfigError(
                f"two samples would share the output path {unit.key}: image {other.image.image_id!r} with prompt "
                f"{other.prompt.text!r}, and image {unit.image.image_id!r} with prompt {unit.prompt.text!r} (a "
                "prompt's folder keeps only its letters and digits, lower-cased). Fix: remove the repeat, or "
                "reword one prompt so that they differ in more than case or punctuation."
            )
    unsafe = next((u for u in units if not all(is_safe_name(part) for part in u.key.split("/"))), None)
    if unsafe is not None:
        raise DatasetError(
            f"reference image id {unsafe.image.image_id!r} ({unsafe.image.source}) gives the unsafe output path "
            f"{unsafe.key!r}: every part must be a plain name (letters, digits, . _ + = -). Fix the dataset's ids."
        )
    return units[shard_index::shard_count]


def load_references(
    units: list[WorkUnit],
    size: int,
    resample: str,
    paths: RunPaths | None = None,
    recorded: Mapping[str, str] | None = None,
) -> dict[str, tuple[np.ndarray, str]]:
    """Read and convert every reference the units need, before any generation starts.

    With the run's `paths`, each reference is also keyed by content: its converted pixels must be those the
    task's samples were made from (its copy under references/, else `recorded`: image id -> the
    `reference_sha256` of this run's done rows), else the run is refused (`check_reference_unchanged`).
    """
    out = {}
    for unit in units:
        image = unit.image
        if image.image_id in out:
            continue
        try:
            out[image.image_id] = to_model_input(image.load(), size, resample)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise DatasetError(
                f"cannot read reference image {image.image_id} from {image.source}: {exc}. "
                "Replace or remove the file and run again; nothing was generated yet."
            ) from exc
        if paths is not None:
            copy = paths.reference_png(size, image.image_id)
            check_reference_unchanged(image, out[image.image_id], copy, (recorded or {}).get(image.image_id))
    return out


def check_reference_unchanged(
    image: ReferenceImage, converted: tuple[np.ndarray, str], copy: Path, recorded: str | None
) -> None:
    """Refuse a reference whose pixels (uint8 [S, S, 3], as the model sees them, with their conversion note)
    differ from those the task's samples were made from: its whole copy under references/, else the digest its
    rows recorded (`recorded`)."""
    pixels, conversion = converted
    digest = reference_digest(pixels)
    stored, where = recorded, "recorded in this run's rows"
    if copy.is_file() and not png_problem(copy):
        with Image.open(copy) as saved:
            stored, where = reference_digest(np.asarray(saved.convert("RGB"))), f"the copy {copy}"
    if stored and stored != digest:
        raise DatasetError(
            f"reference image {image.image_id} ({image.source}) changed since this task's samples were made from "
            f"it: its pixels now have sha256 {digest[:12]} (conversion: {conversion}), those samples used "
            f"{stored[:12]} ({where}); a resume would mix two images under one id. Fix: restore the original file "
            "(if only the copy was changed, delete the copy: it is rewritten), or run under a new task_name=..., "
            "or delete the task's outputs/ and results/ folders to redo every sample from the new file. Nothing "
            "was generated."
        )


def batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True)
class RunPaths:
    """Where one run reads and writes, built once from the config (after `check_path_names`)."""

    run_dir: Path  # outputs/<task>/<model>/<dataset>/<label>+<ablation>: this run's rows, images and masks
    task_dir: Path  # outputs/<task>: every run of the task (its writers lock)
    results_dir: Path  # results/<task>
    samples_csv: Path  # results/<task>/samples.csv, rebuilt from every row of the task
    references_dir: Path  # outputs/<task>/references/<model>/<dataset>: the references as the model saw them
    root_dir: Path  # paths.root_dir: rows hold paths relative to it

    @classmethod
    def from_config(cls, cfg: DictConfig) -> RunPaths:
        task_dir = Path(cfg.paths.output_dir) / cfg.task_name
        results_dir = Path(cfg.paths.results_dir) / cfg.task_name
        return cls(
            run_dir=Path(cfg.run_dir),
            task_dir=task_dir,
            results_dir=results_dir,
            samples_csv=results_dir / "samples.csv",
            references_dir=task_dir / "references" / cfg.model.name / cfg.dataset.name,
            root_dir=Path(cfg.paths.root_dir),
        )

    def image_png(self, key: str) -> Path:
        return self.run_dir / "images" / f"{key}.png"

    def sample_masks(self, key: str) -> Path:
        """The folder of a sample's masks (and its maps.npz and truth.npz)."""
        return self.run_dir / "masks" / key

    def reference_png(self, size: int, image_id: str) -> Path:
        """The reference at `size` px, shared by every method of the task."""
        return self.references_dir / f"{size}px" / f"{image_id}.png"

    def relative(self, path: Path) -> str:
        return relative_to_root(path, self.root_dir)

    def sample_files(self, unit: WorkUnit) -> SampleFiles:
        """Where `unit`'s row, image and masks must be, and the identity its row must record."""
        identity = {"sample_key": unit.key, "image_id": unit.image.image_id, "prompt": unit.prompt.text}
        return SampleFiles(
            row=row_path(self.run_dir, unit.key),
            image=self.image_png(unit.key),
            masks=self.sample_masks(unit.key),
            root=self.root_dir,
            identity={**identity, "seed": unit.seed},
        )


@dataclass(frozen=True)
class RunPlan:
    """This shard's work, planned before any model is built."""

    dataset: Dataset
    units: list[WorkUnit]  # every unit of this shard, in protocol order
    pending: list[WorkUnit]  # the units not done: no row yet, or damaged files (redone)
    settings: dict  # every setting that changes a sample's pixels (`image_settings`)
    damaged: dict[str, str] = field(default_factory=dict)  # sample key -> what is damaged (those are redone)
    recorded_references: dict[str, str] = field(default_factory=dict)  # image id -> reference_sha256 of done rows


@dataclass(frozen=True)
class RunContext:
    """What the sample loop needs, built once by `run_benchmark` after every check has passed."""

    paths: RunPaths
    method: Method
    backbone: Backbone
    sampling: SamplingConfig
    metrics: dict[str, PerSampleMetric]  # conf name -> per-sample metric
    tracker: NullTracker  # logger=none, or a subclass of it (logger=wandb)
    truth: TruthRecorder | None  # None: truth_record.enabled is off
    references: dict[str, tuple[np.ndarray, str]]  # image id -> (uint8 [S, S, 3] model input, conversion note)
    row_base: dict  # the columns shared by every row of the run (`row_base`)
    batch_size: int
    config: dict  # the resolved config, as the tracker records it
    run_name: str  # the tracker's name of this run


def run_benchmark(cfg: DictConfig) -> dict:
    """Run one job: one (model, dataset, method, ablation) over its shard of the work units.

    Returns a summary (counts and paths). Samples already done (their row exists) are skipped.
    Order: every check that needs no model, then the references, then the models and the checks that
    need them; only then the first write. A run refused by any check leaves nothing that blocks the fix.
    """
    sampling, method = validate_config(cfg)
    paths = RunPaths.from_config(cfg)
    plan = plan_run(cfg, paths)
    summary = {"run_dir": str(paths.run_dir), "planned": len(plan.units), "pending": len(plan.pending)}
    summary["damaged"] = len(plan.damaged)
    if cfg.dry_run:
        return print_dry_run(cfg, plan, summary)
    # Read every reference first: a bad or changed file fails now, not after an hour of sampling.
    resample = cfg.dataset.get("resample", "bicubic")
    references = load_references(plan.pending, cfg.model.image_size, resample, paths, plan.recorded_references)
    context = build_context(cfg, paths, plan, method, sampling, references)
    written = [paths.task_dir, paths.results_dir, paths.run_dir]
    with writing(paths.task_dir), task_writers(paths.task_dir, written) as removed:
        if removed:
            log.info("deleted %d temporary files of killed writes (no other run of this task is alive)", removed)
        write_run_records(cfg, context, plan)
        return generate_and_record(context, plan.pending, summary)


def validate_config(cfg: DictConfig) -> tuple[SamplingConfig, Method]:
    """Check the whole config before anything is loaded or written; the sampling config and the method."""
    check_ablation(cfg)
    check_variant(cfg)
    check_run_keys(cfg)
    check_path_names(cfg)
    sampling = from_mapping(SamplingConfig, cfg.sampling, "sampling")
    method: Method = build(cfg.method)
    method.check(sampling)
    set_cpu_threads(cfg.get("cpu_threads"))
    return sampling, method


def plan_run(cfg: DictConfig, paths: RunPaths) -> RunPlan:
    """The dataset and this shard's work units; refuses a run folder made with other pixel settings or for other
    subjects. A unit is pending unless its sample is done and whole (`inspect_samples`)."""
    dataset = build(cfg.dataset)
    if not isinstance(dataset, Dataset):
        raise ConfigError(
            f"dataset={cfg.dataset.name} builds a {type(dataset).__name__}, which is not a "
            "bench.datasets.base.Dataset. Fix: subclass Dataset (it declares records_truth and manifest())."
        )
    references = dataset.references()
    if not references:
        raise DatasetError(f"dataset={cfg.dataset.name} yielded no reference images; check its config.")
    units = plan_work(references, list(cfg.seeds), cfg.shard.index, cfg.shard.count)
    settings = image_settings(cfg)
    check_run_settings(paths.run_dir, settings)
    done, damaged = inspect_samples(paths, units)
    check_same_subjects(units, done, paths.run_dir)
    pending = [u for u in units if u.key not in done]
    recorded = {row["image_id"]: row["reference_sha256"] for row in done.values() if row.get("reference_sha256")}
    return RunPlan(dataset, units, pending, settings, damaged, recorded)


def inspect_samples(paths: RunPaths, units: list[WorkUnit]) -> tuple[dict[str, dict], dict[str, str]]:
    """(done, damaged): the rows of the units whose samples are done and whole, by key; and what is damaged in
    the others that have files (each named in a warning: damaged means not done, so the run redoes it)."""
    done, damaged = {}, {}
    for unit in units:
        row, problem = inspect_sample(paths.sample_files(unit))
        if not problem:
            done[unit.key] = row
        elif problem != NO_ROW:
            damaged[unit.key] = problem
            log.warning("%s. Damaged means not done: the sample %s is redone now.", problem, unit.key)
    return done, damaged


def check_same_subjects(units: list[WorkUnit], done: Mapping[str, dict], run_dir: Path) -> None:
    """Refuse a resume whose dataset now gives a done sample another subject, category or subcategory (the same
    image, prompt and seed): the rerun would keep the sample made for the old one."""
    changed = [
        (unit, column, done[unit.key].get(column), value)
        for unit in units
        if unit.key in done
        for column, value in (
            ("subject", unit.prompt.subject),
            ("category", unit.image.category),
            ("subcategory", unit.image.subcategory),
        )
        if done[unit.key].get(column, value) != value
    ]
    if changed:
        unit, column, old, new = changed[0]
        raise ConfigError(
            f"{run_dir} holds sample {unit.key} made with {column}={old!r}, but the dataset now gives {column}="
            f"{new!r} ({len(changed)} such change(s)); a rerun would keep the old samples. Fix: restore the "
            "protocol, or use another task_name=..., or delete that folder to start over."
        )


def print_dry_run(cfg: DictConfig, plan: RunPlan, summary: dict) -> dict:
    """dry_run=true: the resolved config, the summary, the layers to choose from and the first samples."""
    print(OmegaConf.to_yaml(cfg, resolve=True))
    print(json.dumps(summary, indent=2))
    if "score" in cfg.method:  # a method with a layer choice: the model's cross-attention layers
        backbone = build(cfg.model)
        print_layers(backbone)
        if cfg.method.score.get("kind", "gradsam") == "gradsam":
            print_general_plans(backbone, cfg.method, plan.pending or plan.units)
    for unit in plan.pending[:10]:
        damaged = plan.damaged.get(unit.key)
        print(f"  would redo {unit.key} ({damaged})" if damaged else f"  would generate {unit.key}")
    return summary


def build_context(
    cfg: DictConfig,
    paths: RunPaths,
    plan: RunPlan,
    method: Method,
    sampling: SamplingConfig,
    references: dict[str, tuple[np.ndarray, str]],
) -> RunContext:
    """Build the models and run the checks that need them, in this order: the subject-truth segmenters
    (missing weights stop the run before the backbone loads), the backbone, its checks and
    `Method.preflight`, then the metrics and the tracker."""
    truth = truth_sources(cfg, plan.dataset)
    backbone = SWEEP_MODELS.reuse("model", cfg.model, lambda: build(cfg.model))
    check_steps(sampling, backbone.scheduler.config.num_train_timesteps)
    method.preflight(backbone, [u.sample(references[u.image.image_id][0]) for u in plan.pending])
    metrics = SWEEP_MODELS.reuse("metrics", cfg.metrics.per_sample, lambda: build_metrics(cfg.metrics.per_sample))
    if plan.pending:
        prepare_metrics(metrics)
    tracker = build(cfg.logger)
    shard = f"+shard-{cfg.shard.index}-of-{cfg.shard.count}" if cfg.shard.count > 1 else ""
    return RunContext(
        paths=paths,
        method=method,
        backbone=backbone,
        sampling=sampling,
        metrics=metrics,
        tracker=tracker,
        truth=None if truth is None else truth.recorder(backbone.latent_size),
        references=references,
        row_base=row_base(cfg, method),
        batch_size=cfg.batch_size,
        config=OmegaConf.to_container(cfg, resolve=True),
        run_name=f"{cfg.task_name}/{method.label}+{cfg.ablation.name}{shard}",
    )


class SweepModels:
    """The models of the last job in this process, reused by the next job of the same `-m` sweep.

    Hydra's basic launcher runs a sweep's jobs one after another in one process (`make demo`: one job per
    row), and every row of a sweep usually loads the same backbone and metrics. Inside a multirun, `reuse`
    hands back the object built for the previous job when the config node is the same (its resolved YAML);
    anything else is built afresh and replaces it (one object per kind, so memory stays bounded). Outside a
    multirun it always builds. Methods restore what they change on the backbone (attention processors, dtype),
    so a reused backbone computes what a fresh one would, bit for bit.
    """

    def __init__(self) -> None:
        self.last: dict[str, tuple[str, object]] = {}

    def reuse(self, kind: str, node: DictConfig, make: Callable[[], object]):
        """`make()`, or inside a multirun the object made for the same `kind` and node by an earlier job."""
        if not in_multirun():
            return make()
        text = OmegaConf.to_yaml(node, resolve=True)
        if kind not in self.last or self.last[kind][0] != text:
            self.last.pop(kind, None)  # free the previous one before building the next
            self.last[kind] = (text, make())
        return self.last[kind][1]


SWEEP_MODELS = SweepModels()


def in_multirun() -> bool:
    """True inside a job of a Hydra `-m` sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def build_metrics(per_sample: DictConfig) -> dict[str, PerSampleMetric]:
    """Every per-sample metric of `metrics.per_sample`, built (weights load in `prepare_metrics`)."""
    return {name: build(node) for name, node in per_sample.items()}


def prepare_metrics(metrics: Mapping[str, PerSampleMetric]) -> None:
    """Load every metric's weights now (`prepare`, bench.metrics.common): weights that cannot load stop the run
    before the first sample (MissingWeightsError, one line), never a column of NaN scores that a rerun keeps.
    `prepare` loads only once: a metric reused by the next job of a sweep (`SweepModels`) returns at once."""
    for metric in metrics.values():
        prepare = getattr(metric, "prepare", None)
        if prepare is not None:
            prepare()


def write_run_records(cfg: DictConfig, context: RunContext, plan: RunPlan) -> None:
    """config.yaml, the image settings, this shard's environment and the dataset manifest (atomic)."""
    run_dir = context.paths.run_dir
    # What made the samples, the same for every shard (Hydra keeps each shard's own config in .hydra/).
    shared = {k: v for k, v in context.config.items() if k != "shard"}
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(shared))
    atomic_write_text(run_dir / SETTINGS_FILE, json.dumps(plan.settings, indent=2, sort_keys=True) + "\n")
    atomic_write_text(
        run_dir / f"environment-shard-{cfg.shard.index}-of-{cfg.shard.count}.json",
        json.dumps(environment_manifest(context.backbone.device), indent=2, sort_keys=True) + "\n",
    )
    manifest = plan.dataset.manifest()  # the files used, with their sha256 (e.g. dataset=places365)
    if manifest is not None:
        write_csv(pd.DataFrame(manifest), run_dir / "manifest.csv")


def generate_and_record(context: RunContext, pending: list[WorkUnit], summary: dict) -> dict:
    """Generate, score and record, one batch at a time; each sample is saved as it completes.

    Then rebuild the task's samples table from every row on disk (all methods, all shards); returns
    `summary` with its path, the samples made and failed (the first failure's key and reason) and the
    seconds spent generating and recording them.
    """
    context.tracker.start(context.config, name=context.run_name)
    exit_code = 1
    summary.update(made=0, failed=0, first_failure=None)
    started = time.perf_counter()
    try:
        with tqdm(total=len(pending), desc=context.method.label, unit="sample") as bar:
            for batch in batches(pending, context.batch_size):
                samples = [u.sample(context.references[u.image.image_id][0]) for u in batch]
                results = context.method.generate(context.backbone, samples, context.sampling)
                for unit, sample, result in zip(batch, samples, results, strict=True):
                    with writing(context.paths.run_dir):
                        count_sample(summary, record_sample(context, unit, sample, result))
                    bar.update(1)
        summary["generation_s"] = time.perf_counter() - started
        samples_csv = context.paths.samples_csv
        with writing(samples_csv):
            frame = merge_samples(context.paths.task_dir, samples_csv)
        context.tracker.log_table("samples", frame)
        summary["samples_csv"] = str(samples_csv)
        exit_code = 0
    finally:
        context.tracker.finish(exit_code)
    return summary


def count_sample(summary: dict, row: dict) -> None:
    """Count a recorded row in `summary` as made or failed; keep the first failure as '<key>: <reason>'."""
    if row["status"] == "failed":
        summary["failed"] += 1
        summary["first_failure"] = summary["first_failure"] or f"{row['sample_key']}: {row['failure']}"
    else:
        summary["made"] += 1


def check_run_keys(cfg: DictConfig) -> None:
    """seeds (distinct integers), batch_size, shard and dry_run: types and ranges, before anything runs."""
    seeds = cfg.get("seeds")
    values = OmegaConf.to_container(seeds) if OmegaConf.is_list(seeds) else None
    if not values or not all(is_integer(s) for s in values):
        raise ConfigError(f"seeds={seeds!r} is not a non-empty list of integers. Fix: e.g. seeds=[51828] or [1,2].")
    repeated = sorted(s for s, n in Counter(values).items() if n > 1)  # linear: 100,000 seeds check at once
    if repeated:
        shown = values if len(values) <= 20 else f"[{len(values)} seeds]"
        raise ConfigError(f"seeds={shown} repeats {repeated}: each seed makes one sample. Fix: list each once.")
    for key, rule in (("batch_size", integer(1)), ("shard.count", integer(1)), ("shard.index", integer(0))):
        value = OmegaConf.select(cfg, key)
        if not rule.accepts(value):
            raise ConfigError(f"{key}={value!r} is not {rule.expected}. Fix: set {key} to {rule.expected}.")
    if not isinstance(cfg.get("dry_run"), bool):
        raise ConfigError(f"dry_run={cfg.get('dry_run')!r} is not true or false.")
    size = cfg.model.get("image_size")
    if not (is_integer(size) and size >= 16 and size % 8 == 0):
        raise ConfigError(
            f"model.image_size={size!r} is not a multiple of 8 >= 16 (the VAE downsamples by up to 8: any other "
            "size decodes to a different size than the reference). Fix: e.g. model.image_size=64 (512 for sd15)."
        )
    check_device(str(cfg.model.get("device", "auto")))


def check_steps(sampling: SamplingConfig, train_steps: int) -> None:
    """The protocol's steps must fit the model's training schedule (diffusers refuses more, mid-run)."""
    if sampling.num_inference_steps > train_steps:
        raise ConfigError(
            f"sampling.num_inference_steps={sampling.num_inference_steps} exceeds the model's {train_steps} "
            f"training timesteps. Fix: at most sampling.num_inference_steps={train_steps} (the paper uses 50)."
        )


def check_device(device: str) -> None:
    """A CUDA device that this machine lacks is refused now, not as a driver traceback while loading."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device={device} but torch sees no CUDA device here (torch.cuda.is_available() is False). "
            "Fix: device=auto (the GPU when there is one) or device=cpu, or run on the GPU machine."
        )


def print_layers(backbone) -> None:
    """The backbone's cross-attention layers in execution order, with their map sizes (for method.score.layers)."""
    print("cross-attention layers (execution order; method.score.layers: last, all, res<k> or names):")
    print(describe_layers(backbone.unet, backbone.latent_size))


def print_general_plans(backbone: Backbone, method: DictConfig, units: list[WorkUnit]) -> None:
    """Per layer set: the general path's rows and columns, their passes and estimated forwards (method.plans)."""
    score, index_mode = method.score, OmegaConf.select(method, "subject.index_mode", default="clip_aligned")
    tokens = set()
    for unit in units:
        try:
            tokens.add(
                len(subject_tokens(backbone.tokenizer, unit.prompt.text, unit.prompt.subject, index_mode).positions)
            )
        except ValueError:  # a subject outside the prompt or window: preflight names it when the run starts
            continue
    layers = score.layers if isinstance(score.layers, str) else list(score.layers)
    grid = (backbone.latent_channels, backbone.latent_size, backbone.latent_size)
    mode, chunk = score.get("general_mode", "auto"), score.general_chunk_size
    print(describe_general_plans(backbone.unet, grid, sorted(tokens) or [1], chunk, mode, layers, score.path))


SETTINGS_FILE = "image_settings.json"


def image_settings(cfg: DictConfig) -> dict:
    """Every setting that changes a sample's pixels (not how many samples, nor where or how fast)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    dataset = {k: v for k, v in resolved["dataset"].items() if k in ("name", "seed", "image_size", "resample", "root")}
    model = {k: v for k, v in resolved["model"].items() if k != "device"}
    return {"model": model, "dataset": dataset, "method": resolved["method"], "sampling": resolved["sampling"]}


def check_run_settings(run_dir: Path, settings: dict) -> None:
    """Refuse to resume a run folder whose samples were made with other settings (they would be skipped)."""
    path = run_dir / SETTINGS_FILE
    if not path.exists():
        return
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}. Delete that file (it is rewritten) and run again.") from exc
    if stored == settings or not any((run_dir / "rows").rglob("*.json")):
        return  # the same settings, or no sample yet: nothing would be skipped wrongly (the file is rewritten)
    changed = sorted(
        f"{group}.{key}"
        for group in settings
        for key in set(settings[group]) | set(stored.get(group, {}))
        if settings[group].get(key) != stored.get(group, {}).get(key)
    )
    raise ConfigError(
        f"{run_dir} already holds samples made with other settings ({', '.join(changed)} differ), and a rerun "
        "would skip them as done. Use another task_name=..., or delete that folder to start over."
    )


def set_cpu_threads(threads: int | None) -> None:
    """cpu_threads: null keeps torch's default; an integer >= 1 fixes the intra-op thread count."""
    if threads is None:
        return
    if not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"cpu_threads={threads!r}; expected null (torch's default) or an integer >= 1.")
    torch.set_num_threads(threads)


def row_base(cfg: DictConfig, method: Method) -> dict:
    """Row columns shared by every sample of the run: what made the image (no time, host or shard)."""
    base = {
        "task": cfg.task_name,
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "method": method.name,
        "label": method.label,
        "ablation": cfg.ablation.name,
    }
    base.update({f"method.{k}": v for k, v in method.columns().items()})
    base.update({f"sampling.{k}": v for k, v in OmegaConf.to_container(cfg.sampling).items()})
    return base


def truth_sources(cfg: DictConfig, dataset: Dataset) -> TruthSources | None:
    """The run's subject-truth segmenters, or None when `truth_record.enabled` is off.

    auto: on for datasets of real images (`records_truth`, e.g. dataset=places365), whose subjects are
    found only by a segmenter; off elsewhere, so those rows keep exactly their columns.
    """
    node = cfg.get("truth_record") or {}
    enabled = node.get("enabled", False)
    if enabled == "auto":
        enabled = dataset.records_truth
    if not isinstance(enabled, bool):
        raise ConfigError(f"truth_record.enabled={enabled!r}; expected auto, true or false.")
    if not enabled:
        return None
    if not cfg.get("truth"):
        raise ConfigError(
            "truth_record.enabled is on but truth=none; pick a segmenter (truth=clipseg on real images, "
            "truth=oracle on dataset=toy_world) or set truth_record.enabled=false."
        )
    compare = build(cfg.truth_compare) if cfg.get("truth_compare") else None
    return TruthSources(build(cfg.truth), node.get("alt_threshold"), compare)


def record_sample(context: RunContext, unit: WorkUnit, sample: Sample, result: Generated) -> dict:
    """Save the image and masks (and the truth), score the sample, then write its row (the row marks it done).

    Returns the row."""
    pixels, conversion = context.references[unit.image.image_id]
    row = {**context.row_base, **identity_columns(unit, conversion, reference_digest(pixels)), **result.info}
    if result.failure is not None or result.image is None:
        row.update(status="failed", failure=result.failure or "no image", image_path="")
        write_row(context.paths.run_dir, unit.key, row)
        log.warning("sample %s failed: %s", unit.key, row["failure"])
        return row
    row.update(save_sample_files(context.paths, unit, sample, result))
    if context.truth is not None:
        row.update(truth_columns(context, unit, sample, result))
    row.update(metric_columns(context.metrics, unit, sample, result))
    write_row(context.paths.run_dir, unit.key, row)
    return row


def identity_columns(unit: WorkUnit, conversion: str, digest: str) -> dict:
    """What identifies a sample in its row: reference image, prompt, seed, how the reference was converted and
    the sha256 of its converted pixels (`reference_digest`: what a resume checks the reference against)."""
    return {
        "image_id": unit.image.image_id,
        "category": unit.image.category,
        "subcategory": unit.image.subcategory,
        "prompt": unit.prompt.text,
        "subject": unit.prompt.subject,
        "seed": unit.seed,
        "sample_key": unit.key,
        "reference_source": unit.image.source,
        "reference_conversion": conversion,
        "reference_sha256": digest,
    }


def save_sample_files(paths: RunPaths, unit: WorkUnit, sample: Sample, result: Generated) -> dict:
    """Write the image, the masks (and recorded maps) and the reference as the model saw it; their row columns."""
    image_path, masks_dir = paths.image_png(unit.key), paths.sample_masks(unit.key)
    save_png(image_path, result.image)
    for name, mask in result.masks.items():
        save_png(masks_dir / f"{name}.png", mask_to_png(mask))
    if result.maps:  # method.attribution.record: the continuous maps beside the masks
        atomic_write_bytes(masks_dir / MAPS_FILE, maps_to_npz(result.maps, result.latents))
    # The reference after conversion and resize, shared by every method of the task.
    reference_path = paths.reference_png(sample.reference.shape[0], unit.image.image_id)
    if png_problem(reference_path):  # missing, or damaged: rewritten (its pixels were checked before the run)
        save_png(reference_path, sample.reference)
    return {
        "status": "ok",
        "failure": "",
        "image_path": paths.relative(image_path),
        "reference_path": paths.relative(reference_path),
        "masks_dir": paths.relative(masks_dir) if result.masks else "",
    }


def truth_columns(context: RunContext, unit: WorkUnit, sample: Sample, result: Generated) -> dict:
    """Segment the generated image, write its truth.npz beside the masks; the `truth_*` columns."""
    truth_path = context.paths.sample_masks(unit.key) / TRUTH_FILE
    columns = context.truth(
        result.image, sample.subject, sample.prompt, truth_path, result.masks, sample.reference, unit.key
    )
    return {**columns, "truth_path": context.paths.relative(truth_path)}


def metric_columns(metrics: dict[str, PerSampleMetric], unit: WorkUnit, sample: Sample, result: Generated) -> dict:
    """Every per-sample metric's columns, each with its provenance."""
    scored = SampleContext(
        generated=result.image,
        reference=sample.reference,
        prompt=sample.prompt,
        subject=sample.subject,
        image_id=sample.image_id,
        seed=sample.seed,
        masks=result.masks,
        native_reference=unit.image.load,
    )
    columns = {}
    for metric in metrics.values():
        columns.update(metric(scored))
        columns[f"{metric.name}_provenance"] = metric.provenance
    return columns
