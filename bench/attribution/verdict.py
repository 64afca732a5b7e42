"""The attribution study's verdict, generated from its tables: one compact table and one sentence per question.

    table       for each map kind its best layer set (the highest mean AUROC over the scoring steps among last, all,
                res<k>), the paper's layer (gradsam last), and the centre-prior and uniform chance lines: AUROC mean
                [95% interval] at each scoring step, and DAAM's whole-chain map where it was recorded
    sentences   which layers, how early, does the gradient help, does the paper's mask rule help; once the sanity
                stage's table exists, does the map depend on the model and on the text; once the faithfulness
                stage's tables exist, does a better map make a better image

The rows are the maps without mask bias: the no_manipulation chain's maps against its own final image's subject
(truth = no_manipulation, main threshold). Two estimates are compared by their 95% intervals: "above"/"below" when
the intervals do not overlap, "level" when they do, "unclear" when one is missing (fewer than 2 reference images, or
every truth empty). Unpaired intervals are conservative: a difference they do not separate may still be real.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.attribution import faithfulness as faith
from bench.records import read_csv
from bench.reporting.report import HEADLINE, Section
from bench.reporting.views import interval_cell

CONTROL_LABEL = faith.CONTROL_LABEL  # the no_manipulation chain's row label (= report.CONTROL_LABEL; tested)
PAPER = ("gradsam", "last")  # the paper's map: Grad-SAM on the last decoder cross-attention layer
CENTRE, UNIFORM = "chance:centre", "chance:uniform"
MAP_KINDS = ("gradsam", "attention_only", "daam", "noise_diff")  # the verdict's row order; other kinds follow
PAPER_RULE = "per_channel"  # the paper's mask rule (bench.attribution.study.MASK_RULES)
# The sanity stage's table (sanity.csv: bench/attribution/sanity_report.py) names its stages so:
SANITY_TABLE, NONE, SCENE_WORD, SHUFFLED = "sanity.csv", "none", "scene word", "shuffled prompt"
NUMBER = ".3f"
SIDES = {"above": "above", "below": "below", "level": "level with", "unclear": "not separable (no interval) from"}


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% interval (NaN where missing)."""

    mean: float = math.nan
    lo: float = math.nan
    hi: float = math.nan

    def text(self, spec: str = NUMBER) -> str:
        """'mean [lo, hi]', 'mean' without an interval, 'n/a' without a mean."""
        return interval_cell(self.mean, self.lo, self.hi, spec=spec) or "n/a"


def estimate(row: pd.Series | None, metric: str) -> Estimate:
    """A summary row's `metric` (bench.reporting.tables.summarize's <m>_mean, <m>_mean_lo, <m>_mean_hi)."""
    if row is None:
        return Estimate()
    values = (row.get(f"{metric}_mean"), row.get(f"{metric}_mean_lo"), row.get(f"{metric}_mean_hi"))
    return Estimate(*(math.nan if v is None or pd.isna(v) else float(v) for v in values))


def relation(a: Estimate, b: Estimate) -> str:
    """'above' (a's interval lies wholly above b's), 'below', 'level' (they overlap) or 'unclear' (one is missing)."""
    if any(math.isnan(v) for v in (a.lo, a.hi, b.lo, b.hi)):
        return "unclear"
    return "above" if a.lo > b.hi else "below" if a.hi < b.lo else "level"


@dataclass(frozen=True)
class Step:
    """A column of the verdict: a scoring step, or DAAM's whole-chain map (the index only daam records)."""

    index: int
    timestep: int
    whole_chain: bool = False

    @property
    def header(self) -> str:
        return "whole chain" if self.whole_chain else f"t = {self.timestep}"


@dataclass(frozen=True)
class StudyTables:
    """The tables the verdict reads: the study's (attribution.csv, mask_rules.csv) and each later stage's, None
    where that stage has not written them."""

    table: pd.DataFrame
    masks: pd.DataFrame | None = None
    sanity: pd.DataFrame | None = None
    faith_auc: pd.DataFrame | None = None
    faith_points: pd.DataFrame | None = None

    @classmethod
    def read(cls, folder: Path, table: pd.DataFrame, masks: pd.DataFrame | None) -> StudyTables:
        """The study's tables as given; the later stages' from `folder` where they exist."""
        found = {name: read_csv(folder / name) if (folder / name).is_file() else None for name in later_tables()}
        sanity, auc, points = found.values()
        return cls(table, masks, sanity, auc, points)

    @property
    def control(self) -> pd.DataFrame:
        """The maps without mask bias: the no_manipulation chain's, against its own truth, main threshold."""
        keep = (self.table["truth"] == "no_manipulation") & (self.table["label"] == CONTROL_LABEL)
        if "truth_threshold" in self.table:
            keep &= self.table["truth_threshold"] == "main"
        return self.table[keep]


def later_tables() -> tuple[str, str, str]:
    """The later stages' tables the verdict reads: the sanity stage's, the faithfulness stage's two."""
    return SANITY_TABLE, faith.FILES["auc"], faith.FILES["points"]


def steps_of(control: pd.DataFrame) -> list[Step]:
    """The scoring steps in sampling order, then any index where only DAAM has a map (its whole-chain window)."""
    steps = []
    for (index, timestep), part in control.groupby(["index", "timestep"], sort=True):
        kinds = set(part["kind"]) - {CENTRE, UNIFORM}
        steps.append(Step(int(index), int(timestep), kinds == {"daam"}))
    return sorted(steps, key=lambda s: (s.whole_chain, s.index))


def scoring(steps: list[Step]) -> list[Step]:
    return [s for s in steps if not s.whole_chain]


def row_of(frame: pd.DataFrame, kind: str, layer_set: str, index: int) -> pd.Series | None:
    rows = frame[(frame["kind"] == kind) & (frame["layer_set"] == layer_set) & (frame["index"] == index)]
    return rows.iloc[0] if len(rows) else None


def auroc(control: pd.DataFrame, kind: str, layer_set: str, step: Step) -> Estimate:
    return estimate(row_of(control, kind, layer_set, step.index), "auroc")


def mean_auroc(control: pd.DataFrame, kind: str, layer_set: str, steps: list[Step]) -> float:
    """The mean AUROC of a map over the scoring steps (NaN where it has none)."""
    values = [auroc(control, kind, layer_set, s).mean for s in scoring(steps)]
    return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan


def is_layer_set(layer_set: str) -> bool:
    """The sets a best layer set is chosen from: last, all, res<k>, or '-' for a layer-free kind (no single layer,
    no own:<set>: that is the method's own map)."""
    return not layer_set.startswith(("layer:", "own:"))


def kind_order(pair: tuple[str, str]) -> tuple:
    """(kind, layer set) in the verdict's kind order, then by name."""
    return (MAP_KINDS.index(pair[0]) if pair[0] in MAP_KINDS else len(MAP_KINDS), *pair)


def kinds_of(control: pd.DataFrame) -> list[str]:
    kinds = set(control["kind"]) - {CENTRE, UNIFORM}
    return [k for k in MAP_KINDS if k in kinds] + sorted(kinds - set(MAP_KINDS))


def best_set(control: pd.DataFrame, kind: str, steps: list[Step]) -> str | None:
    """The kind's layer set with the highest mean AUROC over the scoring steps (ties and all-missing: 'all', then
    the others by name); None when the kind has no layer set."""
    sets = sorted({s for s in control[control["kind"] == kind]["layer_set"] if is_layer_set(s)}, key=set_order)
    if not sets:
        return None
    scores = np.array([mean_auroc(control, kind, s, steps) for s in sets])
    return sets[int(np.nanargmax(scores))] if np.isfinite(scores).any() else sets[0]


def set_order(layer_set: str) -> tuple:
    return (layer_set != "all", layer_set != "last", layer_set)


def map_name(kind: str, layer_set: str) -> str:
    return kind if layer_set == "-" else f"{kind} {layer_set}"


def verdict_maps(control: pd.DataFrame, steps: list[Step]) -> list[tuple[str, str, str]]:
    """(row name, kind, layer set): each kind's best layer set, the paper's layer, then the chance lines."""
    rows = []
    for kind in kinds_of(control):
        best = best_set(control, kind, steps)
        if best is None:
            continue
        paper = (kind, best) == PAPER
        rows.append((f"{map_name(kind, best)} (best{'; the paper' if paper else ''})", kind, best))
        if kind == PAPER[0] and not paper and (control["layer_set"] == PAPER[1]).any():
            rows.append((f"{map_name(*PAPER)} (the paper)", *PAPER))
        if best == "-":
            rows[-1] = (kind, kind, best)
    return rows + [("centre prior (chance)", CENTRE, "-"), ("uniform (chance)", UNIFORM, "-")]


def verdict_view(control: pd.DataFrame, steps: list[Step]) -> pd.DataFrame:
    """The verdict table: map, N (samples with an AUROC, the fewest over its cells), AUROC per column."""
    out = []
    for name, kind, layer_set in verdict_maps(control, steps):
        rows = [row_of(control, kind, layer_set, s.index) for s in steps]
        counts = [int(r["auroc_n"]) for r in rows if r is not None and "auroc_n" in r and pd.notna(r["auroc_n"])]
        cells = {
            s.header: (estimate(r, "auroc").text() if r is not None else "") for s, r in zip(steps, rows, strict=True)
        }
        out.append({"map": name, "N": str(min(counts)) if counts else "0", **cells})
    return pd.DataFrame(out, columns=["map", "N", *(s.header for s in steps)])


def best_overall(control: pd.DataFrame, steps: list[Step]) -> tuple[str, str] | None:
    """The (kind, layer set) with the highest mean AUROC over the scoring steps; None when no map has one."""
    candidates = [(k, best_set(control, k, steps)) for k in kinds_of(control)]
    candidates = [(k, s) for k, s in candidates if s is not None]
    scores = np.array([mean_auroc(control, k, s, steps) for k, s in candidates], dtype=float)
    if not np.isfinite(scores).any():
        return None
    return candidates[int(np.nanargmax(scores))]


def best_single_layer(control: pd.DataFrame, steps: list[Step]) -> tuple[str, str] | None:
    """The (kind, layer:<name>) single layer with the highest mean AUROC over the scoring steps."""
    pairs = control[control["layer_set"].str.startswith("layer:")][["kind", "layer_set"]].drop_duplicates()
    pairs = sorted(pairs.itertuples(index=False, name=None), key=kind_order)  # ties: the first in this order
    scores = np.array([mean_auroc(control, k, s, steps) for k, s in pairs], dtype=float)
    return pairs[int(np.nanargmax(scores))] if len(pairs) and np.isfinite(scores).any() else None


def short_layer(layer_set: str) -> str:
    """'layer:up_blocks.1.attentions.1.transformer_blocks.0.attn2' -> 'up_blocks.1.a1' (the figures' names)."""
    return layer_set.removeprefix("layer:").replace(".attentions.", ".a").split(".transformer")[0]


def layers_sentence(control: pd.DataFrame, steps: list[Step]) -> str:
    """Which layers find the subject: the best map against the paper's layer, and the paper's against the prior."""
    question, best, last = "Which layers find the subject?", best_overall(control, steps), scoring(steps)[-1]
    if best is None:
        return f"{question} Unclear: no map has an AUROC here (no scoring step, or every truth is empty)."
    e_best, e_paper, e_centre = (auroc(control, *m, last) for m in (best, PAPER, (CENTRE, "-")))
    text = f"{question} {map_name(*best)} does best: AUROC {e_best.text()} at t = {last.timestep}"
    if best == PAPER:
        text += f", the paper's own layer, {SIDES[relation(e_best, e_centre)]} the centre prior ({e_centre.text()})."
    elif math.isnan(e_paper.mean):
        text += f" (the paper's layer, {map_name(*PAPER)}, has no AUROC here)."
    else:
        versus = {"above": "clearly above", "level": "level with"}.get(relation(e_best, e_paper), "beside")
        text += (
            f", {versus} the paper's layer ({map_name(*PAPER)}: {e_paper.text()}), which is "
            f"{SIDES[relation(e_paper, e_centre)]} the centre prior ({e_centre.text()})."
        )
    single = best_single_layer(control, steps)
    if single is not None:
        text += f" Best single layer: {short_layer(single[1])} ({single[0]}, {auroc(control, *single, last).text()})."
    return text


def timing_sentence(control: pd.DataFrame, steps: list[Step]) -> str:
    """How early: at which scoring steps the best map's interval clears the centre prior's."""
    question, best, scored = "How early?", best_overall(control, steps), scoring(steps)
    if best is None:
        return f"{question} Unclear: no map has an AUROC here."
    sides = [relation(auroc(control, *best, s), auroc(control, CENTRE, "-", s)) for s in scored]
    if all(side == "unclear" for side in sides):
        return f"{question} Unclear: no intervals to set {map_name(*best)} against the centre prior."
    clear = [s for s, side in zip(scored, sides, strict=True) if side == "above"]
    first = clear[0] if clear else scored[0]
    numbers = (
        f"{map_name(*best)} {auroc(control, *best, first).text()} against the centre prior's "
        f"{auroc(control, CENTRE, '-', first).text()} at t = {first.timestep}"
    )
    if not clear:
        return f"{question} Never: no scoring step of {len(scored)} clears the centre prior ({numbers})."
    when = "already at the first scoring step" if first == scored[0] else f"only from t = {first.timestep}"
    count = f"at {len(clear)} of {len(scored)} scoring steps (t = {', '.join(str(s.timestep) for s in clear)})"
    return f"{question} It clears the centre prior {when}, {count}: {numbers}."


def gradient_sentence(control: pd.DataFrame, steps: list[Step]) -> str | None:
    """Does the gradient help: Grad-SAM against plain attention on the same layers (Grad-SAM's best set they share),
    at every scoring step. None without both kinds."""
    question = "Does the gradient help?"
    shared = set(control[control["kind"] == "gradsam"]["layer_set"]) & set(
        control[control["kind"] == "attention_only"]["layer_set"]
    )
    shared = {s for s in shared if is_layer_set(s)}
    if not shared:
        return None
    layer_set = best_set(control[control["layer_set"].isin(shared)], "gradsam", steps)
    scored = scoring(steps)
    pairs = [(auroc(control, "gradsam", layer_set, s), auroc(control, "attention_only", layer_set, s)) for s in scored]
    g, a = pairs[-1]
    if all(math.isnan(x.mean) for pair in pairs for x in pair):
        return f"{question} Unclear: neither Grad-SAM nor plain attention has an AUROC on {layer_set} here."
    sides = [relation(g, a) for g, a in pairs]
    at = lambda side: ", ".join(str(s.timestep) for s, x in zip(scored, sides, strict=True) if x == side)  # noqa: E731
    if all(side == "unclear" for side in sides):
        answer = "Unclear (no intervals)"
    elif "above" in sides and "below" not in sides:
        answer = "Yes" if set(sides) == {"above"} else f"Only at t = {at('above')}"
    elif "below" in sides and "above" not in sides:
        answer = f"No: plain attention scores higher at t = {at('below')}"
    elif "below" in sides:
        answer = f"Mixed: Grad-SAM higher at t = {at('above')}, attention at t = {at('below')}"
    else:
        answer = "No measurable difference: the intervals overlap at every scoring step"
    return (
        f"{question} {answer}. On the same layers ({layer_set}) Grad-SAM scores {g.text()} and plain attention "
        f"{a.text()} at t = {scored[-1].timestep}."
    )


def mask_rule_sentence(masks: pd.DataFrame | None, control: pd.DataFrame, steps: list[Step]) -> str | None:
    """Does the paper's mask rule help: its IoU with the truth against the best other rule's, on the best-localising
    Grad-SAM layer set the mask table holds, at the first scoring step; and what it keeps of the paper's own map."""
    if masks is None or masks.empty:
        return None
    part = masks[masks["truth"] == "no_manipulation"]
    if "truth_threshold" in part:
        part = part[part["truth_threshold"] == "main"]
    sets = sorted({s for s in part["layer_set"] if not s.startswith("own:")}, key=set_order)
    if part.empty or not sets:
        return None
    scores = np.array([mean_auroc(control, "gradsam", s, steps) for s in sets], dtype=float)
    layer_set = sets[int(np.nanargmax(scores))] if np.isfinite(scores).any() else sets[0]
    index = int(part["index"].min())
    here = part[(part["layer_set"] == layer_set) & (part["index"] == index)].set_index("rule").sort_index()
    if PAPER_RULE not in here.index or len(here) < 2:
        return None
    others = here.drop(index=PAPER_RULE)
    alternative = str(others["mask_iou_mean"].astype(float).idxmax()) if others["mask_iou_mean"].notna().any() else ""
    paper = estimate(here.loc[PAPER_RULE], "mask_iou")
    t = int(here["timestep"].iloc[0])
    kept = lambda row: f"{row['kept_fraction_mean']:.1%}" if pd.notna(row["kept_fraction_mean"]) else "n/a"  # noqa: E731
    if not alternative:
        return f"Does the paper's mask rule help? Unclear: no mask has an IoU here (t = {t})."
    best = estimate(here.loc[alternative], "mask_iou")
    answer = {"below": "No", "level": "Not measurably", "above": "Yes"}.get(relation(paper, best), "Unclear")
    text = (
        f"Does the paper's mask rule help? {answer}: on gradsam {layer_set} at t = {t} the paper's rule "
        f"({PAPER_RULE}, its 3x3 dilation x3) keeps {kept(here.loc[PAPER_RULE])} of the latent cells for IoU "
        f"{paper.text()} with the truth; the best other rule, '{alternative}', keeps {kept(here.loc[alternative])} "
        f"for IoU {best.text()}"
    )
    own = part[(part["layer_set"] == "own:last") & (part["index"] == index) & (part["rule"] == PAPER_RULE)]
    if len(own):
        text += (
            f". On the paper's own map it keeps {kept(own.iloc[0])} (IoU {estimate(own.iloc[0], 'mask_iou').text()})"
        )
    return text + "."


def sanity_map(sanity: pd.DataFrame, control: pd.DataFrame, steps: list[Step]) -> tuple[str, str] | None:
    """The map the sanity sentences judge: of the layer sets the sanity stage recomputed on the most samples (it
    may run the costly per-layer Grad-SAM on a few only), the study's best by AUROC."""
    unrandomised = sanity[(sanity["check"] == "cascade") & (sanity["stage"] == NONE)]
    counts = unrandomised.groupby(["kind", "layer_set"])["N"].max()
    sets = (
        counts[[is_layer_set(s) for _, s in counts.index]] if any(is_layer_set(s) for _, s in counts.index) else counts
    )
    pairs = sorted(sets[sets == sets.max()].index, key=kind_order) if len(sets) else []
    if not pairs:
        return None
    scores = np.array([mean_auroc(control, k, s, steps) for k, s in pairs], dtype=float)
    return pairs[int(np.nanargmax(scores))] if np.isfinite(scores).any() else pairs[0]


def sanity_rows(sanity: pd.DataFrame, kind: str, layer_set: str) -> tuple[pd.DataFrame, pd.Series | None]:
    """The map's rows at the sanity stage's last scoring step, and the centre prior's row there."""
    index = sanity[(sanity["kind"] == kind) & (sanity["layer_set"] == layer_set)]["index"].max()
    rows = sanity[(sanity["kind"] == kind) & (sanity["layer_set"] == layer_set) & (sanity["index"] == index)]
    return rows.sort_values("order", kind="stable"), row_of(sanity, CENTRE, "-", index)


def model_sentence(sanity: pd.DataFrame, kind: str, layer_set: str) -> str | None:
    """Does the map depend on the model: its AUROC and Spearman once every block is re-initialised (the cascade's
    last stage), and with only the cross-attention projections re-initialised."""
    rows, centre_row = sanity_rows(sanity, kind, layer_set)
    cascade, cross = rows[rows["check"] == "cascade"], rows[rows["check"] == "cross_attention"]
    if cascade.empty or cascade["stage"].iloc[-1] == NONE:
        return None
    final, centre = cascade.iloc[-1], estimate(centre_row, "auroc")
    side = relation(estimate(final, "auroc"), centre)
    answer = {"above": "No", "level": "Yes", "below": "Yes"}.get(side, "Unclear")
    why = {
        "above": "it still clears the centre prior: it reads the input or a spatial prior, not the model",
        "level": "its AUROC falls to the centre prior's line",
        "below": "its AUROC falls below the centre prior's line",
    }.get(side, "no intervals to set it against the centre prior")
    text = (
        f"Does the map depend on the model? {answer} ({map_name(kind, layer_set)}, t = {int(final['timestep'])}, "
        f"N = {int(final['N'])}): with every block re-initialised (cascade stage '{final['stage']}') {why}: AUROC "
        f"{estimate(final, 'auroc').text()} against the prior's {centre.text()}, Spearman with the original map "
        f"{estimate(final, 'spearman').text()}"
    )
    if len(cross):
        cross_auroc = estimate(cross.iloc[0], "auroc").text()
        text += f"; with only the cross-attention projections re-initialised, AUROC {cross_auroc}"
    return text + "."


def text_sentence(sanity: pd.DataFrame, kind: str, layer_set: str) -> str | None:
    """Does the map depend on the text: the map of another word (the prompt's scene word, a shuffled prompt's subject
    word) against the subject word's, both scored against the subject's truth."""
    rows, centre_row = sanity_rows(sanity, kind, layer_set)
    subject = rows[rows["stage"] == NONE]
    others = [(name, rows[rows["stage"] == name]) for name in (SCENE_WORD, SHUFFLED)]
    others = [(name, part.iloc[0]) for name, part in others if len(part)]
    if subject.empty or not others:
        return None
    own = estimate(subject.iloc[0], "auroc")
    sides = [relation(estimate(row, "auroc"), own) for _, row in others]
    if "unclear" in sides:
        answer = "Unclear (no intervals)"
    else:
        below = sum(side == "below" for side in sides)
        answer = "Yes" if below == len(sides) else "No" if below == 0 else "Partly"
    words = " and ".join(f"the {name}'s map {estimate(row, 'auroc').text()}" for name, row in others)
    t = int(subject.iloc[0]["timestep"])
    return (
        f"Does the map depend on the text? {answer} ({map_name(kind, layer_set)}, t = {t}): "
        f"against the subject's truth {words}, beside the subject word's {own.text()} and the centre prior's "
        f"{estimate(centre_row, 'auroc').text()}."
    )


def sanity_sentences(sanity: pd.DataFrame | None, control: pd.DataFrame, steps: list[Step]) -> list[str]:
    """The sanity stage's two answers, from its table (none before the stage has run)."""
    if sanity is None or sanity.empty:
        return []
    chosen = sanity_map(sanity, control, steps)
    if chosen is None:
        return []
    return [s for s in (model_sentence(sanity, *chosen), text_sentence(sanity, *chosen)) if s]


def faithfulness_sentence(tables: StudyTables) -> str | None:
    """Does a better map make a better image: the faithfulness stage's verdict, from its tables (bench/attribution/
    faithfulness.py: the best-localising map's subject AUC against the centre prior's, paired)."""
    auc, points = tables.faith_auc, tables.faith_points
    if auc is None or points is None or faith.CENTRE not in set(auc["kind"]):
        return None
    question, maps = "Does a better map make a better image?", auc[~auc["kind"].isin(faith.CHANCE_KINDS)]
    full = points[points["keep_fraction"] == 1.0][f"{faith.SUBJECT}_mean"]
    if maps.empty or full.empty or not full.iloc[0] > 0:
        return f"{question} Unclear: no map to judge, or no subject even when every cell is kept (k = 1)."
    best, how = faith.best_localising(maps, tables.table)
    centre = auc[auc["kind"] == faith.CENTRE].iloc[0]
    side = faith.side(best, "auc_subject_vs_centre")
    answer = {"above": "Yes, for the subject", "level with": "Not shown", "below": "No"}.get(side, "Unclear")
    level = f"{faith.SUBJECT_LEVEL:.0%}"
    text = (
        f"{question} {answer}: {faith.map_name(best['kind'], best['layer_set'])} ({how}) keeps {level} of the subjects "
        f"from k = {faith.number(best['k_subject_mean'])} of the latent cells, the centre prior from k = "
        f"{faith.number(centre['k_subject_mean'])}; subject AUC minus the prior's "
        f"{faith.cell(best, 'auc_subject_vs_centre', '+.3f')}, true-background PSNR there "
        f"{faith.cell(best, 'bg_psnr_at_k_subject_vs_centre', '+.2f')} dB"
    )
    paper = auc[(auc["kind"] == PAPER[0]) & (auc["layer_set"] == PAPER[1])]
    if len(paper) and (paper.iloc[0]["kind"], paper.iloc[0]["layer_set"]) != (best["kind"], best["layer_set"]):
        delta = faith.cell(paper.iloc[0], "auc_subject_vs_centre", "+.3f")
        text += f"; the paper's map: subject AUC minus the prior's {delta}"
    return text + " (N = " + str(int(best["N"])) + ")."


def verdict_sentences(tables: StudyTables) -> list[str]:
    """One sentence per question the study asks, each from the tables; a later stage's only once it has run."""
    control = tables.control
    steps = steps_of(control)
    if not scoring(steps):
        return ["No scoring step with maps of the no_manipulation chain: nothing to judge."]
    sentences = [layers_sentence(control, steps), timing_sentence(control, steps)]
    sentences += [gradient_sentence(control, steps), mask_rule_sentence(tables.masks, control, steps)]
    sentences += [*sanity_sentences(tables.sanity, control, steps), faithfulness_sentence(tables)]
    return [s for s in sentences if s]


VERDICT_TITLE = "Verdict: does the score find the subject?"


def verdict_section(tables: StudyTables) -> Section:
    """The page's headline: the verdict table, its sentences, then how to read them."""
    control = tables.control
    steps = steps_of(control)
    notes = (
        *verdict_sentences(tables),
        "Table: AUROC, mean [95% interval], of the no_manipulation chain's maps against the subject of its own final "
        "image (no mask shaped it; main truth threshold), per scoring step; best = the kind's layer set (last, all, "
        "res<k>) with the highest mean AUROC over the scoring steps; N = samples with an AUROC. Intervals: percentile "
        "bootstrap over reference images. Above, below or level: the two 95% intervals do not overlap, or do.",
    )
    return Section(VERDICT_TITLE, verdict_view(control, steps), notes, place=HEADLINE)
