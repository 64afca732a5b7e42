"""The attribution study's outputs: tables (CSV, Markdown), figures and report.html from recorded maps.

The page (bench/attribution/page.py) opens with the verdict (bench/attribution/verdict.py), then the figures, then
every table folded away; each later stage (faithfulness; sanity once merged) adds its sections through
`later_stages`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.attribution.faithfulness import faithfulness_sections  # noqa: E402
from bench.attribution.page import arrange, auroc_overview, terminal_summary  # noqa: E402
from bench.attribution.sanity_report import sanity_sections  # noqa: E402
from bench.attribution.study import KEYS, TruthCells, read_image, study_rows  # noqa: E402
from bench.attribution.verdict import StudyTables, later_tables, verdict_section  # noqa: E402
from bench.metrics import MASK_IOU  # noqa: E402
from bench.records import atomic_write_text, write_csv  # noqa: E402
from bench.reporting.figures import save_figure  # noqa: E402
from bench.reporting.html import write_report  # noqa: E402
from bench.reporting.report import COLLAPSED, Report, Section, markdown_body, render_markdown  # noqa: E402
from bench.reporting.samples_table import read_samples  # noqa: E402
from bench.reporting.tables import summarize  # noqa: E402
from bench.reporting.views import interval_view, markdown_table, mean_interval  # noqa: E402
from bench.truth.base import latent_truth  # noqa: E402
from bench.truth.record import control_row, load_truth  # noqa: E402
from bench.truth.scores import METRICS  # noqa: E402

TRUTHS = {  # truth name -> what it is
    "no_manipulation": "subject cells of the final image of the no_manipulation chain (no mask shaped it)",
    "method_output": "subject cells of the method's own output (its masks shaped it)",
}
CONTROL_LABEL = "no_manipulation"  # the control chain's row label (variant=no_manipulation): its maps
METHOD_LABEL = "gradsam"  # the paper's row label (with ablation none): the method's maps
# (label of the maps' rows, all with ablation none; truth name; whose recorded truth): each pairing of maps with a truth
PAIRS = (
    (CONTROL_LABEL, "no_manipulation", "own"),
    (METHOD_LABEL, "method_output", "own"),
    (METHOD_LABEL, "no_manipulation", "control"),  # the method's maps vs the control chain's truth
)
THRESHOLDS = ("main", "alt")  # the truth mask at the segmenter's threshold, and at truth_record.alt_threshold
HEADLINE_SETS = ("own:last", "last", "all", "res16", "res8", "res4", "res64", "res32", "-")
MASK_METRICS = [MASK_IOU, "kept_fraction", "channel_corr", "channels_per_kept_cell"]  # columns of study.mask_rows
NUMBER = ".3f"  # the study's cells: 'mean [lo, hi]' with three decimals
TITLE = "Attribution study (attribution)"
VERDICT_MD = "verdict.md"  # the verdict's table and sentences alone (bench.readme copies them into the README)
SUBTITLE = (
    "Does the score find the subject? AUROC, AP, pointing game and IoU at the true area per score kind, layer set "
    "and scoring step"
)


def text(value) -> str:
    return value if isinstance(value, str) else ""


def truth_function(samples: pd.DataFrame, root: Path, whose: str, threshold: str):
    """truth_of(row, h, w) from the recorded truth (truth.npz via `truth_path`) of the row (`whose`="own") or
    of its no_manipulation row (`whose`="control", `control_row`); cells >= half subject at the maps' grid.

    `threshold`="alt" takes the mask at truth_record.alt_threshold (`mask_alt`) where one was recorded, else
    the main mask (the oracle's probability is binary: both thresholds give it). A row without a recorded
    truth (maps of an older run) falls back to the toy oracle on its image, on dataset=toy_world only.
    """

    def truth_of(row: pd.Series, height: int, width: int) -> TruthCells | None:
        target = row if whose == "own" else control_row(samples, row)
        if target is None:
            return None  # no successful no_manipulation sample to pair with
        path = text(target.get("truth_path"))
        columns = {"truth_threshold": threshold}
        if not path:
            return fallback_truth(target, root, height, width, columns)
        arrays = load_truth(root / path)
        alt = threshold == "alt" and "mask_alt" in arrays
        mask = arrays["mask_alt"] if alt else arrays["mask"]
        cutoff = target.get("truth_alt_threshold" if alt else "truth_threshold", np.nan)
        columns |= {"truth_cutoff": float(cutoff) if not pd.isna(cutoff) else np.nan}
        columns |= {
            "truth_source": text(target.get("truth_source")),
            "truth_provenance": text(target.get("truth_provenance")),
        }
        reason = text(target.get("truth_nan_reason")) if mask is arrays["mask"] else ""
        if alt and not mask.any():
            reason = f"{columns['truth_source']} finds no subject pixel at probability >= {columns['truth_cutoff']:g}"
        return TruthCells(latent_truth(mask, height, width) >= 0.5, reason, columns)

    return truth_of


def fallback_truth(row: pd.Series, root: Path, height: int, width: int, columns: dict) -> TruthCells:
    """The toy oracle on the run's own image (maps recorded before truth was): dataset=toy_world only."""
    if row["dataset"] != "toy_world":
        raise SystemExit(
            f"dataset={row['dataset']}: sample {row['sample_key']} has no recorded subject truth (no truth_path; "
            "its maps predate truth recording). Rerun the study's jobs (they record truth: truth_record.enabled=true, "
            "truth=<segmenter>, e.g. truth=clipseg) and then `python -m bench.attribution --report-only`."
        )
    from bench.attribution.study import toy_truth  # noqa: PLC0415  (the oracle, for old toy runs only)
    from bench.toy.truth import OracleTruth  # noqa: PLC0415

    cells = toy_truth(read_image(root / row["image_path"]), row["prompt"], height, width)
    columns |= {"truth_cutoff": np.nan, "truth_source": "oracle", "truth_provenance": OracleTruth.provenance}
    return TruthCells(cells, "", columns)


def write_study(folder: Path, root: Path) -> dict:
    """Everything the study writes under `folder` (results/attribution), from the samples and their maps; under
    "terminal" the verdict as `python -m bench.attribution` prints it."""
    per_sample, masks = study_frames(read_samples(folder / "samples.csv"), root)  # validated whole first
    if per_sample.empty:
        raise SystemExit(f"no sample in {folder / 'samples.csv'} has recorded maps and a truth to score them by.")
    write_csv(per_sample, folder / "samples_attribution.csv")
    table = by_threshold(per_sample, KEYS, METRICS, "attribution")
    table = table.sort_values(["truth_threshold", "truth", "label", "index", "kind", "layer_set"], kind="stable")
    table = table.reset_index(drop=True)
    write_csv(table, folder / "attribution.csv")
    mask_table = by_threshold(pd.DataFrame(masks), MASK_KEYS, MASK_METRICS, "mask_rules")
    mask_table = mask_table[mask_table["truth_threshold"] == "main"].reset_index(drop=True)
    write_csv(mask_table, folder / "mask_rules.csv")
    atomic_write_text(folder / "mask_rules.md", markdown_table(mask_view(mask_table)) + "\n")
    return write_page(folder, table, mask_table, study_notes(per_sample))


def write_page(folder: Path, table: pd.DataFrame, mask_table: pd.DataFrame, notes: list[str]) -> dict:
    """attribution.md, report.html and the figures from the study's tables (attribution.csv, mask_rules.csv, as
    written), each later stage's tables in `folder` and the study's notes; the paths, and under "terminal" the
    verdict as the command prints it."""
    tables = study_sections(table, mask_table, notes)
    later = stage_sections(folder, table)  # first: a stage may write the table the verdict reads (sanity.csv)
    verdict = verdict_section(StudyTables.read(folder, table, mask_table))
    figures = study_figures(table, folder / "figures")
    sections = arrange(verdict, Section("Figures", figures=tuple(figures)), tables, later)
    report = Report(TITLE, SUBTITLE, tuple(sections), csv_links=page_links(folder))
    paths = {"report": folder / "report.html", "md": folder / "attribution.md", "csv": folder / "attribution.csv"}
    paths |= {"masks": folder / "mask_rules.csv"}
    paths |= {name.split(".")[0]: folder / name for name in later_tables() if (folder / name).is_file()}
    atomic_write_text(paths["md"], render_markdown(report))
    paths["verdict"] = folder / VERDICT_MD
    atomic_write_text(paths["verdict"], "\n".join(markdown_body(verdict)) + "\n")  # the README's block (make readme)
    write_report(folder, report)
    paths["terminal"] = terminal_summary(verdict, {**paths, "figures": folder / "figures"})
    paths["figures"] = figures
    return paths


MASK_KEYS = ["truth", "kind", "layer_set", "rule", "index", "timestep"]


def study_frames(samples: pd.DataFrame, root: Path) -> tuple[pd.DataFrame, list[dict]]:
    """Per-sample metric rows of every pairing (PAIRS) at both truth thresholds, and the mask-rule rows of each
    chain's maps against its own truth."""
    rows, masks = [], []
    for threshold in THRESHOLDS:
        for label, truth_name, whose in PAIRS:
            part = samples[(samples["label"] == label) & (samples["ablation"] == "none")]
            r, m = study_rows(part, root, truth_function(samples, root, whose, threshold), truth_name)
            rows, masks = rows + r, masks + (m if whose == "own" else [])  # mask rules: each chain's own truths
    return pd.DataFrame(rows), masks


StageSections = Callable[[Path, pd.DataFrame], list[Section]]


def later_stages() -> tuple[StageSections, ...]:
    """Each later stage's report sections, in page order: f(folder, the study's table) -> its sections ([] until
    the stage has written its tables). A stage joins the page by one entry here."""
    return (lambda folder, _table: sanity_sections(folder), faithfulness_sections)


def stage_sections(folder: Path, table: pd.DataFrame) -> list[Section]:
    """Every later stage's sections, in page order (arrange() puts its figures before the tables, its tables folded)."""
    return [section for stage in later_stages() for section in stage(folder, table)]


def page_links(folder: Path) -> dict[str, str]:
    """The page's data files: every CSV, attribution.md, and the task's Table 1 page when bench.aggregate wrote one."""
    links = {p.name: p.name for p in sorted(folder.glob("*.csv"))} | {"attribution.md": "attribution.md"}
    extra = sorted(p.name for p in folder.glob("*.html") if p.name != "report.html")
    return links | {f"{name} (bench.aggregate's page of these rows)": name for name in extra}


def by_threshold(frame: pd.DataFrame, keys: list[str], metrics, table: str) -> pd.DataFrame:
    """`summarize` per truth threshold (each with the same bootstrap seeds), with `truth_threshold` and the
    truth source of each (truth, label) beside the keys."""
    parts = []
    for threshold in THRESHOLDS:
        part = frame[frame["truth_threshold"] == threshold]
        if part.empty:
            continue
        out = summarize(part, keys, table=table, metrics=list(metrics), stats=("mean",), sort=False)
        by = [k for k in ("truth", "label") if k in keys]
        sources = {
            tuple(k): ";".join(sorted(set(g["truth_source"]))) for k, g in part.groupby(by + ["truth_threshold"])
        }
        out.insert(1, "truth_threshold", threshold)
        out.insert(2, "truth_source", [sources[(*k, threshold)] for k in out[by].itertuples(index=False)])
        parts.append(out)
    return pd.concat(parts, ignore_index=True)


def study_notes(per_sample: pd.DataFrame) -> list[str]:
    main = per_sample[per_sample["truth_threshold"] == "main"]
    notes = []
    for (name, label), part in main.groupby(["truth", "label"], sort=False):
        notes.append(f"truth={name} ({TRUTHS[name]}), maps of {label}: {part['sample_key'].nunique()} samples")
    for (source, provenance), _ in per_sample.groupby(["truth_source", "truth_provenance"]):
        notes.append(f"Truth source: {source} ({provenance})")
    notes.append(
        "Cells: latent cells at least half covered by the recorded subject mask (truth.npz of each image); "
        "a map is summed over channels."
    )
    notes.append(threshold_note(per_sample))
    firsts = per_sample.drop_duplicates(["truth_threshold", "truth", "label", "sample_key"])
    empty = firsts[firsts["truth_nan_reason"].fillna("") != ""]
    if empty.empty:
        notes.append("Empty truths: none (every sample's truth has subject and background cells).")
    for (threshold, name), part in empty.groupby(["truth_threshold", "truth"]):
        reasons = "; ".join(sorted(set(part["truth_nan_reason"])))[:300]
        notes.append(
            f"Empty truths (truth={name}, {threshold} threshold): {part['sample_key'].nunique()} samples whose "
            f"metrics are NaN, counted apart (left out of every mean and N): {reasons}"
        )
    notes += [
        "Layer sets: own:<set> = the map that drove the method's mask; last/all/res<k> = sums of the recorded "
        "per-layer maps; layer:<name> = one layer (samples_attribution.csv, figures).",
        "Chance lines: chance:uniform (i.i.d. uniform map) and chance:centre (minus the distance to the centre: "
        "data-free; toy subjects always lie inside the frame).",
        "Intervals: percentile bootstrap 95%, 1000 resamples of reference images, seeded per cell.",
    ]
    return notes


def threshold_note(per_sample: pd.DataFrame) -> str:
    """Which probability cutoffs the main and alt truth masks are, per source."""
    parts = []
    for source, part in per_sample.groupby("truth_source"):
        cut = {t: sorted(set(part[part["truth_threshold"] == t]["truth_cutoff"].dropna())) for t in THRESHOLDS}
        if not cut["alt"] or cut["alt"] == cut["main"]:
            parts.append(
                f"{source}: no second threshold recorded (the oracle's probability is binary): the alt rows "
                "repeat the main ones, the two coincide"
            )
        else:
            main, alt = (", ".join(f"{c:g}" for c in cut[t]) for t in THRESHOLDS)
            parts.append(f"{source}: main = probability >= {main}, alt = probability >= {alt}")
    return "Truth thresholds (truth_threshold = main | alt, so a conclusion that flips with the threshold shows): " + (
        "; ".join(parts)
    )


def headline(table: pd.DataFrame) -> pd.DataFrame:
    keep = table["layer_set"].isin(HEADLINE_SETS)
    return table[keep].reset_index(drop=True)


def view(table: pd.DataFrame) -> pd.DataFrame:
    """truth, maps (label), kind, layer set, step, t, N, then each metric as 'mean [lo, hi]'."""
    keys = ["truth", "label", "kind", "layer_set", "index", "timestep"]
    return interval_view(table, keys, "auroc_n", METRICS, NUMBER)


def mask_view(table: pd.DataFrame) -> pd.DataFrame:
    keys = ["truth", "kind", "layer_set", "rule", "index", "timestep"]
    return interval_view(table, keys, f"{MASK_IOU}_n", MASK_METRICS, NUMBER)


def threshold_view(table: pd.DataFrame) -> pd.DataFrame:
    """The headline AUROC under the main and the alt truth threshold side by side, and their difference."""
    keys = ["truth", "label", "kind", "layer_set", "index", "timestep"]
    main = headline(table[table["truth_threshold"] == "main"]).set_index(keys)
    alt = table[table["truth_threshold"] == "alt"].set_index(keys).reindex(main.index)
    out = main.reset_index()[keys].copy()
    out["truth_source"] = main["truth_source"].to_numpy()
    out["auroc (main)"] = [mean_interval(r, "auroc", NUMBER) for _, r in main.iterrows()]
    out["auroc (alt)"] = [mean_interval(r, "auroc", NUMBER) for _, r in alt.iterrows()]
    out["alt - main"] = [
        "" if pd.isna(d) else f"{d:+.3f}" for d in alt["auroc_mean"].to_numpy() - main["auroc_mean"].to_numpy()
    ]
    return out


def study_sections(table: pd.DataFrame, mask_table: pd.DataFrame, notes: list[str]) -> list[Section]:
    """The study's tables, folded away on the page (attribution.md renders them in the same order): per truth its
    headline table, the truth without mask bias (no_manipulation) first; AUROC under both truth thresholds; per
    layer; the mask rules with the study's notes."""
    sections = []
    main = table[table["truth_threshold"] == "main"]
    for truth in [t for t in TRUTHS if t in set(main["truth"])]:
        part = headline(main[main["truth"] == truth])
        source = ", ".join(sorted(set(part["truth_source"])))
        sections.append(Section(f"truth = {truth} ({TRUTHS[truth]}; source: {source})", view(part), place=COLLAPSED))
    sections.append(Section("AUROC under two truth thresholds (main vs alt)", threshold_view(table), place=COLLAPSED))
    layers = main[main["layer_set"].str.startswith("layer:") & (main["truth"] == "no_manipulation")]
    layers = layers[layers["label"] == CONTROL_LABEL]
    if not layers.empty:
        sections.append(Section("Per layer (truth = no_manipulation; execution order)", view(layers), place=COLLAPSED))
    mask_notes = ("Mask rules: IoU of the thresholded mask with the truth.", *notes)
    return [*sections, Section("Mask rules", mask_view(mask_table), mask_notes, place=COLLAPSED)]


def study_figures(table: pd.DataFrame, folder: Path) -> list[Path]:
    """The overview heatmap, AUROC per scoring step and per single layer (truth = no_manipulation, main threshold)."""
    main = table[table["truth_threshold"] == "main"]
    control = main[(main["truth"] == "no_manipulation") & (main["label"] == CONTROL_LABEL)]
    return [auroc_overview(control, folder), auroc_by_step(main, folder), auroc_by_layer(main, folder)]


def save(fig, path: Path) -> Path:
    return save_figure(fig, path, dpi=100)  # atomic, mathtext off (bench.reporting.figures)


def chance_lines(ax, part: pd.DataFrame, index) -> None:
    for kind, style in (("chance:uniform", ":"), ("chance:centre", "--")):
        value = part[(part["kind"] == kind) & (part["index"] == index)]["auroc_mean"]
        if len(value):
            ax.axhline(float(value.iloc[0]), color="grey", linestyle=style, label=kind)


def auroc_by_layer(table: pd.DataFrame, folder: Path) -> Path:
    """AUROC of each single layer (execution order), one line per score kind, one panel per scoring step."""
    part = table[(table["truth"] == "no_manipulation") & (table["label"] == CONTROL_LABEL)]
    steps = sorted(part["index"].unique())
    fig, axes = plt.subplots(1, max(1, len(steps)), figsize=(5 * max(1, len(steps)), 4), squeeze=False)
    for ax, index in zip(axes[0], steps, strict=False):
        here = part[(part["index"] == index) & part["layer_set"].str.startswith("layer:")]
        for kind, rows in here.groupby("kind", sort=True):
            ax.errorbar(
                range(len(rows)),
                rows["auroc_mean"],
                yerr=[rows["auroc_mean"] - rows["auroc_mean_lo"], rows["auroc_mean_hi"] - rows["auroc_mean"]],
                marker="o",
                capsize=2,
                label=kind,
            )
            names = [
                n.removeprefix("layer:").replace(".attentions.", ".a").split(".transformer")[0]
                for n in rows["layer_set"]
            ]
            ax.set_xticks(range(len(rows)), names, rotation=60, fontsize=7)
        chance_lines(ax, part, index)
        t = int(part[part["index"] == index]["timestep"].iloc[0])
        ax.set(title=f"scoring step {index} (t={t})", ylabel="AUROC", ylim=(0.3, 1.0))
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return save(fig, folder / "auroc_by_layer.png")


def auroc_by_step(table: pd.DataFrame, folder: Path) -> Path:
    """AUROC against the scoring timestep: one line per (score kind, layer set), beside the chance lines."""
    part = table[(table["truth"] == "no_manipulation") & (table["label"] == CONTROL_LABEL)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (kind, layer_set), rows in part.groupby(["kind", "layer_set"], sort=True):
        if kind.startswith("chance") or layer_set not in ("last", "all", "res8", "-", "own:last"):
            continue
        ax.plot(rows["timestep"], rows["auroc_mean"], marker="o", label=f"{kind} {layer_set}")
    for kind, style in (("chance:uniform", ":"), ("chance:centre", "--")):
        rows = part[part["kind"] == kind]
        ax.plot(rows["timestep"], rows["auroc_mean"], color="grey", linestyle=style, label=kind)
    ax.invert_xaxis()
    ax.set(xlabel="timestep of the scoring UNet call (sampling runs right to left)", ylabel="AUROC", ylim=(0.3, 1.0))
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return save(fig, folder / "auroc_by_step.png")
