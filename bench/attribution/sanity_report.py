"""The sanity stage's tables, figures and report sections, rebuilt from its per-sample rows (samples_sanity.csv,
written by bench/attribution/sanity.py) and its record (sanity.json); `write_sanity` writes them, `sanity_sections`
reads them back as the study page's sections (bench/attribution/report.py write_study).

    sanity.csv                      mean, N and bootstrap 95% interval of Spearman (with the unrandomised map), AUROC,
                                    AP, pointing game and IoU at the true area per check x stage x kind x layer set x
                                    scoring step, chance lines beside (bench.reporting.tables.summarize)
    sanity.md                       the stage's sections alone
    figures/sanity_cascade.png      Spearman and AUROC against the cascade stage, one line per kind and layer set
    figures/sanity_text.png         AUROC of the subject word, the scene word and a shuffled prompt's subject word
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bench.records import atomic_write_text, read_csv, write_csv  # noqa: E402
from bench.reporting.figures import save_figure  # noqa: E402
from bench.reporting.report import COLLAPSED, SUMMARY, Report, Section, render_markdown  # noqa: E402
from bench.reporting.tables import summarize  # noqa: E402
from bench.reporting.views import interval_view, mean_interval  # noqa: E402
from bench.truth.scores import METRICS  # noqa: E402

SAMPLES_FILE = "samples_sanity.csv"  # per (sample, check, stage, kind, layer set, scoring step): the metrics
PLAN_FILE = "sanity.json"  # the plan, the samples, the stages, the wall time and the recompute check
TABLE_FILE = "sanity.csv"  # the summary of SAMPLES_FILE
MD_FILE = "sanity.md"
FIGURES = ("sanity_cascade.png", "sanity_text.png")
NONE = "none"  # the unrandomised model (the cascade's stage 0)
CROSS = "attn2 projections"  # the cross-attention-only stage
SCENE_WORD, SHUFFLED = "scene word", "shuffled prompt"  # the text checks
NUMBER = ".3f"  # 'mean [lo, hi]' with three decimals, as the study's cells
KEYS = ["check", "order", "stage", "kind", "layer_set", "index", "timestep"]
SANITY_METRICS = ["spearman", *METRICS]
CHANCE = ("chance:uniform", "chance:centre")
KIND_COLOURS = {"gradsam": "tab:blue", "attention_only": "tab:orange", "daam": "tab:green", "noise_diff": "tab:red"}


def sanity_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The summary of every (check, stage, kind, layer set, scoring step): bench.reporting.tables.summarize's
    columns (<metric>_mean, _mean_lo, _mean_hi, _n), intervals resampling reference images, seeded per cell. An
    empty truth's metrics are NaN (left out of their mean and N); its Spearman still counts. Rows are put in one
    order first (a cell's seed includes its mean, whose last bit depends on the summation order), so the table is
    the same whatever order the rows came in."""
    ordered = rows.sort_values(["order", "check", "stage", "kind", "layer_set", "index", "sample_key"], kind="stable")
    return summarize(ordered, KEYS, table="sanity", metrics=SANITY_METRICS, stats=("mean",), sort=False)


def series_keys(table: pd.DataFrame) -> list[tuple[str, str]]:
    """The (kind, layer set) pairs of the recomputed maps, kinds in KIND_COLOURS order."""
    part = table[table["check"] == "cascade"]
    pairs = set(zip(part["kind"], part["layer_set"], strict=True))
    return sorted(pairs, key=lambda p: (list(KIND_COLOURS).index(p[0]) if p[0] in KIND_COLOURS else 9, p[1]))


def stage_pivot(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """kind, layer set, step, N (the values behind stage none's mean), then `metric`'s mean at each model stage
    (the cascade in order, then the cross-attention stage); for AUROC the chance lines follow, their model-free
    value repeated in every column."""
    models = table[table["check"].isin(["cascade", "cross_attention"])]
    stages = list(dict.fromkeys(models.sort_values("order", kind="stable")["stage"]))
    out = []
    for (kind, layer_set, index, timestep), part in models.groupby(["kind", "layer_set", "index", "timestep"]):
        cells = dict(zip(part["stage"], part[f"{metric}_mean"], strict=True))
        n = part[part["stage"] == NONE][f"{metric}_n"]
        row = {"kind": kind, "layer set": layer_set, "step": f"{index} (t={timestep})"}
        out.append(row | {"N": int(n.iloc[0]) if len(n) else 0} | {s: format_value(cells.get(s)) for s in stages})
    order = {k: i for i, k in enumerate(series_keys(table))}
    frame = pd.DataFrame(out)
    frame["_o"] = [order.get((k, s), len(order)) for k, s in zip(frame["kind"], frame["layer set"], strict=True)]
    frame = frame.sort_values(["_o", "step"], kind="stable").drop(columns="_o")
    if metric == "spearman":
        return frame.reset_index(drop=True)
    chance = []
    for (kind, index, timestep), part in table[table["kind"].isin(CHANCE)].groupby(["kind", "index", "timestep"]):
        row = {"kind": kind, "layer set": "-", "step": f"{index} (t={timestep})", "N": int(part[f"{metric}_n"].iloc[0])}
        chance.append(row | dict.fromkeys(stages, format_value(part[f"{metric}_mean"].iloc[0])))
    return pd.concat([frame, pd.DataFrame(chance)], ignore_index=True)


def format_value(value) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.2f}"


def text_view(table: pd.DataFrame) -> pd.DataFrame:
    """Per kind, layer set and step: AUROC of the subject word (stage none), the scene word and a shuffled prompt's
    subject word, and the latter two's Spearman with the subject's map, each 'mean [lo, hi]', with N (samples; a
    metric's mean leaves out its NaN values: an empty truth's AUROC, a constant map's Spearman)."""
    subject = table[(table["stage"] == NONE)].set_index(["kind", "layer_set", "index", "timestep"])
    out = []
    for key, row in subject.iterrows():
        entry = {"kind": key[0], "layer set": key[1], "step": f"{key[2]} (t={key[3]})", "N": str(int(row["N"]))}
        entry["AUROC: subject"] = mean_interval(row, "auroc", NUMBER)
        for stage in (SCENE_WORD, SHUFFLED):
            other = table[(table["stage"] == stage) & (table["kind"] == key[0]) & (table["layer_set"] == key[1])]
            other = other[other["index"] == key[2]]
            found = not other.empty
            entry[f"N: {stage}"] = str(int(other.iloc[0]["N"])) if found else "0"
            entry[f"AUROC: {stage}"] = mean_interval(other.iloc[0], "auroc", NUMBER) if found else ""
            entry[f"Spearman: {stage}"] = mean_interval(other.iloc[0], "spearman", NUMBER) if found else ""
        out.append(entry)
    for _, row in table[table["kind"].isin(CHANCE)].iterrows():
        out.append({"kind": row["kind"], "layer set": "-", "step": f"{row['index']} (t={row['timestep']})"})
        out[-1] |= {"N": str(int(row["N"])), "AUROC: subject": mean_interval(row, "auroc", NUMBER)}
    return pd.DataFrame(out).fillna("")


def long_view(table: pd.DataFrame) -> pd.DataFrame:
    """Every row of sanity.csv with its intervals."""
    return interval_view(
        table, ["check", "stage", "kind", "layer_set", "index", "timestep"], "N", SANITY_METRICS, NUMBER
    )


def cascade_figure(table: pd.DataFrame, folder: Path) -> Path:
    """Spearman (left) and AUROC (right) against the cascade stage, one line per (kind, layer set) and step; the
    cross-attention stage as a lone marker after a gap; AUROC's chance lines dashed."""
    models = table[table["check"].isin(["cascade", "cross_attention"])]
    names = list(dict.fromkeys(models.sort_values("order", kind="stable")["stage"]))
    positions = {name: i + (1 if name == CROSS else 0) for i, name in enumerate(names)}
    sets = sorted({layer_set for _, layer_set in series_keys(table)})
    styles = {layer_set: ["-", "--", ":", "-."][i % 4] for i, layer_set in enumerate(sets)}
    markers = {layer_set: "os^vDxP*"[i % 8] for i, layer_set in enumerate(sets)}
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5))
    for kind, layer_set in series_keys(table):
        for index, rows in models[(models["kind"] == kind) & (models["layer_set"] == layer_set)].groupby("index"):
            cascade = rows[rows["check"] == "cascade"]
            label = f"{kind} {layer_set}" + (f" k={index}" if models["index"].nunique() > 1 else "")
            for ax, metric in zip(axes, ("spearman", "auroc"), strict=True):
                x = [positions[s] for s in cascade["stage"]]
                colour, style, marker = KIND_COLOURS.get(kind, "black"), styles[layer_set], markers[layer_set]
                ax.plot(x, cascade[f"{metric}_mean"], color=colour, linestyle=style, marker=marker, ms=3, label=label)
                cross = rows[rows["check"] == "cross_attention"]
                ax.plot([positions[CROSS]] * len(cross), cross[f"{metric}_mean"], color=colour, marker="X", ms=7)
    for kind, style in zip(CHANCE, (":", "--"), strict=True):
        values = table[table["kind"] == kind]["auroc_mean"]
        if len(values):
            axes[1].axhline(float(values.mean()), color="grey", linestyle=style, label=kind)
    for ax, title in zip(axes, ("Spearman with the unrandomised map", "AUROC against the subject truth"), strict=True):
        ax.set_xticks(list(positions.values()), list(positions), rotation=50, ha="right", fontsize=7)
        ax.set(title=title, xlabel="cumulative re-initialisation, output side first (X: attn2 projections only)")
    axes[0].axhline(0.0, color="grey", linewidth=0.5)
    axes[1].set_ylim(0.3, 1.0)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, ncol=6, loc="lower center")
    fig.tight_layout(rect=(0, 0.03 * (len(labels) // 6 + 1), 1, 1))
    return save_figure(fig, folder / FIGURES[0], dpi=100)


def text_figure(table: pd.DataFrame, folder: Path) -> Path:
    """AUROC of the subject word, the scene word and a shuffled prompt's subject word, per (kind, layer set)."""
    pairs = series_keys(table)
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(pairs) + 2), 4.5))
    for offset, (stage, marker) in enumerate(((NONE, "o"), (SCENE_WORD, "^"), (SHUFFLED, "v"))):
        part = table[table["stage"] == stage].groupby(["kind", "layer_set"])["auroc_mean"].mean()
        xs = [i + 0.2 * (offset - 1) for i, p in enumerate(pairs) if p in part.index]
        ys = [part[p] for p in pairs if p in part.index]
        ax.plot(xs, ys, linestyle="none", marker=marker, label="subject word" if stage == NONE else stage)
    for kind, style in zip(CHANCE, (":", "--"), strict=True):
        values = table[table["kind"] == kind]["auroc_mean"]
        if len(values):
            ax.axhline(float(values.mean()), color="grey", linestyle=style, label=kind)
    ax.set_xticks(range(len(pairs)), [f"{k} {s}" for k, s in pairs], rotation=60, ha="right", fontsize=7)
    ax.set(ylabel="AUROC against the subject truth", ylim=(0.2, 1.0), title="Whose word? (unrandomised model)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, folder / FIGURES[1], dpi=100)


def write_sanity(folder: Path) -> dict[str, Path]:
    """The stage's summary (sanity.csv), its two figures and sanity.md under `folder` (results/attribution), from
    samples_sanity.csv and sanity.json; a one-line error naming the fix when the stage has not written them."""
    missing = [name for name in (SAMPLES_FILE, PLAN_FILE) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder / missing[0]} does not exist: the sanity stage has not run there. Run it: "
            "python -m bench.attribution --stage sanity"
        )
    table = sanity_table(read_csv(folder / SAMPLES_FILE))
    paths = {"csv": folder / TABLE_FILE, "md": folder / MD_FILE}
    write_csv(table, paths["csv"])
    paths |= {"cascade": cascade_figure(table, folder / "figures"), "text": text_figure(table, folder / "figures")}
    report = Report("Sanity checks (attribution)", "Model and text randomisation", tuple(sanity_sections(folder)))
    atomic_write_text(paths["md"], render_markdown(report))
    return paths


def sanity_sections(folder: Path) -> list[Section]:
    """The stage's report sections from its tables in `folder` (results/attribution; [] until the stage has written
    sanity.csv and sanity.json): cascade Spearman and AUROC by stage, text randomisation, the full table (collapsed)
    and the figures. Reads only; `write_sanity` writes the tables."""
    if not (folder / TABLE_FILE).is_file() or not (folder / PLAN_FILE).is_file():
        return []
    table = read_csv(folder / TABLE_FILE)
    record = json.loads((folder / PLAN_FILE).read_text())
    figures = tuple(p for p in (folder / "figures" / name for name in FIGURES) if p.exists())
    notes = tuple(sanity_notes(record, table))
    return [
        Section(
            "Sanity: cascading model randomisation, Spearman with the unrandomised map",
            stage_pivot(table, "spearman"),
            notes,
            place=SUMMARY,
        ),
        Section("Sanity: cascading model randomisation, AUROC", stage_pivot(table, "auroc"), place=SUMMARY),
        Section("Sanity: text randomisation (whose word?)", text_view(table), text_notes(record), place=SUMMARY),
        Section("Sanity: every check with its intervals (sanity.csv)", long_view(table), place=COLLAPSED),
        Section("Sanity figures", figures=figures),
    ]


def sanity_notes(record: dict, table: pd.DataFrame) -> list[str]:
    """How to read the cascade tables, and what ran: samples, steps, stages, cost, the recompute check."""
    plan, check = record["plan"], record["recompute_check"]
    stages = [s["name"] for s in record["stages"] if s["check"] == "cascade"]
    load = record["load_average"]
    return [
        "Cascading model randomisation (Adebayo et al. 2018; Quantus' MPRT): a copy of the UNet is re-initialised "
        f"block by block from the output side, cumulatively ({' -> '.join(stages)}), each module by its own "
        "reset_parameters seeded by the stage's name; separately, only every attn2's to_q/to_k/to_v/to_out "
        f"({CROSS}). Every map is recomputed at the control chain's recorded inputs (z_t, t, prompt).",
        "Read: a map that depends on the model falls towards Spearman 0 and its AUROC towards the chance lines as "
        "the blocks that make it are randomised. A forward-only map (attention, DAAM) cannot change before the "
        "cascade reaches the blocks that compute it (the latents are fixed); a gradient map (Grad-SAM) and the "
        "noise difference depend on every block after the layer. A map whose AUROC stays above the centre prior "
        "once its model is random reads a spatial prior, not the model.",
        f"Samples: {len(record['samples'])} control samples (no_manipulation; one prompt per reference image first: "
        f"{len(set(s.split('/')[0] + '/' + s.split('/')[1] for s in record['samples']))} reference images), scoring "
        f"steps {record['indices']}; Grad-SAM per layer (last, all, res<k>: the general path) on "
        f"{len(record['general_samples'])} of them, every other kind and Grad-SAM's own map (own:last, the tail path) "
        f"on all. Plan {plan}.",
        f"Recomputation check: stage none reproduces {check['identical']} of {check['compared']} recorded maps bit "
        f"for bit; the largest difference is {check['max_relative_difference']:.2g} of a map's maximum (maps are "
        "stored as float16 of map / max: a storage step is at most 9.8e-4 of it; float32 rounding that differs "
        "between processes moves some cells by one step; more than 1e-2 stops the stage).",
        f"Cost: {record['wall_s']:.0f} s wall for {record['maps_computed']} stage maps computed "
        f"({record['maps_reused']} reused), {record['shards']} shard(s) on {record['cpus']} CPUs; load average "
        f"{load['start'][0]:.1f} at the start, {load['end'][0]:.1f} at the end.",
        "Spearman: scipy.stats.spearmanr over the channel-summed map's cells, per sample and scoring step (NaN when a "
        "map is constant: left out of the mean and N). Intervals: percentile bootstrap 95%, 1000 resamples of "
        "reference images, seeded per cell. Truth: the control chain's recorded subject truth (main threshold).",
    ]


def text_notes(record: dict) -> list[str]:
    paired = len(record["partners"])
    return [
        "Text randomisation on the unrandomised model, at each sample's own recorded z_t: the scene word = the "
        "prompt's last content word that is not the subject (toy captions: the scene noun, 'a red ball in a forest' "
        "-> 'forest'); shuffled prompt = the subject word of another sample's prompt (its text and subject columns; "
        "a seeded pairing in which every partner's subject word differs), scored against this sample's truth.",
        f"Shuffled pairs: {paired} of {len(record['samples'])} samples"
        + ("" if paired else " (no pairing exists: one subject word holds more than half the samples)")
        + ". noise_diff has no word: the scene-word check leaves it out; the shuffled check asks |eps(other prompt) - "
        "eps(other scene)|.",
        "Read: a map of another word that still finds the subject (AUROC near the subject word's, high Spearman with "
        "the subject's map) reads image saliency, not the text; near the centre-prior line it reads a prior.",
    ]
