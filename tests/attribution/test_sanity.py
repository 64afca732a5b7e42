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

from bench.attribution.sanity import (
    CROSS,
    NONE,
    SHUFFLED,
    Recompute,
    cascade_stages,
    other_word,
    randomised_unets,
    recompute_maps,
    reinitialise,
    shuffled_partners,
    spread,
    subject_query,
    word_query,
)
from bench.config import REPO_ROOT
from method.attention import resolve_layers
from method.sampler import GradSAM
from tests.method.test_attribution_maps import hand_daam, subject_attention
from tests.method.test_sampler import INDICES, STEPS, make_sample
from tests.method.unets import SD15_SHAPED, TINY, build_unet

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


def run_stage(root: Path, stage: str, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [sys.executable, "-m", "bench.attribution", "--profile", "smoke", "--shards", "1", "--stage", stage]
    proc = subprocess.run(
        [*cmd, "--root-dir", str(root), *overrides], cwd=root, env=env, capture_output=True, text=True, timeout=1500
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.mark.slow  # the maps stage's two Hydra jobs (2 samples), then the sanity stage alone, then its rerun
def test_the_sanity_stage_runs_alone_on_the_maps_stage_s_latents_and_writes_its_tables(tmp_path: Path):
    folder = tmp_path / "results" / "attribution"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "bench.attribution", "--profile", "smoke", "--stage", "sanity"]
    refused = subprocess.run(
        [*cmd, "--root-dir", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert refused.returncode != 0 and "Run the maps stage first" in refused.stderr  # before any work
    run_stage(tmp_path, "maps", "dataset.subcategories=[forest,ocean]")  # two samples: ball and cone
    assert not (folder / "samples_sanity.csv").exists()
    run_stage(tmp_path, "sanity")
    record = json.loads((folder / "sanity.json").read_text())
    check = record["recompute_check"]
    assert check["compared"] > 0 and check["identical"] == check["compared"]  # stage none = the recorded maps
    assert len(record["samples"]) == 2 and len(record["partners"]) == 2  # ball <-> cone
    stages = [s["name"] for s in record["stages"]]
    assert stages[:2] == [NONE, "conv_out"] and stages[-3:] == [CROSS, "scene word", SHUFFLED]
    rows = pd.read_csv(folder / "samples_sanity.csv", keep_default_na=False, na_values=[""])
    kinds = set(rows[rows["check"] == "cascade"]["kind"])
    assert kinds == {"gradsam", "attention_only", "daam", "noise_diff"}
    assert {"own:last", "last", "all", "-"} <= set(rows["layer_set"]) and set(rows["index"]) == {4}  # the plan's
    general = rows[(rows["kind"] == "gradsam") & (rows["layer_set"] == "all")]
    assert set(general["sample_key"]) == set(record["general_samples"]) and len(record["general_samples"]) == 1
    none = rows[rows["stage"] == NONE]
    assert (none["spearman"] == 1.0).all()  # the reference itself
    study = pd.read_csv(folder / "samples_attribution.csv", keep_default_na=False, na_values=[""])
    study = study[(study["label"] == "no_manipulation") & (study["truth_threshold"] == "main")]
    study = study[study["truth"] == "no_manipulation"].set_index(["sample_key", "kind", "layer_set", "index"])
    for _, row in rows[(rows["stage"] == NONE) | (rows["check"] == "chance")].iterrows():
        key = (row["sample_key"], row["kind"], row["layer_set"], row["index"])
        assert row["auroc"] == pytest.approx(study.loc[key, "auroc"], abs=1e-6), key  # the study's own numbers
    scene = rows[rows["stage"] == "scene word"]
    assert set(scene["word"]) == {"forest", "ocean"} and "noise_diff" not in set(scene["kind"])
    shuffled = rows[rows["stage"] == SHUFFLED]
    assert (shuffled["word"] != shuffled["subject"]).all() and "noise_diff" in set(shuffled["kind"])
    table = pd.read_csv(folder / "sanity.csv")
    assert {"spearman_mean", "spearman_mean_lo", "auroc_mean_hi", "auroc_n"} <= set(table.columns)
    assert {p.name for p in (folder / "figures").iterdir()} >= {"sanity_cascade.png", "sanity_text.png"}
    md, html = (folder / "attribution.md").read_text(), (folder / "report.html").read_text()
    assert "## Sanity: cascading model randomisation, AUROC" in md and "Sanity: text randomisation" in md
    assert "sanity_cascade.png" in html and "Sanity: cascading model randomisation" in html
    store = tmp_path / record["store"]
    stamps = {p: p.stat().st_mtime_ns for p in store.rglob("*.npz")}
    run_stage(tmp_path, "sanity")  # a rerun resumes: every stored map is kept, nothing recomputed
    assert json.loads((folder / "sanity.json").read_text())["maps_computed"] == 0
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*.npz")} == stamps
