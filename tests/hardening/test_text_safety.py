"""Attack suite #23, class 3: text that breaks a renderer or a reader.

Prompts are data, never markup or formulas: one NFC spelling per prompt at the dataset boundary, every CSV
written formula-safe by `write_csv` and read back exactly by `read_csv`, mathtext off in every figure,
every cell escaped in report.html.
"""

from __future__ import annotations

import ast
import unicodedata
from pathlib import Path

import pandas as pd
import pytest

from bench.config import REPO_ROOT, ConfigError
from bench.datasets.base import PromptSpec, ReferenceImage, protocol_subcategories
from bench.records import png_problem, read_csv, write_csv
from bench.reporting.aggregate import aggregate_task
from bench.reporting.samples_table import read_samples
from bench.task import plan_work, run_benchmark
from tests.conftest import compose_cfg, minimal_run
from tests.reporting.test_aggregate import QUICK, hand_made

RUN = ["model=tiny", "dataset=synthetic_places", "method=txt2img", *minimal_run()]
CAFE_NFC = unicodedata.normalize("NFC", "Café au lait")
CAFE_NFD = unicodedata.normalize("NFD", "Café au lait")


def run_prompts(tmp_path: Path, prompts: list[tuple[str, str]]) -> pd.DataFrame:
    """A real run of `prompts` (text, subject) on one forest scene; its samples.csv as the tables read it."""
    cfg = compose_cfg([*RUN, f"dataset.prompts_per_subcategory={len(prompts)}"], tmp_path)
    forest = next(e for e in cfg.protocol.subcategories if e.subcategory == "forest")
    forest.prompts = [{"text": text, "subject": subject} for text, subject in prompts]
    return read_samples(run_benchmark(cfg)["samples_csv"])


def aggregate_with(tmp_path: Path, column: str, old: str, new: str) -> dict:
    frame = hand_made(tmp_path)
    frame[column] = frame[column].replace(old, new)
    write_csv(frame, tmp_path / "results" / "table1" / "samples.csv")
    return aggregate_task(tmp_path / "results", "table1", tmp_path, options=QUICK)


# --- the examples --------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["Tiger near $HOME_$USER", r"a $\frac{$ b", "Deer $x^2$ for $5"])
def test_a_prompt_with_dollars_is_drawn_as_written_and_the_report_is_written(tmp_path, prompt):
    paths = aggregate_with(tmp_path, "prompt", "Deer roaming", prompt)
    assert paths["report"].is_file() and len(paths["figures"]) >= 3
    assert all(png_problem(p) == "" for p in paths["figures"])
    assert any(p.name.startswith("samples_") for p in paths["figures"])  # the grid titled with the prompt


@pytest.mark.parametrize("lead", ["=", "+", "-", "@"])
def test_formula_leading_prompts_reach_the_csvs_as_text_and_come_back_exact(tmp_path, lead):
    prompt = f"{lead}HYPERLINK(1) deer"
    samples = run_prompts(tmp_path, [(prompt, "deer")])
    assert samples["prompt"].tolist() == [prompt]  # read back exactly
    raw = (tmp_path / "results/demo/samples.csv").read_text()
    assert f"'{prompt}" in raw and f",{prompt}" not in raw and f"\n{prompt}" not in raw
    paths = aggregate_task(tmp_path / "results", "demo", tmp_path, options=QUICK)
    by_prompt = paths["csv"].with_name("table1_by_prompt.csv")
    assert f"'{prompt}" in by_prompt.read_text() and read_csv(by_prompt)["prompt"].tolist() == [prompt]


def test_nfc_and_nfd_spellings_of_one_prompt_are_one_prompt(tmp_path):
    first = run_prompts(tmp_path / "a", [(CAFE_NFD, "Café")])
    assert first["prompt"].tolist() == [CAFE_NFC] and first["subject"].tolist() == ["Café"]
    again = run_prompts(tmp_path / "a", [(CAFE_NFC, "Café")])  # the other spelling resumes the same sample
    assert again["sample_key"].tolist() == first["sample_key"].tolist()
    prompts = (PromptSpec(CAFE_NFC, "Café"), PromptSpec(CAFE_NFD, "Café"))
    refs = [ReferenceImage("forest/00000", "c", "s", prompts, "test", loader=lambda: None)]
    with pytest.raises(ConfigError, match=r"lists the prompt 'Café au lait' twice .*NFC.*remove the repeat"):
        plan_work(refs, [1], 0, 1)


# --- further attacks ---------------------------------------------------------------------------------------------


def test_a_carriage_return_in_a_prompt_does_not_split_its_row(tmp_path):
    samples = run_prompts(tmp_path, [("Deer\rroaming", "Deer"), ("Bear\r\nroaming", "Bear")])
    assert sorted(samples["prompt"]) == ["Bear\r\nroaming", "Deer\rroaming"] and len(samples) == 2


def test_prompts_a_reader_would_take_for_missing_or_numbers_stay_text(tmp_path):
    samples = run_prompts(tmp_path, [("NA", "NA"), ("null", "null"), ("1984", "1984")])
    assert sorted(samples["prompt"]) == ["1984", "NA", "null"]
    assert all(isinstance(p, str) for p in samples["prompt"])


def test_a_subject_spelt_otherwise_than_its_prompt_is_the_same_word():
    protocol = {"name": "p", "subcategories": [{"category": "c", "subcategory": "s", "prompts": []}]}
    protocol["subcategories"][0]["prompts"] = [{"text": CAFE_NFC, "subject": unicodedata.normalize("NFD", "Café")}]
    (entry,) = protocol_subcategories(protocol, None, None)
    assert entry["prompts"][0].subject == "Café" and entry["prompts"][0].text == CAFE_NFC


def test_markup_in_a_table_cell_is_escaped_in_the_report(tmp_path):
    frame = hand_made(tmp_path)
    frame["pixel_mad_provenance"] = "<script>alert('x')</script> & <img src=x onerror=alert(1)>"
    write_csv(frame, tmp_path / "results" / "table1" / "samples.csv")
    page = aggregate_task(tmp_path / "results", "table1", tmp_path, options=QUICK)["report"].read_text()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;img src=x" in page
    assert page.count("<script>") == 1 and "<img src=x" not in page  # only the page's own print helper


def test_formula_safety_round_trips_every_kind_of_cell(tmp_path):
    cells = ["=1+1", "+A1", "-2+3", "@SUM(A1)", "\tx", "'=x", "''=x", "-1.5", "+inf", "-", "'", "plain", 'a,b"c\nd']
    frame = pd.DataFrame({"text": cells, "=col": range(len(cells)), "value": [-1.5] * len(cells)})
    write_csv(frame, tmp_path / "t.csv")
    back = read_csv(tmp_path / "t.csv")
    assert back["text"].tolist() == cells and list(back.columns) == list(frame.columns)
    assert back["value"].tolist() == [-1.5] * len(cells)  # numbers stay numbers
    raw = (tmp_path / "t.csv").read_text().splitlines()
    assert raw[0] == "text,'=col,value" and "-1.5,7,-1.5" in raw and "'=1+1,0,-1.5" in raw
    assert not any(line.startswith(("=", "+A", "@")) for line in raw)


def calls_outside(name: str, allowed: dict[str, str]) -> list[str]:
    """Every call of `.name(...)` in bench/ outside the allowed (file -> function) places."""
    found = []
    for path in sorted((REPO_ROOT / "bench").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for function in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]:
            for node in ast.walk(function):
                is_call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                if is_call and node.func.attr == name:
                    where = str(path.relative_to(REPO_ROOT))
                    if allowed.get(where) != function.name:
                        found.append(f"{where}:{node.lineno} in {function.name}")
    return found


def test_one_writer_and_one_reader_for_every_csv_and_one_saver_for_every_figure():
    assert calls_outside("to_csv", {"bench/records.py": "write_csv"}) == []
    assert calls_outside("read_csv", {"bench/records.py": "read_csv"}) == []
    assert calls_outside("savefig", {"bench/reporting/figures.py": "save_figure"}) == []
