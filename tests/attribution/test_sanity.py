"""The attribution study's sanity stage: cascading model randomisation, text randomisation, and the stage end to end
(tiny UNets, the offline tiny backbone, real subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench.attribution.__main__ import PROFILES
from bench.attribution.__main__ import main as study_main
from bench.attribution.sanity import (
    CROSS,
    NONE,
    PLANS,
    SHUFFLED,
    Recompute,
    SanityPlan,
    cascade_stages,
    other_word,
    plan_from_json,
    randomised_unets,
    rank_correlation,
    recompute_maps,
    reinitialise,
    shuffled_partners,
    spread,
    subject_query,
    word_query,
)
from bench.attribution.sanity import main as shard_main
from bench.attribution.sanity_report import sanity_sections, sanity_table, write_sanity
from bench.config import REPO_ROOT
from bench.records import png_problem, read_csv, write_csv
from bench.truth.scores import METRICS
from method.attention import resolve_layers
from method.sampler import GradSAM
from tests.attribution.conftest import MapsRun
from tests.method.test_attribution_maps import hand_daam, subject_attention
from tests.method.test_sampler import INDICES, STEPS, make_sample
from tests.method.unets import SD15_SHAPED, TINY, build_unet
from tests.warm_cli import run_python_module

ALL_KINDS = ["gradsam", "attention_only", "daam", "noise_diff"]
PROMPT, SUBJECT = "a red ball in a forest", "ball"


def control_chain(backbone, kinds: list[str] = ALL_KINDS):
    """The no_manipulation chain of the maps stage on the tiny backbone, recording maps and latents."""
    record = {"record": True, "kinds": kinds, "layers": "all", "latents": True}
    method = GradSAM(injection_indices=INDICES, manipulate=False, score={"general_chunk_size": 256}, attribution=record)
    sample = make_sample(PROMPT, SUBJECT)
    out = method.generate(backbone, [sample], STEPS)[0]
    row = pd.Series(
        {
            "prompt": PROMPT,
            "subject": SUBJECT,
            "subcategory": "forest",
            "subject_positions": out.info["subject_positions"],
        }
    )
    return Recompute(backbone, method, STEPS), out, row


def keyed(maps) -> dict:
    return {(m.kind, m.layer, m.layer_set, m.index): m.values for m in maps}


def test_stage_zero_reproduces_the_recorded_maps_bit_for_bit(tiny_backbone):
    run, out, row = control_chain(tiny_backbone)
    stage, unet = next(randomised_unets(tiny_backbone.unet))
    assert stage.name == NONE and unet is not tiny_backbone.unet  # a copy, never the loaded model
    again = keyed(recompute_maps(run, unet, out.latents, subject_query(run, row), tuple(INDICES), general=True))
    recorded = keyed(out.maps)
    assert again.keys() == recorded.keys()  # every kind, every layer, the own map, at every scoring step
    assert {kind for kind, *_ in recorded} == set(ALL_KINDS)
    for key, values in recorded.items():
        np.testing.assert_array_equal(again[key], values, err_msg=str(key))
    # a subset of the scoring steps and no Grad-SAM per layer: the same maps, fewer of them
    cheap = keyed(recompute_maps(run, unet, out.latents, subject_query(run, row), (INDICES[1],), general=False))
    assert {k[0] for k in cheap if k[1] is not None} == {"attention_only", "daam"} and {k[3] for k in cheap} == {4}
    for key, values in cheap.items():
        np.testing.assert_array_equal(values, recorded[key], err_msg=str(key))


def perturbed(config: dict) -> torch.nn.Module:
    """A UNet whose every weight is moved off its constructor's init (as training does): norms are no longer 1/0,
    so a re-initialisation changes every element."""
    unet = build_unet(config)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 + 0.1 * torch.randn(p.shape, generator=generator))
    return unet


def owners(unet: torch.nn.Module) -> dict[str, set[str]]:
    """Stage name -> the parameter names its modules hold."""
    names = {id(p): n for n, p in unet.named_parameters()}
    return {stage: {names[id(p)] for m in modules for p in m.parameters()} for stage, modules in cascade_stages(unet)}


def test_each_cascade_stage_changes_only_its_own_block_and_the_loaded_model_never():
    unet = perturbed(SD15_SHAPED)
    original = {k: v.clone() for k, v in unet.state_dict().items()}
    blocks = owners(unet)
    assert [s for s in blocks] == [
        "conv_out",
        *(f"up_blocks.{i}" for i in (3, 2, 1, 0)),
        "mid_block",
        *(f"down_blocks.{i}" for i in (3, 2, 1, 0)),
        "conv_in",
    ]
    every = [k for ks in blocks.values() for k in ks]
    assert sorted(every) == sorted(original) and len(every) == len(set(every))  # each parameter in one stage
    assert {"time_embedding.linear_1.weight", "conv_in.weight"} <= blocks["conv_in"]
    assert blocks["conv_out"] == {"conv_norm_out.weight", "conv_norm_out.bias", "conv_out.weight", "conv_out.bias"}
    previous, seen = original, []
    for stage, model in randomised_unets(unet):
        now = {k: v.clone() for k, v in model.state_dict().items()}
        base = original if stage.check == "cross_attention" else previous
        own = blocks.get(stage.name, set()) if stage.check == "cascade" else set()
        if stage.check == "cross_attention":
            own = {k for k in now if ".attn2.to_" in k}
            assert len(own) == 16 * 5  # q, k, v weights; to_out weight and bias; 16 cross-attention layers
        for key in now:
            if key in own:
                assert (now[key] != base[key]).all(), f"{stage.name}: {key} kept some of its weights"
            else:
                assert torch.equal(now[key], base[key]), f"{stage.name}: {key} is not its block's but changed"
        if stage.name == "conv_in":  # the end of the cascade: nothing of the model is left
            assert all((now[k] != original[k]).all() for k in now)
        previous = now
        seen.append((stage.name, now))
    assert [name for name, _ in seen][0] == NONE and seen[-1][0] == CROSS and len(seen) == len(blocks) + 2
    assert all(torch.equal(v, original[k]) for k, v in unet.state_dict().items())  # the loaded model is untouched
    again = [(stage.name, {k: v.clone() for k, v in m.state_dict().items()}) for stage, m in randomised_unets(unet)]
    for (name, first), (_, second) in zip(seen, again, strict=True):  # seeded by the stage's name alone
        assert all(torch.equal(first[k], second[k]) for k in first), name


def test_a_stage_draws_its_weights_from_its_name_alone_and_leaves_the_global_stream():
    unet, other = build_unet(TINY), build_unet(TINY, seed=3)
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    reinitialise([unet.conv_out], "conv_out")
    reinitialise([other.conv_out], "conv_out")
    assert torch.equal(torch.rand(3), expected)  # the caller's random stream did not move
    assert torch.equal(unet.conv_out.weight, other.conv_out.weight)  # whatever the weights were before
    reinitialise([other.conv_out], "up_blocks.2")
    assert not torch.equal(unet.conv_out.weight, other.conv_out.weight)
    with pytest.raises(TypeError, match="no reset_parameters"):
        holder = torch.nn.Module()
        holder.scale = torch.nn.Parameter(torch.ones(2))
        reinitialise([holder], "x")


def test_the_wrong_word_map_is_the_recorded_attention_of_that_token(tiny_backbone):
    run, out, row = control_chain(tiny_backbone, ["attention_only", "daam"])
    word = other_word(PROMPT, SUBJECT)
    query = word_query(run, PROMPT, word)
    assert word == "forest" and query.positions == (6,)  # <start> a red ball in a forest: column 6
    maps = recompute_maps(run, tiny_backbone.unet, out.latents, query, tuple(INDICES), general=False)
    unet, names = tiny_backbone.unet, resolve_layers(tiny_backbone.unet, "all")
    timesteps, _ = run.timesteps()
    steps = [
        subject_attention(unet, names, torch.from_numpy(z.values)[None], timesteps[z.index], query.text, [6])
        for z in out.latents
    ]
    for k in INDICES:
        for name in names:  # attention_only: that column's probabilities summed over heads, nearest-upsampled
            probs = steps[k - 1][name].sum(dim=0)[:, 0]  # [N_l]
            side = int(probs.numel() ** 0.5)
            expected = probs.reshape(side, side).repeat_interleave(8 // side, 0).repeat_interleave(8 // side, 1)
            got = next(m.values for m in maps if m.kind == "attention_only" and m.layer == name and m.index == k)
            assert all(np.array_equal(got[c], expected.numpy()) for c in range(4)), (k, name)
        daam = sum(torch.from_numpy(m.values[0]).double() for m in maps if m.kind == "daam" and m.index == k)
        torch.testing.assert_close(daam, hand_daam(steps[:k], 8).sum(dim=0), atol=1e-5, rtol=1e-4)
    own = next(m.values for m in maps if m.layer is None and m.index == INDICES[0])
    subject_own = next(m.values for m in out.maps if m.layer is None and m.index == INDICES[0])
    assert not np.array_equal(own, subject_own)  # the own (Grad-SAM, last layer) map is the other word's


def test_the_other_word_is_the_prompt_s_last_word_that_is_not_the_subject():
    assert other_word("a red ball in a forest", "ball") == "forest"
    assert other_word("Deer roaming in the forest.", "Deer") == "forest"
    assert other_word("a lake with a boat", "boat") == "lake"  # articles and prepositions are passed over
    assert other_word("Deer roaming", "Deer") == "roaming"  # the protocol's prompts: the verb
    assert other_word("Deer", "deer") is None and other_word("the deer", "deer") is None


def frame(subjects: list[str]) -> pd.DataFrame:
    keys = [f"img{i // 2}/p{i}" for i in range(len(subjects))]
    return pd.DataFrame({"sample_key": keys, "subject": subjects, "image_id": [k.split("/")[0] for k in keys]})


@pytest.mark.parametrize("subjects", [["ball", "box"], ["ball"] * 4 + ["box"] * 4 + ["cone"] * 2, list("aabbbccddde")])
def test_the_shuffled_pairing_is_a_seeded_derangement_across_subject_words(subjects):
    rows = frame(subjects)
    partners = shuffled_partners(rows)
    subject = dict(zip(rows["sample_key"], rows["subject"], strict=True))
    assert sorted(partners) == sorted(partners.values()) == sorted(rows["sample_key"])  # each a partner once
    assert all(subject[k] != subject[p] for k, p in partners.items())
    assert shuffled_partners(rows.iloc[::-1]) == partners  # a function of the set, not of its order


def test_no_pairing_when_one_subject_word_holds_most_samples_and_the_spread_covers_images_first():
    assert shuffled_partners(frame(["ball", "ball", "ball", "box"])) == {} == shuffled_partners(frame(["ball"]))
    rows = pd.DataFrame(
        {
            "sample_key": [f"{img}/{p}" for img in "abcd" for p in "xy"],
            "image_id": [img for img in "abcd" for _ in "xy"],
            "prompt": [p for _ in "abcd" for p in "xy"],
            "seed": 0,
        }
    )
    order = spread(rows)
    assert sorted(order["image_id"].iloc[:4]) == list("abcd") and set(order["prompt"].iloc[:4]) == {"x"}
    assert list(spread(rows.sample(frac=1, random_state=1))["sample_key"]) == list(order["sample_key"])


def test_spearman_is_a_rank_statistic_and_agrees_with_ranks_written_out():
    rng = np.random.default_rng(0)
    s, other = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
    for monotone in (1000 * s, s + 5, np.exp(s), s**3):
        assert rank_correlation(monotone, s) == pytest.approx(1.0)
    assert rank_correlation(-s, s) == pytest.approx(-1.0)
    ranks = lambda a: np.argsort(np.argsort(a.ravel())).astype(float)  # noqa: E731  (no ties in normal draws)
    expected = np.corrcoef(ranks(s), ranks(other))[0, 1]
    assert rank_correlation(s, other) == pytest.approx(expected, abs=1e-12)
    assert rank_correlation(1e6 * s, other) == rank_correlation(s, other)
    assert np.isnan(rank_correlation(np.ones((8, 8)), s)) and np.isnan(rank_correlation(s, None))


def synthetic_rows(seed: int = 0) -> pd.DataFrame:
    """Per-sample rows as samples_sanity.csv holds them: 6 images x 2 prompts, two stages, one NaN Spearman."""
    rng = np.random.default_rng(seed)
    rows = []
    for image in range(6):
        for prompt in range(2):
            for order, stage in enumerate((NONE, "conv_out")):
                rows.append(
                    {
                        "sample_key": f"img{image}/p{prompt}",
                        "image_id": f"img{image}",
                        "check": "cascade",
                        "order": order,
                        "stage": stage,
                        "kind": "attention_only",
                        "layer_set": "res8",
                        "index": 18,
                        "timestep": 340,
                        "spearman": 1.0 if stage == NONE else rng.uniform(-1, 1),
                        **{m: rng.uniform() for m in METRICS},
                    }
                )
    frame = pd.DataFrame(rows)
    frame.loc[3, "spearman"] = np.nan  # a constant map: left out of the mean and N
    return frame


def test_the_sanity_table_is_the_per_sample_mean_with_a_clustered_interval_whatever_the_row_order():
    rows = synthetic_rows()
    table = sanity_table(rows).set_index("stage")
    moved = rows[rows["stage"] == "conv_out"]
    assert table.loc["conv_out", "spearman_mean"] == pytest.approx(np.nanmean(moved["spearman"]))
    assert table.loc["conv_out", "spearman_n"] == 11 and table.loc["conv_out", "N"] == 12
    assert table.loc["conv_out", "auroc_mean"] == pytest.approx(moved["auroc"].mean())
    lo, hi = table.loc["conv_out", ["spearman_mean_lo", "spearman_mean_hi"]]
    assert lo < table.loc["conv_out", "spearman_mean"] < hi
    assert table.loc[NONE, "spearman_mean"] == 1.0  # the reference itself
    shuffled = sanity_table(rows.sample(frac=1, random_state=3)).set_index("stage")
    pd.testing.assert_frame_equal(shuffled.loc[table.index], table, check_exact=False, rtol=1e-12)


def test_sections_wait_for_the_tables_and_a_missing_stage_is_named(tmp_path: Path):
    assert sanity_sections(tmp_path) == []
    with pytest.raises(FileNotFoundError, match=r"samples_sanity.csv does not exist.*--stage sanity"):
        write_sanity(tmp_path)
    write_csv(synthetic_rows(), tmp_path / "samples_sanity.csv")
    with pytest.raises(FileNotFoundError, match=r"sanity.json does not exist"):
        write_sanity(tmp_path)


def test_every_profile_has_a_plan_and_a_plan_survives_its_json():
    assert set(PLANS) == set(PROFILES)
    for plan in PLANS.values():
        assert plan_from_json(json.dumps(__import__("dataclasses").asdict(plan))) == plan
    assert plan_from_json("{}") == SanityPlan()
    assert SanityPlan(indices=(18,)).digest != SanityPlan(indices=(12,)).digest  # a store per plan


def refusal(capsys, call) -> str:
    with pytest.raises(SystemExit) as info:
        call()
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_the_stage_and_its_shards_refuse_bad_input_in_one_line_before_any_work(tmp_path: Path, capsys):
    root = ["--root-dir", str(tmp_path)]
    err = refusal(capsys, lambda: study_main(["--stage", "sanity", *root, "dataset.subcategories=[forest]"]))
    assert "dataset.subcategories=[forest]: --stage sanity takes no override" in err
    assert "samples.csv does not exist. Run the maps stage first" in refusal(
        capsys, lambda: study_main(["--stage", "sanity", *root])
    )
    assert "samples_sanity.csv does not exist" in refusal(
        capsys, lambda: study_main(["--stage", "sanity", "--report-only", *root])
    )
    assert "--plan '[1]': expected a JSON object with fields" in refusal(
        capsys, lambda: shard_main(["--plan", "[1]", *root])
    )
    assert "unexpected keyword" in refusal(capsys, lambda: shard_main(["--plan", '{"sample": 2}', *root]))
    assert "expected 0 <= shard < shards" in refusal(
        capsys, lambda: shard_main(["--plan", "{}", "--shard", "2", "--shards", "2", *root])
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


def text(value) -> str:
    return value if isinstance(value, str) else ""


def run_stage(root: Path, stage: str, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    args = ["--profile", "smoke", "--shards", "1", "--stage", stage, "--root-dir", str(root), *overrides]
    proc = run_python_module("bench.attribution", args, root, env, 1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def check_stage_outputs(root: Path, study_page: bool) -> dict:
    """What one sanity run over the smoke profile's two samples (ball, cone) must have written under `root`; with
    `study_page`, the study's attribution.md and report.html hold its sections too."""
    folder = root / "results" / "attribution"
    record = json.loads((folder / "sanity.json").read_text())
    check = record["recompute_check"]
    assert check["compared"] > 0 and check["identical"] == check["compared"]  # stage none = the recorded maps
    assert len(record["samples"]) == 2 and len(record["partners"]) == 2  # ball <-> cone
    stages = [s["name"] for s in record["stages"]]
    assert stages[:2] == [NONE, "conv_out"] and stages[-3:] == [CROSS, "scene word", SHUFFLED]
    rows = read_csv(folder / "samples_sanity.csv")
    kinds = set(rows[rows["check"] == "cascade"]["kind"])
    assert kinds == {"gradsam", "attention_only", "daam", "noise_diff"}
    assert {"own:last", "last", "all", "-"} <= set(rows["layer_set"]) and set(rows["index"]) == {4}  # the plan's
    general = rows[(rows["kind"] == "gradsam") & (rows["layer_set"] == "all")]
    assert set(general["sample_key"]) == set(record["general_samples"]) and len(record["general_samples"]) == 1
    assert set(general["stage"]) == set(stages)  # Grad-SAM per layer at every stage on its sample
    none = rows[rows["stage"] == NONE]
    assert (none["spearman"] == 1.0).all()  # the reference itself
    study = read_csv(folder / "samples_attribution.csv")
    study = study[(study["label"] == "no_manipulation") & (study["truth_threshold"] == "main")]
    study = study[study["truth"] == "no_manipulation"].set_index(["sample_key", "kind", "layer_set", "index"])
    for _, row in rows[(rows["stage"] == NONE) | (rows["check"] == "chance")].iterrows():
        key = (row["sample_key"], row["kind"], row["layer_set"], row["index"])
        expected = study.loc[key]  # the study's own numbers (NaN for both when the untrained model's truth is empty)
        assert row["auroc"] == pytest.approx(expected["auroc"], abs=1e-6, nan_ok=True), key
        assert text(row["truth_nan_reason"]) == text(expected["truth_nan_reason"]), key
    scene = rows[rows["stage"] == "scene word"]
    assert set(scene["word"]) == {"forest", "ocean"} and "noise_diff" not in set(scene["kind"])
    shuffled = rows[rows["stage"] == SHUFFLED]
    assert (shuffled["word"] != shuffled["subject"]).all() and "noise_diff" in set(shuffled["kind"])
    table = read_csv(folder / "sanity.csv")
    assert {"spearman_mean", "spearman_mean_lo", "auroc_mean_hi", "auroc_n"} <= set(table.columns)
    assert len(table) == len(rows.groupby(["check", "stage", "kind", "layer_set", "index"]))
    assert {p.name for p in (folder / "figures").iterdir()} >= {"sanity_cascade.png", "sanity_text.png"}
    assert all(png_problem(folder / "figures" / name) == "" for name in ("sanity_cascade.png", "sanity_text.png"))
    for page in ("attribution.md", "sanity.md") if study_page else ("sanity.md",):
        md = (folder / page).read_text()
        assert "## Sanity: cascading model randomisation, AUROC" in md and "Sanity: text randomisation" in md
    html = (folder / "report.html").read_text()
    assert ("sanity_cascade.png" in html and "Sanity: cascading model randomisation" in html) == study_page
    return record


@pytest.mark.slow  # a copy of the session's smoke maps run (2 samples), the sanity stage alone, a rerun, --report-only
def test_the_sanity_stage_runs_alone_on_the_maps_stage_s_latents_and_writes_its_tables(
    tmp_path: Path, smoke_maps: MapsRun
):
    empty = tmp_path / "before_the_maps_stage"  # a root without the maps stage's rows
    empty.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "bench.attribution", "--profile", "smoke", "--stage", "sanity"]
    refused = subprocess.run(
        [*cmd, "--root-dir", str(empty)], cwd=empty, env=env, capture_output=True, text=True, timeout=600
    )
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr  # one line, before any work
    assert "Run the maps stage first" in refused.stderr and not (empty / "outputs").exists()
    # the maps stage (dataset.subcategories=[forest,ocean], two samples: ball and cone) ran once for the session
    root = smoke_maps.root
    folder = root / "results" / "attribution"
    assert not (folder / "samples_sanity.csv").exists()
    run_stage(root, "sanity")  # alone: its own tables and sanity.md; the study's page is the maps stage's
    record = check_stage_outputs(root, study_page=False)
    store = root / record["store"]
    stamps = {p: p.stat().st_mtime_ns for p in store.rglob("*.npz")}
    rows = (folder / "samples_sanity.csv").read_bytes()
    run_stage(root, "sanity")  # a rerun resumes: every stored map is kept, nothing recomputed
    assert json.loads((folder / "sanity.json").read_text())["maps_computed"] == 0
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*.npz")} == stamps
    assert (folder / "samples_sanity.csv").read_bytes() == rows  # the same maps give the same rows, byte for byte
    (folder / "sanity.csv").unlink()
    run_stage(root, "all", "--report-only")  # every stage's tables from its rows, then the study's page
    check_stage_outputs(root, study_page=True)
    assert json.loads((folder / "sanity.json").read_text())["maps_computed"] == 0  # nothing recomputed
