"""The study's verdict: its compact table and its sentences, generated from the tables (hand-built here), against
independent pandas lookups; honest 'no'/'unclear' outcomes; invariance to row order and to rows it must not read."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.attribution import verdict as v
from bench.attribution.report import CONTROL_LABEL
from bench.reporting.views import interval_cell
from tests.attribution.constructed import OFFLINE, STEPS, WHOLE_CHAIN, mask_table, sanity_table, study_table


def tables(auroc: dict | None = None, **kwargs) -> v.StudyTables:
    return v.StudyTables(study_table(auroc, **kwargs), mask_table())


def sentence(sentences: list[str], question: str) -> str:
    found = [s for s in sentences if s.startswith(question)]
    assert len(found) == 1, (question, sentences)
    return found[0]


def control_means(table: pd.DataFrame) -> pd.DataFrame:
    """An independent pivot of the control's main-threshold AUROC means: (kind, layer set) x index."""
    part = table[(table["truth"] == "no_manipulation") & (table["label"] == "no_manipulation")]
    part = part[part["truth_threshold"] == "main"]
    return part.pivot_table(index=["kind", "layer_set"], columns="index", values="auroc_mean")


def test_relation_is_antisymmetric_and_unclear_without_an_interval():
    rng = np.random.default_rng(0)
    for _ in range(500):
        centres, halves = rng.uniform(0, 1, 2), rng.uniform(0, 0.2, 2)
        a, b = (v.Estimate(c, c - h, c + h) for c, h in zip(centres, halves, strict=True))
        forward, backward = v.relation(a, b), v.relation(b, a)
        assert {forward, backward} in ({"above", "below"}, {"level"})
        overlap = a.lo <= b.hi and b.lo <= a.hi
        assert (forward == "level") == overlap
    assert v.relation(v.Estimate(0.9), v.Estimate(0.1, 0.0, 0.2)) == "unclear"  # a mean without an interval
    assert v.Estimate(0.5).text() == "0.500" and v.Estimate().text() == "n/a"


def test_the_table_holds_each_kinds_best_set_the_papers_layer_and_the_chance_lines():
    table = study_table()
    view = v.verdict_view(v.StudyTables(table).control, v.steps_of(v.StudyTables(table).control))
    assert list(view.columns) == ["map", "N", "t = 800", "t = 540", "t = 340", "whole chain"]
    assert list(view["map"]) == [
        "gradsam res8 (best)",
        "gradsam last (the paper)",
        "attention_only res8 (best)",
        "daam res8 (best)",
        "noise_diff",
        "centre prior (chance)",
        "uniform (chance)",
    ]
    assert len(view) <= 12 and set(view["N"]) == {"40"}
    means = control_means(table)  # the best set by an independent argmax of the mean over the scoring steps
    scoring = [index for index, _ in STEPS]
    for kind in ("gradsam", "attention_only", "daam"):
        sets = [s for s in means.loc[kind].index if not s.startswith(("layer:", "own:"))]
        best = max(sets, key=lambda s: means.loc[(kind, s), scoring].mean())
        assert f"{kind} {best} (best)" in set(view["map"])
    main = table[(table["label"] == CONTROL_LABEL) & (table["truth_threshold"] == "main")]
    for name, kind, layer_set in (("gradsam last (the paper)", "gradsam", "last"), ("noise_diff", "noise_diff", "-")):
        for (index, _), header in zip(STEPS, ("t = 800", "t = 540", "t = 340"), strict=True):
            row = main[(main["kind"] == kind) & (main["layer_set"] == layer_set) & (main["index"] == index)].iloc[0]
            expected = interval_cell(row["auroc_mean"], row["auroc_mean_lo"], row["auroc_mean_hi"], spec=".3f")
            assert view.set_index("map").loc[name, header] == expected
    whole = view.set_index("map")["whole chain"]
    assert whole["centre prior (chance)"].startswith("0.784") and whole["gradsam res8 (best)"] == ""


def test_the_verdict_reads_only_the_control_chain_at_the_main_threshold_in_any_row_order():
    table = study_table()
    expected = v.verdict_section(v.StudyTables(table, mask_table()))
    shuffled = table.sample(frac=1.0, random_state=3)
    noisy = table.copy()
    others = (noisy["label"] != CONTROL_LABEL) | (noisy["truth_threshold"] != "main")
    noisy.loc[others, "auroc_mean"] = 0.999  # rows the verdict must not read
    for variant in (shuffled, noisy):
        got = v.verdict_section(v.StudyTables(variant, mask_table()))
        pd.testing.assert_frame_equal(got.frame, expected.frame)
        assert got.notes == expected.notes


def test_every_number_in_the_sentences_comes_from_the_table():
    sentences = v.verdict_sentences(tables())
    layers = sentence(sentences, "Which layers find the subject?")
    assert "gradsam res8 does best: AUROC 0.979 [0.959, 0.999] at t = 340" in layers
    assert "clearly above the paper's layer (gradsam last: 0.570 [0.550, 0.590])" in layers
    assert "which is below the centre prior (0.784 [0.764, 0.804])" in layers
    assert "Best single layer: down_blocks.1.a0 (gradsam, 0.960 [0.940, 0.980])" in layers  # ties: gradsam first
    moved = dict(OFFLINE) | {("gradsam", "res8"): (0.951, 0.976, 0.991)}
    assert "AUROC 0.991 [0.971, 1.011] at t = 340" in sentence(v.verdict_sentences(tables(moved)), "Which layers")
    # every number printed is one of the table's (means, bounds) or a fraction of the mask table's
    numbers = {
        f"{x:.3f}" for x in study_table()[[c for c in study_table() if c.startswith("auroc_mean")]].to_numpy().ravel()
    }
    numbers |= {
        f"{x:.3f}" for x in mask_table()[["mask_iou_mean", "mask_iou_mean_lo", "mask_iou_mean_hi"]].to_numpy().ravel()
    }
    for text in sentences:
        assert set(re.findall(r"-?\d\.\d{3}", text)) <= numbers, text


def test_how_early_and_does_the_gradient_help_say_no_and_unclear_honestly():
    late = {k: m if k[0].startswith("chance") else (0.7, *m[1:]) for k, m in OFFLINE.items()}  # every map late
    early = sentence(v.verdict_sentences(tables(late)), "How early?")
    assert early.startswith("How early? It clears the centre prior only from t = 540, at 2 of 3 scoring steps")
    assert (
        "attention_only res8 0.977 [0.957, 0.997] against the centre prior's 0.784 [0.764, 0.804] at t = 540" in early
    )
    never = {k: (0.7, 0.7, 0.7) if not k[0].startswith("chance") else m for k, m in OFFLINE.items()}
    assert sentence(v.verdict_sentences(tables(never)), "How early?").startswith("How early? Never")
    overlap = sentence(v.verdict_sentences(tables()), "Does the gradient help?")
    assert overlap.startswith("Does the gradient help? No measurable difference")
    better = dict(OFFLINE) | {("attention_only", "res8"): (0.80, 0.80, 0.80)}
    assert sentence(v.verdict_sentences(tables(better)), "Does the gradient help?").startswith(
        "Does the gradient help? Yes."
    )
    worse = dict(OFFLINE) | {("attention_only", "res8"): (0.99, 0.99, 0.99)}
    assert "No: plain attention scores higher at t = 800, 540" in sentence(
        v.verdict_sentences(tables(worse, half=0.005)), "Does the gradient help?"
    )
    unclear = v.verdict_sentences(tables(half=np.nan))  # one reference image: no interval anywhere
    assert sentence(unclear, "How early?").startswith("How early? Unclear")
    assert sentence(unclear, "Does the gradient help?").startswith("Does the gradient help? Unclear")
    assert "Unclear" not in sentence(unclear, "Which layers")  # a best map by the means, said without a comparison


def test_the_mask_rule_sentence_names_the_best_other_rule():
    text = sentence(v.verdict_sentences(tables()), "Does the paper's mask rule help?")
    assert text.startswith("Does the paper's mask rule help? No: on gradsam res8 at t = 800")
    assert "keeps 72.0% of the latent cells for IoU 0.164 [0.134, 0.194]" in text
    assert "'sum, no dilation', keeps 23.5% for IoU 0.452 [0.422, 0.482]" in text and "keeps 99.6%" in text
    close = mask_table({"per_channel": (0.40, 0.5), "sum": (0.42, 0.4)})
    level = v.verdict_sentences(v.StudyTables(study_table(), close))
    assert sentence(level, "Does the paper's mask rule help?").startswith(
        "Does the paper's mask rule help? Not measurably"
    )
    assert not [s for s in v.verdict_sentences(v.StudyTables(study_table())) if "mask rule" in s]  # no mask table


def test_a_study_without_any_auroc_gives_unclear_everywhere_and_no_missing_stage():
    table = study_table()
    table[[c for c in table if c.startswith("auroc_mean")]] = np.nan
    table["auroc_n"] = 0
    masks = mask_table()
    masks[[c for c in masks if c.startswith("mask_iou_mean")]] = np.nan
    section = v.verdict_section(v.StudyTables(table, masks))
    assert set(section.frame["N"]) == {"0"}
    assert set(section.frame[["t = 800", "t = 540", "t = 340"]].to_numpy().ravel()) == {"n/a"}
    questions = [n for n in section.notes if "?" in n.split(".")[0]]
    assert len(questions) == 4 and all("Unclear" in q for q in questions), questions
    assert not any("model?" in n or "text?" in n or "better image?" in n for n in section.notes)


def test_the_sanity_sentences_read_the_stages_table_when_it_exists():
    passes = v.verdict_sentences(v.StudyTables(study_table(), mask_table(), sanity_table()))
    model = sentence(passes, "Does the map depend on the model?")
    assert model.startswith("Does the map depend on the model? Yes (gradsam res8, t = 540, N = 20)")
    assert "cascade stage 'conv_in'" in model and "AUROC 0.550 [0.530, 0.570] against the prior's 0.784" in model
    assert "Spearman with the original map 0.000" in model and "projections re-initialised, AUROC 0.620" in model
    text = sentence(passes, "Does the map depend on the text?")
    assert text.startswith("Does the map depend on the text? Yes") and "the scene word's map 0.600" in text
    prior = v.verdict_sentences(v.StudyTables(study_table(), None, sanity_table(final=0.9, scene=0.97)))
    assert sentence(prior, "Does the map depend on the model?").startswith("Does the map depend on the model? No")
    assert sentence(prior, "Does the map depend on the text?").startswith("Does the map depend on the text? Partly")
    level = v.verdict_sentences(v.StudyTables(study_table(), None, sanity_table(final=0.79)))
    assert sentence(level, "Does the map depend on the model?").startswith("Does the map depend on the model? Yes")
    blind = v.verdict_sentences(v.StudyTables(study_table(), None, sanity_table(half=np.nan)))
    assert sentence(blind, "Does the map depend on the model?").startswith("Does the map depend on the model? Unclear")
    assert sentence(blind, "Does the map depend on the text?").startswith("Does the map depend on the text? Unclear")
    chance_only = sanity_table()
    chance_only = chance_only[chance_only["check"] == "chance"]
    assert not [s for s in v.verdict_sentences(v.StudyTables(study_table(), None, chance_only)) if "depend" in s]


def test_the_later_stages_tables_are_read_from_the_folder_only_when_they_exist(tmp_path: Path):
    from bench.attribution import faithfulness as faith
    from tests.attribution.test_faithfulness import constructed_samples

    read = v.StudyTables.read(tmp_path, study_table(), mask_table())
    assert read.sanity is None and read.faith_auc is None
    assert not [s for s in v.verdict_sentences(read) if "better image" in s]
    sanity_table().to_csv(tmp_path / "sanity.csv", index=False)
    constructed_samples().to_csv(tmp_path / "faith_samples.csv", index=False)
    faith.write_faithfulness(tmp_path, tmp_path / "faith_samples.csv")
    read = v.StudyTables.read(tmp_path, study_table(), mask_table())
    sentences = v.verdict_sentences(read)
    assert sentence(sentences, "Does the map depend on the model?")
    better = sentence(sentences, "Does a better map make a better image?")
    auc = read.faith_auc.set_index(["kind", "layer_set"])
    best, _ = faith.best_localising(
        auc[~auc.index.get_level_values(0).isin(faith.CHANCE_KINDS)].reset_index(), read.table
    )
    answer = {"above": "Yes, for the subject", "level with": "Not shown", "below": "No"}[
        faith.side(best, "auc_subject_vs_centre")
    ]
    assert better.startswith(
        f"Does a better map make a better image? {answer}: {faith.map_name(best['kind'], best['layer_set'])}"
    )
    assert faith.cell(best, "auc_subject_vs_centre", "+.3f") in better
    assert f"the centre prior from k = {faith.number(auc.loc[('centre_prior', '-'), 'k_subject_mean'])}" in better


@pytest.mark.parametrize("whole_chain", [0.989, None])
def test_daams_whole_chain_is_a_column_of_its_own_only_when_recorded(whole_chain):
    control = v.StudyTables(study_table(whole_chain=whole_chain)).control
    steps = v.steps_of(control)
    assert [(s.index, s.timestep) for s in v.scoring(steps)] == list(STEPS)
    assert [s.index for s in steps if s.whole_chain] == ([WHOLE_CHAIN[0]] if whole_chain else [])


def test_the_sanity_sentences_judge_the_best_map_recomputed_on_the_most_samples():
    every = v.verdict_sentences(v.StudyTables(study_table(), None, sanity_table()))
    assert "(gradsam res8, t = 540, N = 20)" in sentence(every, "Does the map depend on the model?")
    few = sanity_table()
    few.loc[few["kind"] == "gradsam", "N"] = 2  # per-layer Grad-SAM recomputed on two samples only (the offline plan)
    sentences = v.verdict_sentences(v.StudyTables(study_table(), None, few))
    assert "(attention_only res8, t = 540, N = 20)" in sentence(sentences, "Does the map depend on the model?")
    assert "(attention_only res8, t = 540)" in sentence(sentences, "Does the map depend on the text?")


def test_the_verdict_reads_the_sanity_stages_own_names():
    """verdict.py spells the sanity table's stage names itself (an import would be circular): they must match."""
    from bench.attribution import sanity_report, verdict

    assert (verdict.NONE, verdict.SCENE_WORD, verdict.SHUFFLED) == (
        sanity_report.NONE,
        sanity_report.SCENE_WORD,
        sanity_report.SHUFFLED,
    )
    assert verdict.SANITY_TABLE == sanity_report.TABLE_FILE
