"""Attack suite #23, class 4: results edited by hand, or written by another version.

bench.aggregate (and the attribution study) read samples.csv through one validator, `read_samples`: a table
it cannot trust is refused with one line naming the file, the line and the fix, before any number is
computed and before any table, figure or report is written (earlier outputs stay as they were).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from bench.records import LEADING_COLUMNS, write_csv
from bench.reporting.aggregate import aggregate_task
from bench.reporting.samples_table import ResultsError, read_samples
from tests.hardening.cli import run_module
from tests.reporting.test_aggregate import QUICK, hand_made


def samples_csv(tmp_path: Path) -> Path:
    return tmp_path / "results" / "table1" / "samples.csv"


def refused(tmp_path: Path, *words: str) -> str:
    """aggregate_task refuses the table with a one-line message holding the file and `words`; nothing is written."""
    before = sorted(p.name for p in samples_csv(tmp_path).parent.iterdir())
    with pytest.raises(ResultsError) as info:
        aggregate_task(tmp_path / "results", "table1", tmp_path, options=QUICK)
    message = str(info.value)
    assert message.startswith(str(samples_csv(tmp_path))) and "\n" not in message, message
    assert all(w in message for w in words), message
    assert "Fix" in message, message
    assert sorted(p.name for p in samples_csv(tmp_path).parent.iterdir()) == before  # no table, figure, report
    return message


def edited(tmp_path: Path, edit) -> pd.DataFrame:
    frame = hand_made(tmp_path)
    frame = edit(frame) if edit else frame
    write_csv(frame, samples_csv(tmp_path))
    return frame


# --- the examples --------------------------------------------------------------------------------------


def test_duplicated_sample_identities_are_refused_naming_the_lines(tmp_path):
    edited(tmp_path, lambda f: pd.concat([f, f.iloc[[5]]], ignore_index=True))  # row 5 again, at the end
    message = refused(tmp_path, "lines 7, 26 record the same sample", "label='alpha'", "inflate N")
    assert "image_id='forest/00002', prompt='Bear roaming', seed=1)" in message


def test_an_empty_file_is_refused(tmp_path):
    samples_csv(tmp_path).parent.mkdir(parents=True)
    samples_csv(tmp_path).write_bytes(b"")
    refused(tmp_path, "is empty (0 bytes)", "python -m bench.merge --task table1")


def test_a_table_without_rows_as_merge_writes_it_is_refused(tmp_path):
    write_csv(pd.DataFrame(columns=LEADING_COLUMNS), samples_csv(tmp_path))
    refused(tmp_path, "holds a header and no row", "python -m bench.run task_name=table1")


def test_missing_columns_are_refused_as_another_version(tmp_path):
    edited(tmp_path, lambda f: f.drop(columns=["status", "subject"]))
    refused(tmp_path, "lacks the columns ['subject', 'status']", "not a samples table of this version")


def test_a_seed_that_is_not_an_integer_is_refused_naming_the_line(tmp_path):
    edited(tmp_path, lambda f: f.assign(seed=["1"] * 3 + ["one"] + ["1"] * (len(f) - 4)))
    refused(tmp_path, "line 5: seed='one' is not an integer")


@pytest.mark.parametrize("path", ["../../../etc/secret.png", "outputs/../../x.png", "/etc/passwd"])
def test_a_path_that_escapes_the_root_or_is_no_image_is_refused(tmp_path, path):
    edited(tmp_path, lambda f: f.assign(image_path=[path] + list(f["image_path"][1:])))
    refused(tmp_path, f"line 2: image_path={path!r}")


# --- further attacks ---------------------------------------------------------------------------------------------


def test_an_unknown_status_is_refused(tmp_path):
    edited(tmp_path, lambda f: f.assign(status=["ok"] * 9 + ["maybe"] + ["ok"] * (len(f) - 10)))
    refused(tmp_path, "line 11: status='maybe' is not one of ('ok', 'failed')")


def test_text_in_a_metric_column_is_refused_not_counted_as_missing(tmp_path):
    edited(tmp_path, lambda f: f.assign(pixel_mad=[1.0] * 4 + ["12,5"] + [1.0] * (len(f) - 5)))
    refused(tmp_path, "line 6: pixel_mad='12,5' is not a number")


def test_a_label_that_is_no_folder_name_is_refused(tmp_path):
    edited(tmp_path, lambda f: f.assign(label=["../evil$"] + list(f["label"][1:])))
    refused(tmp_path, "line 2: label='../evil$' is not a safe folder name")


def test_a_repeated_column_is_refused(tmp_path):
    edited(tmp_path, None)
    text = samples_csv(tmp_path).read_text().splitlines()
    samples_csv(tmp_path).write_text("\n".join([text[0] + ",seed"] + [line + ",1" for line in text[1:]]) + "\n")
    refused(tmp_path, "line 1 repeats the columns ['seed']")


def test_bytes_that_are_not_utf8_are_refused(tmp_path):
    edited(tmp_path, None)
    samples_csv(tmp_path).write_bytes(samples_csv(tmp_path).read_bytes().replace(b"Deer", b"D\xe9er", 1))
    refused(tmp_path, "is not a UTF-8 CSV file")


def test_line_numbers_count_a_prompt_that_spans_lines(tmp_path):
    def two_line_prompt_then_a_duplicate(frame):
        frame.loc[0, "prompt"] = "Deer\nroaming"
        return pd.concat([frame, frame.iloc[[2]]], ignore_index=True)

    edited(tmp_path, two_line_prompt_then_a_duplicate)
    refused(tmp_path, "lines 5, 27 record the same sample")  # row 2 starts on line 5: row 0 spans two


def test_an_empty_prompt_is_refused(tmp_path):
    edited(tmp_path, lambda f: f.assign(prompt=[""] + list(f["prompt"][1:])))
    refused(tmp_path, "line 2: prompt=nan is empty")


def test_a_sound_table_reads_back_as_written(tmp_path):
    frame = edited(tmp_path, None)
    back = read_samples(samples_csv(tmp_path))
    assert back["prompt"].tolist() == frame["prompt"].tolist() and back["seed"].tolist() == frame["seed"].tolist()


def test_the_command_line_refuses_in_one_line_without_a_traceback(tmp_path):
    edited(tmp_path, lambda f: pd.concat([f, f.iloc[[0]]], ignore_index=True))
    proc = run_module(tmp_path, "bench.aggregate", "--results-dir", str(tmp_path / "results"), "--no-set-level")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert re.fullmatch(r"error: .*samples\.csv: lines 2, 26 record the same sample.*\n", proc.stderr), proc.stderr
