"""samples.csv as the tables read it: checked whole before any number is computed (docs/guarantees.md).

`read_samples(path)` returns the rows of a samples table written by this harness (`bench.records.write_csv`:
formula-safe text is restored) or refuses it with one line (`ResultsError`) that names the file, the line and
the fix. A table edited by hand, cut short, or written by another version is refused when:

- the file is empty (0 bytes), cannot be parsed, repeats a column, or holds a header and no row;
- a column every row has (`REQUIRED`) is missing;
- a row's seed is not an integer, its status is not ok/failed, its model, dataset, label or ablation is not a
  safe folder name, or its image_id or prompt is empty;
- a metric column (bench.metrics.PER_SAMPLE_METRICS) holds a value that is not a number;
- a path (`PATH_COLUMNS`) climbs out of the root folder ('..'), or does not end as the harness names it;
- two rows record the same sample (the same model, dataset, label, ablation, image, prompt and seed).

Line numbers are the file's: the header is line 1, the first row line 2 (a row spanning several lines, a
prompt with a newline, counts as one).
"""

from __future__ import annotations

import csv
import numbers
import re
from collections import Counter
from pathlib import Path, PurePath

import numpy as np
import pandas as pd

from bench.config import is_safe_name
from bench.metrics import PER_SAMPLE_METRICS
from bench.records import KEY_COLUMNS, LEADING_COLUMNS, read_csv

REQUIRED = LEADING_COLUMNS  # every row the harness writes has these (bench.records)
# Read as text whatever they hold (a prompt '1984' or 'NA' stays the prompt it was).
TEXT_COLUMNS = [c for c in LEADING_COLUMNS if c != "seed"]
SAFE_NAME_COLUMNS = ("model", "dataset", "label", "ablation")  # each names a folder of a run
# Path columns -> how the file they name ends ("" for a folder).
PATH_COLUMNS = {"image_path": ".png", "reference_path": ".png", "masks_dir": "", "truth_path": ".npz"}
STATUSES = ("ok", "failed")


class ResultsError(ValueError):
    """A results table that cannot be trusted; the message names the file, the line and the fix."""


def read_samples(path: str | Path) -> pd.DataFrame:
    """The rows of `path` (results/<task>/samples.csv), validated (module docstring); FileNotFoundError if absent."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `python -m bench.run task_name={path.parent.name}` first.")
    merge = f"rebuild it from the rows with `python -m bench.merge --task {path.parent.name}`"
    rebuild = f"Fix: {merge}"
    if path.stat().st_size == 0:
        raise ResultsError(f"{path} is empty (0 bytes): it was cut short or never written. {rebuild}.")
    header = read_header(path, rebuild)
    try:
        samples = read_csv(path, dtype={c: str for c in TEXT_COLUMNS if c in header})
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise ResultsError(f"{path} cannot be read as a CSV table ({' '.join(str(exc).split())}). {rebuild}.") from None
    if samples.empty:
        raise ResultsError(
            f"{path} holds a header and no row: no sample of task {path.parent.name} is recorded. Fix: run "
            f"`python -m bench.run task_name={path.parent.name} ...` (it rebuilds this file), then aggregate again."
        )
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ResultsError(
            f"{path} lacks the columns {missing}: it is not a samples table of this version of the harness. {rebuild}."
        )
    lines = row_lines(path, len(samples))
    for check in (check_types, check_metrics, check_paths, check_duplicates):
        problem = check(samples, lines)
        if problem:
            raise ResultsError(f"{path}: {problem}. Fix that line (or {merge}).")
    return samples


def read_header(path: Path, rebuild: str) -> list[str]:
    """The header's column names; refuses a file that is not UTF-8 text or repeats a column."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), [])
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ResultsError(f"{path} is not a UTF-8 CSV file ({exc}). {rebuild}.") from None
    repeated = sorted(c for c, n in Counter(header).items() if n > 1)
    if repeated:
        raise ResultsError(f"{path} line 1 repeats the columns {repeated}: a table has each column once. {rebuild}.")
    return header


def row_lines(path: Path, n_rows: int) -> list[int]:
    """The file line on which each row starts (the header is line 1; a quoted newline continues a row)."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        lines, start = [], reader.line_num + 1
        for row in reader:
            if row:  # a blank line is no row (pandas skips it too)
                lines.append(start)
            start = reader.line_num + 1
    return lines if len(lines) == n_rows else list(range(2, 2 + n_rows))


def first_bad(samples: pd.DataFrame, lines: list[int], column: str, ok) -> str:
    """'line L: <column> = <value>' for the first row whose `column` value fails `ok`, else ""."""
    for position, value in enumerate(samples[column]):
        if not ok(value):
            return f"line {lines[position]}: {column}={value!r}"
    return ""


def is_integer_value(value) -> bool:
    """An integer, or the text of one (a seed): not 1.5, not 'abc', not empty."""
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return True
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]+", value.strip()) is not None


def is_text(value) -> bool:
    return isinstance(value, str) and value != ""


def check_types(samples: pd.DataFrame, lines: list[int]) -> str:
    """The first row whose seed, status, folder names, image id or prompt is of the wrong kind ("" if none)."""
    rules = [
        ("seed", is_integer_value, "is not an integer"),
        ("status", lambda v: v in STATUSES, f"is not one of {STATUSES}"),
        *((c, is_safe_name, "is not a safe folder name (letters, digits and . _ + = -)") for c in SAFE_NAME_COLUMNS),
        ("image_id", is_text, "is empty"),
        ("prompt", is_text, "is empty"),
    ]
    for column, ok, expected in rules:
        bad = first_bad(samples, lines, column, ok)
        if bad:
            return f"{bad} {expected}"
    return ""


def is_number(value) -> bool:
    if pd.isna(value):
        return True  # a missing value: its reason is in <metric>_nan_reason
    try:
        float(value)
        return not isinstance(value, bool)
    except (TypeError, ValueError):
        return False


def check_metrics(samples: pd.DataFrame, lines: list[int]) -> str:
    """The first metric value that is not a number ("" if none): the tables would count it as missing."""
    for column in (c for c in PER_SAMPLE_METRICS if c in samples.columns):
        bad = first_bad(samples, lines, column, is_number)
        if bad:
            return f"{bad} is not a number (a metric column holds numbers, or nothing when missing)"
    return ""


def path_problem(value, suffix: str) -> str:
    """Why a path cell cannot be read safely ("" when it can, or when it is empty)."""
    if pd.isna(value) or value == "":
        return ""
    if not isinstance(value, str):
        return "is not a path"
    parts = PurePath(value).parts
    if ".." in parts:
        return "climbs out of its folder ('..'): rows hold paths under paths.root_dir"
    if suffix and not value.endswith(suffix):
        return f"does not end in {suffix} as the harness names these files"
    return ""


def check_paths(samples: pd.DataFrame, lines: list[int]) -> str:
    """The first path that escapes the root folder or is not a file the harness writes ("" if none)."""
    for column, suffix in PATH_COLUMNS.items():
        if column not in samples.columns:
            continue
        for position, value in enumerate(samples[column]):
            problem = path_problem(value, suffix)
            if problem:
                return f"line {lines[position]}: {column}={value!r} {problem}"
    return ""


def plain(value):
    """A numpy scalar as the Python value it holds (as a message shows it)."""
    return value.item() if isinstance(value, np.generic) else value


def check_duplicates(samples: pd.DataFrame, lines: list[int]) -> str:
    """The first sample recorded twice ("" if none): one row per sample, else N is inflated."""
    keys = samples[KEY_COLUMNS].astype(str).agg("\x1f".join, axis=1)
    repeated = keys[keys.duplicated(keep=False)]
    if repeated.empty:
        return ""
    first = repeated.iloc[0]
    where = [lines[i] for i in repeated.index[repeated == first]]
    row = samples.loc[repeated.index[0], KEY_COLUMNS]
    identity = ", ".join(f"{k}={plain(row[k])!r}" for k in KEY_COLUMNS)
    return (
        f"lines {', '.join(map(str, where))} record the same sample ({identity}); "
        f"{len(repeated)} rows in all share their sample with another row, which would inflate N"
    )
