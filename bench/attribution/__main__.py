"""`python -m bench.attribution [--profile offline|gpu] [--stage maps|sanity|faithfulness|all]`: the attribution study.

1. Two Hydra jobs record their maps (method.attribution.record=true) into outputs/attribution/:
   the no_manipulation chain (`row=no_manipulation`, label no_manipulation) with every score kind at every
   layer (its final image is the truth no mask shaped), and the paper's row (`row=gradsam_paper`, label
   gradsam: its own map, the cheap kinds, and its output as a second truth). The report selects the maps by
   these labels (bench/attribution/report.py PAIRS).
   Both record each image's subject truth (truth_record.enabled=true) from the `truth` source: the dataset's
   default (toy_world: oracle; places365: clipseg) or an override, e.g. `truth=clipseg_tiny` (offline stand-in).
2. `--report-only` (or after the jobs): results/attribution/attribution.{csv,md}, samples_attribution.csv,
   mask_rules.{csv,md}, figures/*.png and report.html (bench/attribution/report.py), then it prints the verdict
   (its table and one sentence per question, bench/attribution/verdict.py) and the paths, within 100 columns.

`--stage maps|sanity|faithfulness|all` (default all; each stage runs alone on what the earlier ones wrote):
- `maps` is the above;
- `sanity` (bench/attribution/sanity.py) recomputes every map from the control job's recorded latents on
  randomised UNets and for other words, and writes its tables (results/attribution/samples_sanity.csv, sanity.json,
  sanity.csv, sanity.md, figures/sanity_*.png);
- `faithfulness` runs the faithfulness curves alone (bench/attribution/faithfulness.py: the paper's operator keeping
  the top k of a map's cells, task attribution_faithfulness) and writes its tables;
- `all` runs maps, then sanity, then faithfulness, and the study's page gains both stages' sections (as does
  `--report-only` once their tables exist).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bench.attribution import faithfulness
from bench.attribution.inputs import maps_samples
from bench.cli_checks import exit_with
from bench.config import REPO_ROOT
from bench.records import StorageError
from bench.reporting.samples_table import ResultsError

PROFILES = {
    # 10 subcategories x 2 scenes x 2 prompts = 40 toy-world samples (20 reference images)
    "offline": [
        "model=toy",
        "dataset=toy_world",
        "metrics=toy",
        "dataset.images_per_subcategory=2",
        "dataset.prompts_per_subcategory=2",
    ],
    # the smallest end-to-end run (tests): untrained tiny model, one sample, 10 steps
    "smoke": [
        "model=tiny",
        "model.image_size=32",
        "dataset=toy_world",
        "metrics=none",
        "dataset.subcategories=[forest]",
        "dataset.images_per_subcategory=1",
        "dataset.prompts_per_subcategory=1",
        "sampling.num_inference_steps=10",
        "method.injection_indices=[2,4,6]",
        "method.score.general_chunk_size=256",
    ],
    "gpu": ["model=sd15", "dataset=places365", "dataset.images_per_subcategory=1", "dataset.prompts_per_subcategory=4"],
}
TASK = "attribution"
ALL_KINDS = "method.attribution.kinds=[gradsam,attention_only,daam,noise_diff]"
CHEAP_KINDS = "method.attribution.kinds=[attention_only,daam,noise_diff]"
# Both jobs record their images' subject truth (masks/<sample>/truth.npz, `truth_path`): the `truth` segmenter
# is the dataset's default (toy_world: oracle; places365: clipseg) or the user's override (truth=clipseg_tiny).
RECORD_TRUTH = ["truth_record.enabled=true"]
# The control chain also keeps its latents (every map can be recomputed at the same inputs: the sanity stage)
# and DAAM over both windows (the steps so far at each scoring step; the whole chain, as castorini/daam).
CONTROL_EXTRAS = ["method.attribution.latents=true", "method.attribution.daam.window=both"]
STAGES = ("maps", "sanity", "faithfulness", "all")
JOBS = {  # row -> what it records beside its own map
    "no_manipulation": [ALL_KINDS, *CONTROL_EXTRAS],
    "gradsam_paper": [CHEAP_KINDS],
}


def run_jobs(profile: str, extra: list[str], root_dir: Path, shards: int) -> None:
    """Each job as `shards` processes of one CPU thread (each resumes: done samples are skipped)."""
    for row, overrides in JOBS.items():
        base = [sys.executable, "-m", "bench.run", f"task_name={TASK}", f"row={row}", f"paths.root_dir={root_dir}"]
        base += [*PROFILES[profile], "method.attribution.record=true", *RECORD_TRUTH, *overrides, *extra]
        if shards > 1:
            base.append("cpu_threads=1")
        procs = []
        for index in range(shards):
            cmd = [*base, f"shard.index={index}", f"shard.count={shards}"]
            print(command_text(cmd), flush=True)
            procs.append(subprocess.Popen(cmd, cwd=REPO_ROOT, env=os.environ.copy()))
        codes = [p.wait() for p in procs]
        if any(codes):
            exit_with(f"the {row} job failed (exit codes {codes}); see its message above.", max(max(codes), 1))


def command_text(cmd: list[str], width: int = 100) -> str:
    """'+ cmd' as a shell would take it, continued over lines of at most `width` columns (a longer word stays whole)."""
    lines, line = [], "+"
    for word in map(shlex.quote, cmd):
        if len(line) + 1 + len(word) > width - 2 and line.strip("+ "):
            lines.append(line + " \\")
            line = "   "
        line += " " + word
    return "\n".join([*lines, line])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="offline", choices=sorted(PROFILES))
    parser.add_argument("--root-dir", type=Path, default=REPO_ROOT, help="outputs/ and results/ go under it")
    parser.add_argument("--shards", type=int, default=2, help="processes per job (default 2: one per core here)")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the tables from recorded maps")
    parser.add_argument("--stage", default="all", choices=STAGES, help="which stage to run (default: every one)")
    faithfulness.add_arguments(parser)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job")
    args = parser.parse_intermixed_args(argv)
    check_arguments(args)
    root = args.root_dir.resolve()
    if args.stage == "sanity" and not args.report_only:
        maps_samples(root)  # its refusal before the stage's imports
    # Here, not at the top: the sanity stage and the study's report import scipy and torchmetrics (seconds).
    from bench.attribution import sanity
    from bench.attribution.report import write_study

    if args.stage in ("sanity", "faithfulness"):  # alone: its own tables and page; the study's page gains them
        (sanity if args.stage == "sanity" else faithfulness).run_stage(args, root)  # with all or --report-only
        return
    start = time.monotonic()
    if not args.report_only:
        run_jobs(args.profile, args.overrides, root, args.shards)
    if args.stage == "all":
        sanity.run_stage(args, root)
        faithfulness.run_stage(args, root)
    jobs_s = time.monotonic() - start
    try:
        paths = write_study(root / "results" / TASK, root)
    except (FileNotFoundError, ResultsError) as exc:
        exit_with(str(exc))
    except StorageError as exc:  # a damaged maps.npz or truth.npz, named: the jobs' rerun redoes that sample
        exit_with(f"{exc} (the study: `python -m bench.attribution` without --report-only reruns its jobs)", 1)
    print(f"\njobs: {jobs_s:.0f} s; report: {time.monotonic() - start - jobs_s:.0f} s\n")
    print(paths["terminal"])


# Overrides the study sets itself: where its rows and tables go (task_name=attribution under --root-dir).
OWN_KEYS = ("task_name", "paths.root_dir", "paths.output_dir", "paths.results_dir", "shard.index", "shard.count")


def check_arguments(args: argparse.Namespace) -> None:
    """One line (status 2) for a shard count below 1, a --root-dir that is not a folder, or an override of what
    the study sets itself (it writes task_name=attribution under --root-dir, nowhere else)."""
    if args.shards < 1:
        exit_with(f"--shards {args.shards}: expected an integer >= 1 (processes per job). Fix: e.g. --shards 2.")
    if args.stage == "sanity" and args.overrides:
        exit_with(
            f"{args.overrides[0]}: --stage sanity takes no override (it recomputes the maps stage's runs as they "
            "ran). Fix: leave it out, or pass it to --stage maps."
        )
    if args.root_dir.exists() and not args.root_dir.is_dir():
        exit_with(f"--root-dir {args.root_dir} is not a folder. Fix: give the folder outputs/ and results/ go under.")
    for override in args.overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in OWN_KEYS:
            exit_with(
                f"{override}: the study sets {key} itself (its rows and tables go to task {TASK} under --root-dir). "
                "Fix: leave it out; to write elsewhere, pass --root-dir."
            )


if __name__ == "__main__":
    main()
