"""TUNE_ARCHIVER_<OPTION>: every option from the environment, named in --help; the
command line wins; a bad value is a usage error naming the variable, not the value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import run_fetch
from tests.standin import StandIn, Status
from tune_archiver.cli.envopts import env_name
from tune_archiver.cli.main import main
from tune_archiver.cli.parser import build_parser


def every_option() -> list[tuple[str, str, str]]:
    """(command, option, help) of every long option of every command."""
    parser = build_parser()
    [commands] = [a for a in parser._actions if a.choices and isinstance(a.choices, dict)]
    assert isinstance(commands.choices, dict)
    return [
        (command, action.option_strings[-1], action.help or "")
        for command, sub in commands.choices.items()
        for action in sub._actions
        if env_name(action)
    ]


def test_help_names_the_variable_of_every_option() -> None:
    """Each option's help ends with "(env TUNE_ARCHIVER_<OPTION>)"."""
    options = every_option()
    assert len(options) > 30
    for command, option, help_text in options:
        name = "TUNE_ARCHIVER_" + option.lstrip("-").replace("-", "_").upper()
        assert f"(env {name})" in help_text, (command, option)


def test_options_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """TUNE_ARCHIVER_ARCHIVE, _JSON and _QUIET act as --archive, --json and -q."""
    (tmp_path / "a" / "manifests").mkdir(parents=True)
    monkeypatch.setenv("TUNE_ARCHIVER_ARCHIVE", str(tmp_path / "a"))
    monkeypatch.setenv("TUNE_ARCHIVER_JSON", "yes")
    monkeypatch.setenv("TUNE_ARCHIVER_QUIET", "1")
    assert main(["list"]) == 0
    assert json.loads(capsys.readouterr().out) == {"tunes": []}


def test_tune_archiver_archive_wins_over_tune_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both set (an old TUNE_ARCHIVE left in a profile, TUNE_ARCHIVER_ARCHIVE in a
    unit), the run uses TUNE_ARCHIVER_ARCHIVE's, as it would --archive's: README says so."""
    (tmp_path / "new" / "manifests").mkdir(parents=True)
    monkeypatch.setenv("TUNE_ARCHIVE", str(tmp_path / "old"))
    monkeypatch.setenv("TUNE_ARCHIVER_ARCHIVE", str(tmp_path / "new"))
    assert main(["list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"tunes": []}
    assert not (tmp_path / "old").exists()


def test_the_command_line_wins_over_the_environment(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TUNE_ARCHIVER_RETRIES=0 fails a file a 503 once refused; --retries 1 wins over it."""
    image = standin.add_file("img", os.urandom(5000))
    standin.add_tune(1, [], [image])
    monkeypatch.setenv("TUNE_ARCHIVER_RETRIES", "0")
    standin.faults["img"] = [Status(503)]
    assert run_fetch(standin, tmp_path / "a", "1") == 1
    standin.faults["img"] = [Status(503)]
    assert run_fetch(standin, tmp_path / "b", "1", "--retries", "1") == 0


@pytest.mark.parametrize("args", [["--all"], ["1", "2"]], ids=["all", "ids"])
def test_an_empty_variable_is_an_option_not_given(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str],
) -> None:
    """TUNE_ARCHIVER_TITLE= and TUNE_ARCHIVER_BRANCH= (an .env template's blanks) leave
    the filters off, as an empty switch is off and an empty ASTRIA_WORKSPACE_ID unset:
    as filters matching only empty text they made --all select no tune, exit 0, and
    tune ids a usage error (--title works with --all)."""
    for tune_id in (1, 2):
        standin.add_tune(tune_id, [standin.add_file(f"c{tune_id}", os.urandom(2_000))], [])
    monkeypatch.setenv("TUNE_ARCHIVER_TITLE", "")
    monkeypatch.setenv("TUNE_ARCHIVER_BRANCH", " ")
    assert run_fetch(standin, tmp_path / "a", *args) == 0
    assert sorted(p.name for p in (tmp_path / "a" / "manifests").glob("*.json")) == [
        "1.json", "2.json"]


def test_a_bad_value_names_the_variable_not_the_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """TUNE_ARCHIVER_CONCURRENCY=sk-SECRET: exit 2, the variable named, the value not."""
    monkeypatch.setenv("TUNE_ARCHIVER_CONCURRENCY", "sk-SECRET")
    assert main(["fetch", "1"]) == 2
    err = capsys.readouterr().err
    assert "TUNE_ARCHIVER_CONCURRENCY: not a positive integer" in err
    assert "sk-SECRET" not in err


@pytest.mark.parametrize(("variable", "value", "said"), [
    ("TUNE_ARCHIVER_ALL", "1", "give tune ids or --all, not both"),
    ("TUNE_ARCHIVER_EXPIRING_WITHIN", "3d", "--expiring-within works with --all"),
    ("TUNE_ARCHIVER_SHARD", "1/2", "--shard works with --all"),
    ("TUNE_ARCHIVER_TITLE", "client-*", "--title works with --all"),
])
def test_a_usage_error_over_a_variable_names_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str,
    value: str, said: str,
) -> None:
    """A cron job's TUNE_ARCHIVER_ALL or _EXPIRING_WITHIN left in a shell made `fetch 1`
    say "--expiring-within works with --all", exit 2, of an option the command line never
    named: the line says which variable gave it."""
    monkeypatch.setenv(variable, value)
    assert main(["fetch", "1"]) == 2
    assert f"error: fetch: {said} ({variable} is set)\n" in capsys.readouterr().err


def test_forgets_usage_error_over_its_variable_names_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """TUNE_ARCHIVER_KEEP_WITHIN (a cron job's forget) left in a shell made `forget 5`
    stop, exit 2, over an option the command line never named, and said not where it
    came from, as fetch's usage errors now do."""
    monkeypatch.setenv("TUNE_ARCHIVER_KEEP_WITHIN", "90d")
    assert main(["forget", "5"]) == 2
    assert ("error: forget: give tune ids or --keep-within, one of them "
            "(TUNE_ARCHIVER_KEEP_WITHIN is set)\n") in capsys.readouterr().err
    assert main(["forget", "5", "--keep-within", "30d"]) == 2
    assert "one of them\n" in capsys.readouterr().err


@pytest.mark.parametrize(("variable", "value", "words", "said"), [
    ("TUNE_ARCHIVER_ALL", "0", ["--all", "1"], "give tune ids or --all, not both"),
    ("TUNE_ARCHIVER_EXPIRING_WITHIN", "3d", ["1", "--expiring-within", "7d"],
     "--expiring-within works with --all"),
    ("TUNE_ARCHIVER_TITLE", "client-*", ["1", "--title", "x*"], "--title works with --all"),
])
def test_a_usage_error_over_the_command_lines_option_names_no_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str,
    value: str, words: list[str], said: str,
) -> None:
    """An option the command line gave is the command line's, whatever the environment
    says: TUNE_ARCHIVER_ALL=0 (off) with `fetch --all 1` was said "(TUNE_ARCHIVER_ALL is
    set)", sending the user to empty a variable that gave nothing, the error unchanged."""
    monkeypatch.setenv(variable, value)
    assert main(["fetch", *words]) == 2
    assert f"error: fetch: {said}\n" in capsys.readouterr().err


def test_a_variable_of_another_command_is_not_this_ones_concern(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad TUNE_ARCHIVER_RETRIES does not stop list, which has no --retries."""
    (tmp_path / "a" / "manifests").mkdir(parents=True)
    monkeypatch.setenv("TUNE_ARCHIVER_RETRIES", "many")
    assert main(["list", "--archive", str(tmp_path / "a")]) == 0


def test_a_usage_error_is_two_lines_in_a_real_process(tmp_path: Path) -> None:
    """In a process of its own (no test's log handlers), a usage error is exactly the
    error line and the pointer to --help."""
    done = subprocess.run([sys.executable, "-m", "tune_archiver", "fetch", "1", "--bad"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["tune-archiver: error: unrecognized arguments: --bad",
                                        "see tune-archiver fetch --help"]
