"""Attack suite #23, class 5: command-line conventions.

Hydra's own flags pass the pre-check, which composes from the same folders Hydra does (a typo in a config
kept outside the repository is still caught); the seeds' duplicate check is linear; every side entry point
checks its arguments and ends in one line (exit status 2), never a traceback, never writing outside the
results folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cli_checks import check_overrides
from bench.config import ConfigError
from bench.task import check_run_keys
from tests.conftest import compose_cfg, minimal_run, run_cli
from tests.hardening.cli import run_module

RUN = ["model=tiny", "dataset=synthetic_places", "method=sdedit", *minimal_run()]


@pytest.fixture
def outside(tmp_path) -> Path:
    """A config folder outside the repository: an experiment and a primary config of the researcher's own."""
    folder = tmp_path / "my_conf"
    (folder / "experiment").mkdir(parents=True)
    (folder / "experiment" / "mine.yaml").write_text("# @package _global_\ntask_name: mine\nseeds: [7, 8]\n")
    (folder / "primary.yaml").write_text("defaults:\n  - bench\n  - _self_\ntask_name: from_primary\n")
    return folder


def one_line_refusal(proc, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: "), proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert all(w in proc.stderr for w in words), proc.stderr


# --- the examples --------------------------------------------------------------------------------------


FLAG_FORMS = ["--config-dir {}", "--config-dir={}", "-cd {}"]
NAME_FORMS = ["", "--config-name primary", "-cn primary", "--config-name=primary"]


@pytest.mark.parametrize("name", NAME_FORMS)
@pytest.mark.parametrize("flag", FLAG_FORMS)
def test_hydras_config_flags_pass_the_precheck_in_every_form(tmp_path, outside, flag, name):
    """The pre-check reads argv as Hydra does (in-process: it returns, or exits 2 with the message)."""
    flags = [*flag.format(outside).split(), *name.split()]
    check_overrides([*flags, "experiment=mine", *RUN, f"paths.root_dir={tmp_path}"])


def test_config_dir_and_config_name_run_the_outside_configs_end_to_end(tmp_path, outside):
    run = [*RUN, "dry_run=true", f"paths.root_dir={tmp_path}"]
    proc = run_cli(["-cd", str(outside), "-cn", "primary", "experiment=mine", *run], cwd=tmp_path)
    # the outside primary config (its _self_ last: its task_name) with the outside experiment (seeds 7 and 8)
    assert "task_name: from_primary" in proc.stdout and "would generate forest/00000/deer_roaming/s8" in proc.stdout
    proc = run_cli(["--config-dir", str(outside), "experiment=mine", *run], cwd=tmp_path)
    assert "task_name: mine" in proc.stdout and '"planned": 2' in proc.stdout  # one scene and prompt, two seeds


def test_a_typo_beside_an_outside_config_is_caught_before_hydra_writes(tmp_path, outside):
    args = ["-cd", str(outside), "experiment=mine", *RUN, "method.strenght=0.5", f"paths.root_dir={tmp_path}"]
    proc = run_cli(args, tmp_path, check=False, fresh=True)
    one_line_refusal(proc, "unknown config key 'method.strenght'", "'strength'")
    assert not (tmp_path / "outputs").exists()  # the pre-check composed with the outside folder: nothing written


def test_a_typo_inside_an_outside_config_is_named_with_the_allowed_keys(tmp_path, outside):
    """A key that a config file adds is no override error; the method's constructor is checked before any load."""
    (outside / "experiment" / "typo.yaml").write_text("# @package _global_\nmethod:\n  strenght: 0.5\n")
    proc = run_cli(
        ["-cd", str(outside), "experiment=typo", *RUN, f"paths.root_dir={tmp_path}"], tmp_path, check=False, fresh=True
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "error: unknown config key 'method.strenght'" in proc.stderr and "'strength'" in proc.stderr
    assert not list((tmp_path / "outputs").rglob("*.png")) and not list((tmp_path / "outputs").rglob("rows"))


def test_three_thousand_seeds_are_checked_and_a_repeat_is_named():
    seeds = list(range(3000))
    check_run_keys(compose_cfg([*RUN, f"seeds=[{','.join(map(str, seeds))}]"]))  # linear (was over a minute)
    many = list(range(100_000)) + [99_999]
    cfg = compose_cfg(RUN)
    cfg.seeds = many
    with pytest.raises(ConfigError, match=r"seeds=\[100001 seeds\] repeats \[99999\].*list each once"):
        check_run_keys(cfg)


def test_aggregate_refuses_a_task_name_that_would_write_outside_the_results_folder(tmp_path):
    (tmp_path / "results").mkdir()
    proc = run_module(tmp_path, "bench.aggregate", "--results-dir", str(tmp_path / "results"), "--task", "../escape")
    one_line_refusal(proc, "--task '../escape' is not a task name", "outside the results folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"] and not any((tmp_path / "results").iterdir())


# --- further attacks ---------------------------------------------------------------------------------------------


def test_a_config_dir_that_does_not_exist_is_one_line(tmp_path):
    proc = run_cli(
        ["-cd", str(tmp_path / "nope"), *RUN, f"paths.root_dir={tmp_path}"], tmp_path, check=False, fresh=True
    )
    one_line_refusal(proc, f"--config-dir {tmp_path / 'nope'}: no such folder", "Fix:")


def test_a_config_name_that_does_not_exist_is_one_line(tmp_path, outside):
    proc = run_cli(
        ["-cd", str(outside), "-cn", "nope", *RUN, f"paths.root_dir={tmp_path}"], tmp_path, check=False, fresh=True
    )
    one_line_refusal(proc, "--config-name nope: no config nope.yaml in", str(outside))


def entry_point(main, argv: list[str], capsys) -> str:
    """Run an entry point's main in-process: it must exit with status 2 and one line on stderr."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, (info.value.code, err)
    return err


def test_merge_refuses_a_task_that_would_write_outside_and_folders_that_are_not(tmp_path, capsys):
    from bench.merge import main

    (tmp_path / "outputs").mkdir()
    base = ["--output-dir", str(tmp_path / "outputs"), "--results-dir", str(tmp_path / "results")]
    assert "outside the results folder" in entry_point(main, [*base, "--task", "../x"], capsys)
    assert "is not a folder" in entry_point(main, ["--output-dir", str(tmp_path / "none")], capsys)
    assert "no rows for task(s) ['t']" in entry_point(main, [*base, "--task", "t"], capsys)
    assert not (tmp_path / "results").exists() and not (tmp_path / "x").exists()


@pytest.mark.parametrize("task", ["a/b", ".hidden", "", "..", "x" * 101])
def test_aggregate_refuses_every_unsafe_task_name(tmp_path, capsys, task):
    from bench.aggregate import main

    (tmp_path / "results").mkdir()
    err = entry_point(main, ["--results-dir", str(tmp_path / "results"), "--task", task], capsys)
    assert f"--task {task!r} is not a task name" in err and not any((tmp_path / "results").iterdir())


def test_aggregate_refuses_folders_that_are_not(tmp_path, capsys):
    from bench.aggregate import main

    (tmp_path / "file").write_text("x")
    assert "--results-dir" in entry_point(main, ["--results-dir", str(tmp_path / "none")], capsys)
    (tmp_path / "results").mkdir()
    args = ["--results-dir", str(tmp_path / "results"), "--root-dir", str(tmp_path / "file")]
    assert "--root-dir" in entry_point(main, args, capsys)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--shards", "0", "--report-only"], "--shards 0: expected an integer >= 1"),
        (["--report-only", "task_name=../x"], "the study sets task_name itself"),
        (["--report-only", "paths.results_dir=/tmp/x"], "the study sets paths.results_dir itself"),
        (["--report-only"], "samples.csv does not exist"),
    ],
)
def test_attribution_checks_its_arguments(tmp_path, capsys, argv, words):
    from bench.attribution.__main__ import main

    assert words in entry_point(main, [*argv, "--root-dir", str(tmp_path)], capsys)
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "results").exists()


def test_reproduce_refuses_a_root_that_is_a_file_and_an_unsafe_task(tmp_path, capsys):
    from bench.reproduce import main

    (tmp_path / "file").write_text("x")
    assert "--root-dir" in entry_point(main, ["demo", "--root-dir", str(tmp_path / "file")], capsys)
    err = entry_point(main, ["demo", "--root-dir", str(tmp_path), "task_name=../x"], capsys)
    assert "task_name='../x' is not a safe folder name" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
