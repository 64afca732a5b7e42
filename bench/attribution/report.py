"""The attribution study's outputs: tables (CSV, Markdown), figures and report.html from recorded maps."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.attribution.study import KEYS, study_rows, summarize, toy_truth  # noqa: E402
from bench.records import atomic_write_text, write_csv  # noqa: E402
from bench.reporting.figures import PNG_METADATA  # noqa: E402
from bench.reporting.html import Report, write_report  # noqa: E402
from bench.truth.scores import METRICS  # noqa: E402

TRUTHS = {  # ablation of the run -> (truth name, what it is)
    "no_manipulation": ("no_manipulation", "subject cells of the final image of the no_manipulation chain"),
    "none": ("method_output", "subject cells of the method's own output (its masks shaped it)"),
}
HEADLINE_SETS = ("own:last", "last", "all", "res16", "res8", "res4", "res64", "res32", "-")


def image_truth(root: Path):
    """truth_of(row) for the toy world: the oracle on the run's own image, at the recorded latent grid."""
    from bench.attribution.study import read_image  # noqa: PLC0415

    def truth_of(row: pd.Series, height: int, width: int) -> np.ndarray | None:
        if row["dataset"] != "toy_world":
            raise SystemExit(
                f"dataset={row['dataset']}: the attribution study has subject truth only for the toy world so far "
                "(a segmentation model for real images is the next issue). The maps are recorded; rerun "
                "`python -m bench.attribution --report-only` once a truth source exists."
            )
        return toy_truth(read_image(root / row["image_path"]), row["prompt"], height, width)

    return truth_of


def write_study(folder: Path, root: Path) -> dict:
    """Everything the study writes under `folder` (results/attribution), from the samples and their maps."""
    samples = pd.read_csv(folder / "samples.csv", keep_default_na=False, na_values=[""])
    rows, masks = [], []
    for ablation, (truth_name, _) in TRUTHS.items():
        part = samples[samples["ablation"] == ablation].assign(label=lambda f: f["label"] + "+" + f["ablation"])
        r, m = study_rows(part, root, image_truth(root), truth_name)
        rows, masks = rows + r, masks + m
    per_sample = pd.DataFrame(rows)
    write_csv(per_sample, folder / "samples_attribution.csv")
    table = summarize(per_sample, KEYS, METRICS, "attribution")
    table = table.sort_values(["truth", "index", "kind", "layer_set"], kind="stable").reset_index(drop=True)
    write_csv(table, folder / "attribution.csv")
    mask_frame = pd.DataFrame(masks)
    mask_table = summarize(
        mask_frame,
        ["truth", "kind", "layer_set", "rule", "index", "timestep"],
        ["mask_iou", "kept_fraction", "channel_corr", "channels_per_kept_cell"],
        "mask_rules",
    )
    write_csv(mask_table, folder / "mask_rules.csv")
    figures = [auroc_by_layer(table, folder / "figures"), auroc_by_step(table, folder / "figures")]
    notes = study_notes(per_sample)
    md = markdown(table, mask_table, notes)
    paths = {"csv": folder / "attribution.csv", "md": folder / "attribution.md", "masks": folder / "mask_rules.csv"}
    atomic_write_text(paths["md"], md)
    atomic_write_text(folder / "mask_rules.md", mask_markdown(mask_table) + "\n")
    links = {p.name: p.name for p in sorted(folder.glob("*.csv"))} | {"attribution.md": "attribution.md"}
    report = Report(
        title="Attribution study: does the score find the subject?",
        subtitle="AUROC, AP, pointing game and IoU at the true area per score kind, layer set and scoring step",
        headline=view(headline(table)),
        headline_notes=notes,
        attribution=(mask_view(mask_table), figures, ["Mask rules: IoU of the thresholded mask with the truth."]),
        csv_links=links,
    )
    paths["report"] = write_report(folder, report)
    paths["figures"] = figures
    return paths


def study_notes(per_sample: pd.DataFrame) -> list[str]:
    n = per_sample.groupby("truth")["sample_key"].nunique().to_dict()
    return [
        *(f"truth={name} ({what}): {n.get(name, 0)} samples" for name, what in TRUTHS.values()),
        "Cells: latent cells at least half covered by the oracle's subject region; a map is summed over channels.",
        "Layer sets: own:<set> = the map that drove the method's mask; last/all/res<k> = sums of the recorded "
        "per-layer maps; layer:<name> = one layer (samples_attribution.csv, figures).",
        "Chance lines: chance:uniform (i.i.d. uniform map) and chance:centre (minus the distance to the centre: "
        "data-free; toy subjects always lie inside the frame).",
        "Intervals: percentile bootstrap 95%, 1000 resamples of reference images, seeded per cell.",
    ]


def headline(table: pd.DataFrame) -> pd.DataFrame:
    keep = table["layer_set"].isin(HEADLINE_SETS)
    return table[keep].reset_index(drop=True)


def interval(row: pd.Series, metric: str) -> str:
    mean, lo, hi = row[f"{metric}_mean"], row[f"{metric}_lo"], row[f"{metric}_hi"]
    if pd.isna(mean):
        return ""
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]" if not pd.isna(lo) else f"{mean:.3f}"


def view(table: pd.DataFrame) -> pd.DataFrame:
    """truth, kind, layer set, step, t, N, then each metric as 'mean [lo, hi]'."""
    out = table[["truth", "kind", "layer_set", "index", "timestep"]].copy()
    out.insert(5, "N", table["auroc_n"])
    for metric in METRICS:
        out[metric] = [interval(r, metric) for _, r in table.iterrows()]
    return out


def mask_view(table: pd.DataFrame) -> pd.DataFrame:
    out = table[["truth", "kind", "layer_set", "rule", "index", "timestep"]].copy()
    out.insert(6, "N", table["mask_iou_n"])
    for metric in ("mask_iou", "kept_fraction", "channel_corr", "channels_per_kept_cell"):
        out[metric] = [interval(r, metric) for _, r in table.iterrows()]
    return out


def md_table(frame: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def markdown(table: pd.DataFrame, mask_table: pd.DataFrame, notes: list[str]) -> str:
    parts = ["# Attribution study (attribution)", ""]
    for truth in table["truth"].unique():
        part = headline(table[table["truth"] == truth])
        parts += [f"## truth = {truth}", "", md_table(view(part)), ""]
    layers = table[table["layer_set"].str.startswith("layer:") & (table["truth"] == "no_manipulation")]
    if not layers.empty:
        parts += ["## Per layer (truth = no_manipulation; execution order)", "", md_table(view(layers)), ""]
    parts += ["## Mask rules", "", mask_markdown(mask_table), ""]
    parts += [f"- {n}" for n in notes]
    return "\n".join(parts) + "\n"


def mask_markdown(mask_table: pd.DataFrame) -> str:
    return md_table(mask_view(mask_table))


def save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata=PNG_METADATA)
    plt.close(fig)
    return path


def chance_lines(ax, part: pd.DataFrame, index) -> None:
    for kind, style in (("chance:uniform", ":"), ("chance:centre", "--")):
        value = part[(part["kind"] == kind) & (part["index"] == index)]["auroc_mean"]
        if len(value):
            ax.axhline(float(value.iloc[0]), color="grey", linestyle=style, label=kind)


def short_name(layer_set: str) -> str:
    """layer:up_blocks.2.attentions.1.transformer_blocks.0.attn2 -> up_blocks.2.a1"""
    return layer_set.removeprefix("layer:").replace(".attentions.", ".a").split(".transformer")[0]


def auroc_by_layer(table: pd.DataFrame, folder: Path) -> Path:
    """AUROC of each single layer (execution order), one line per score kind, one panel per scoring step."""
    part = table[table["truth"] == "no_manipulation"]
    steps = sorted(part["index"].unique())
    fig, axes = plt.subplots(1, max(1, len(steps)), figsize=(5 * max(1, len(steps)), 4), squeeze=False)
    for ax, index in zip(axes[0], steps, strict=False):
        here = part[(part["index"] == index) & part["layer_set"].str.startswith("layer:")]
        for kind, rows in here.groupby("kind", sort=True):
            ax.errorbar(
                range(len(rows)),
                rows["auroc_mean"],
                yerr=[rows["auroc_mean"] - rows["auroc_lo"], rows["auroc_hi"] - rows["auroc_mean"]],
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
    part = table[table["truth"] == "no_manipulation"]
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
