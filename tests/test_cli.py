"""cli.py: help texts and the usage errors that exit 2 before any request is made."""

from __future__ import annotations

import argparse
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tune_archiver import __version__
from tune_archiver.cli.main import main
from tune_archiver.cli.parser import build_parser, duration
from tune_archiver.cli.scale import shard_or_auto
from tune_archiver.commands import fetch as archive
from tune_archiver.text import time_left


def subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """The parser's subcommand action (there is exactly one)."""
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action


COMMANDS = sorted(subcommands(build_parser()).choices)


@pytest.fixture
def no_fetch(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Replace archive.fetch so that any attempt to start a fetch is recorded and fails."""
    started: list[Any] = []

    async def fetch(*args: Any, **kwargs: Any) -> list[Any]:
        started.append(args)
        raise AssertionError("a fetch started")

    monkeypatch.setattr(archive, "fetch", fetch)
    return started


def test_there_are_subcommands() -> None:
    """The parser has at least the fetch command."""
    assert "fetch" in COMMANDS


@pytest.mark.parametrize("name", COMMANDS)
def test_every_subcommand_has_help(name: str) -> None:
    """Each subcommand has a one-line help in the command list, and every option has help."""
    action = subcommands(build_parser())
    helps = {pseudo.dest: pseudo.help for pseudo in action._choices_actions}
    assert helps.get(name), f"{name} has no help text"
    for option in action.choices[name]._actions:
        assert option.help, f"{name}: {option.dest} has no help text"


@pytest.mark.parametrize("argv", [["--help"], ["fetch", "--help"], ["--version"]])
def test_help_and_version_return_0(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """--help and --version print to stdout and return 0 instead of exiting."""
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "tune-archiver" in out
    if argv == ["--version"]:
        assert __version__ in out


def test_no_command_returns_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Running without a command is a usage error."""
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        *((bad, "not a tune id (a positive integer)")
          for bad in ("abc", "0", "-3", "1.5", "00", " 7", "²")),
    ],
)
def test_bad_tune_id_returns_2_before_any_request(
    bad: str, says: str, capsys: pytest.CaptureFixture[str], no_fetch: list[Any]
) -> None:
    """A tune id that is not a positive integer is refused by the parser, before the key,
    without the value echoed (a key pasted in its place is never printed back)."""
    assert main(["fetch", bad]) == 2
    err = capsys.readouterr().err
    assert "argument TUNE_ID" in err
    assert says in err
    assert repr(bad) not in err
    assert "API key" not in err  # refused before the missing key was even noticed
    assert no_fetch == []


@pytest.mark.parametrize("bad", ["\u0663", "9" * 5000, "1" * 19],
                         ids=["arabic", "long", "19 digits"])
def test_a_tune_id_of_other_digits_returns_2_saying_why(
    bad: str, capsys: pytest.CaptureFixture[str], no_fetch: list[Any]
) -> None:
    """A tune id of digits that are not 0-9, or longer than int() reads, is "not a tune id":
    5,000 nines said "invalid tune_id value" (the function's name), and '\u0663' (an
    Arabic-Indic 3) fetched tune 3, which no --ids-from line can name; nor can one of
    more than 18 digits (none is so long), which went to the API as a tune not found."""
    assert main(["fetch", bad]) == 2
    assert "argument TUNE_ID: not a tune id (a positive integer)" in capsys.readouterr().err
    assert no_fetch == []


@pytest.mark.parametrize("option", ["--concurrency", "--retries"])
def test_a_count_of_other_digits_returns_2_saying_why(
    option: str, capsys: pytest.CaptureFixture[str], no_fetch: list[Any]
) -> None:
    """--concurrency \u00b2 said "invalid positive_int value"; now the rule's own words."""
    assert main(["fetch", "1", option, "\u00b2"]) == 2
    assert "invalid" not in capsys.readouterr().err
    assert no_fetch == []


@pytest.mark.parametrize(("words", "says"), [
    (["forget", "--keep-within", "\u0663d"], "argument --keep-within: not a duration"),
    (["fetch", "1", "--limit-rate", "\u0663M"], "argument --limit-rate: not a rate"),
    (["fetch", "1", "--split-threshold", "\u0663M"], "argument --split-threshold: not a size"),
])
def test_a_duration_or_size_of_other_digits_returns_2(
    words: list[str], says: str, capsys: pytest.CaptureFixture[str], no_fetch: list[Any]
) -> None:
    """'\u0663d' (an Arabic-Indic 3) was read as 3 days, '\u0663M' as 3 MiB: a value
    only 0-9 write is refused as the tune ids are, not taken for another."""
    assert main(words) == 2
    assert says in capsys.readouterr().err
    assert no_fetch == []


@pytest.mark.parametrize("bad", ["\u00b2/3", "\u0663/4", "1/" + "9" * 5000],
                         ids=["superscript", "arabic", "long"])
def test_a_shard_of_other_digits_returns_2_saying_why(
    bad: str, capsys: pytest.CaptureFixture[str], no_fetch: list[Any]
) -> None:
    """--shard \u00b2/3 said "invalid shard_or_auto value" (a function's name), and
    '\u0663/4' (an Arabic-Indic 3) took shard 3/4; now the rule's own words."""
    assert main(["fetch", "--all", "--shard", bad]) == 2
    assert "not a shard K/N" in capsys.readouterr().err
    assert no_fetch == []


@pytest.mark.parametrize("text", [" 1/2", "1/2 ", "\t1/2\n", " auto "])
def test_a_shard_with_spaces_around_it_is_taken(text: str) -> None:
    """--shard ' 1/2' (as a cron line's quoting leaves it) is shard 1 of 2, as ' auto '
    is auto: it was refused, exit 2, while auto and the job runners' variables took
    their spaces off."""
    assert shard_or_auto(text) == ("auto" if "auto" in text else (1, 2))


def test_bad_tune_id_among_good_ones_returns_2(
    capsys: pytest.CaptureFixture[str], no_fetch: list[Any]
) -> None:
    """One bad id among good ones refuses the whole command."""
    assert main(["fetch", "1", "x", "2"]) == 2
    assert "not a tune id (a positive integer)" in capsys.readouterr().err
    assert no_fetch == []


@pytest.mark.parametrize(
    "option", [["--concurrency", "0"], ["--concurrency", "-1"], ["--retries", "-1"],
               ["--read-timeout", "0"], ["--read-timeout", "nan"], ["--only", "videos"]],
)
def test_bad_option_values_return_2(
    option: list[str], capsys: pytest.CaptureFixture[str], no_fetch: list[Any]
) -> None:
    """Out-of-range option values are usage errors."""
    assert main(["fetch", "1", *option]) == 2
    assert option[0] in capsys.readouterr().err
    assert no_fetch == []


@pytest.mark.parametrize("value", ["1001", "99999999999999999999"])
def test_concurrency_past_the_most_returns_2(
    value: str, capsys: pytest.CaptureFixture[str], no_fetch: list[Any]
) -> None:
    """--concurrency above 1000 is a usage error: a run starts two workers per slot
    before any request, and 10**20 of them never finished starting (nor heard Ctrl-C)."""
    assert main(["fetch", "1", "--concurrency", value]) == 2
    assert "--concurrency: at most 1000 at once" in capsys.readouterr().err
    assert no_fetch == []


def test_missing_api_key_returns_2(
    capsys: pytest.CaptureFixture[str], no_fetch: list[Any]
) -> None:
    """Without ASTRIA_API_KEY or --api-key-file, fetch says how to give a key and exits 2."""
    assert main(["fetch", "1"]) == 2
    err = capsys.readouterr().err
    assert "no API key" in err
    assert "ASTRIA_API_KEY" in err
    assert no_fetch == []


def test_a_key_given_as_the_key_files_path_is_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    no_fetch: list[Any],
) -> None:
    """The key pasted where --api-key-file wants a path: 'cannot read the API key file
    sk_live_...: [Errno 2] No such file or directory: 'sk_live_...'' showed it twice, on
    the terminal and in a cron's mail. A bare word no file has is not shown."""
    monkeypatch.chdir(tmp_path)
    assert main(["fetch", "1", "--api-key-file", "sk_live_Secret123"]) == 2
    err = capsys.readouterr().err
    assert "Secret123" not in err
    assert "cannot read the API key file named on the command line: No such file" in err
    assert err.count("\n") == 1
    assert no_fetch == []


def test_a_key_given_as_the_key_files_path_is_not_in_the_verbose_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    no_fetch: list[Any],
) -> None:
    """With -v (a cron line's, to see why a run failed) the error's traceback showed the
    chained FileNotFoundError, 'No such file or directory: 'sk_live_...'', the key whole."""
    monkeypatch.chdir(tmp_path)
    assert main(["fetch", "1", "--api-key-file", "sk_live_Secret123", "-v"]) == 2
    err = capsys.readouterr().err
    assert "Secret123" not in err
    assert "cannot read the API key file named on the command line: No such file" in err
    assert no_fetch == []


def test_missing_key_file_returns_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_fetch: list[Any],
) -> None:
    """An unreadable --api-key-file is a clear one-line error, even with the env key set."""
    monkeypatch.setenv("ASTRIA_API_KEY", "from-env")
    missing = tmp_path / "nope.key"
    assert main(["fetch", "1", "--api-key-file", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"cannot read the API key file {missing}" in err
    assert "Traceback" not in err
    assert err.count("\n") == 1
    assert no_fetch == []


@pytest.mark.parametrize("content", ["", "\n", "  \n\t"])
def test_empty_key_file_returns_2(
    content: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_fetch: list[Any]
) -> None:
    """An empty (or blank) key file is reported as empty, not used as a key."""
    key_file = tmp_path / "empty.key"
    key_file.write_text(content)
    assert main(["fetch", "1", "--api-key-file", str(key_file)]) == 2
    err = capsys.readouterr().err
    assert f"the API key file {key_file} is empty" in err
    assert "Traceback" not in err
    assert no_fetch == []


@pytest.mark.parametrize("url", ["ftp://x", "file:///etc", "api.astria.ai"])
def test_bad_api_url_returns_2(
    url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_fetch: list[Any],
) -> None:
    """An --api-url that is not http(s) is a configuration error, exit 2, no request."""
    monkeypatch.setenv("ASTRIA_API_KEY", "k")
    assert main(["fetch", "1", "--api-url", url]) == 2
    err = capsys.readouterr().err
    assert "the API URL must start with http:// or https://" in err
    assert "Traceback" not in err
    assert no_fetch == []


def test_bad_api_url_from_env_returns_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], no_fetch: list[Any]
) -> None:
    """ASTRIA_API_URL is checked the same way as --api-url."""
    monkeypatch.setenv("ASTRIA_API_KEY", "k")
    monkeypatch.setenv("ASTRIA_API_URL", "ftp://x")
    assert main(["fetch", "1"]) == 2
    assert "API URL" in capsys.readouterr().err
    assert no_fetch == []


@pytest.mark.parametrize("url", ["http://[::1", "https://[api.astria.ai]",
                                 "http://127.0.0.1:99999", "https://api.astria.ai:4x3",
                                 "https://api..astria.ai", f"https://{'a' * 64}.ai"])
def test_malformed_api_url_returns_2(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    no_fetch: list[Any],
) -> None:
    """An --api-url that cannot be parsed (an IPv6 bracket left open, a port out of range
    or not a number, a host with an empty or too long label) is a configuration error,
    exit 2: not a traceback, nor exit 1 with each tune failing on it."""
    monkeypatch.setenv("ASTRIA_API_KEY", "k")
    assert main(["fetch", "1", "--api-url", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tune-archiver: error: the API URL is malformed: ")
    assert "Traceback" not in err
    assert no_fetch == []


@pytest.mark.parametrize("url", ["https://bob:hunter2pw@api.example",
                                 "bob:hunter2pw@api.example"])  # its scheme forgotten
@pytest.mark.parametrize("argv", [["fetch", "1"], ["fetch", "--all"], ["retrain", "1"]])
def test_an_api_url_with_a_password_returns_2_without_showing_it(
    argv: list[str], url: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], no_fetch: list[Any],
) -> None:
    """An --api-url with a user:password (which aiohttp refuses beside the key's
    Authorization: a traceback for --all, 'internal error' and exit 1 for each tune) is
    a configuration error, exit 2, no request, and its password is never shown, not
    even where the URL is refused for want of http(s)://."""
    monkeypatch.setenv("ASTRIA_API_KEY", "k")
    assert main([*argv, "--api-url", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tune-archiver: error: the API URL ")
    assert "hunter2pw" not in err
    assert "Traceback" not in err
    assert no_fetch == []


@pytest.mark.parametrize(("url", "warned"), [
    ("http://api.astria.ai", True), ("http://203.0.113.7:8080/v1", True),
    ("https://api.astria.ai", False), ("http://127.0.0.1:8080", False),
    ("http://10.1.2.3", False), ("http://localhost:3000", False),
])
def test_an_api_url_in_plain_http_off_this_network_is_warned_of(
    url: str, warned: bool, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], no_fetch: list[Any],
) -> None:
    """An http:// API URL whose host is not on this machine or a private network (a
    mistyped https) sends the key readable to every hop: one warning says so before any
    request; https, loopback and private addresses are not warned of."""
    monkeypatch.setenv("ASTRIA_API_KEY", "sd_plain_key")
    with pytest.raises(AssertionError, match="a fetch started"):
        main(["fetch", "1", "--api-url", url])
    err = capsys.readouterr().err
    assert ("unencrypted" in err) is warned
    assert "sd_plain_key" not in err


def test_key_never_printed_in_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_fetch: list[Any]
) -> None:
    """A key read from a file is scrubbed from an error message that would contain it."""
    key_file = tmp_path / "k.key"
    key_file.write_text("sd_very_secret\n")
    assert main(["fetch", "1", "--api-key-file", str(key_file), "--api-url", "sd_very_secret"]) == 2
    err = capsys.readouterr().err
    assert "sd_very_secret" not in err
    assert "REDACTED" in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [("7d", timedelta(days=7)), ("36h", timedelta(hours=36)), ("90m", timedelta(minutes=90)),
     ("1w", timedelta(weeks=1)), ("1.5d", timedelta(hours=36)), ("0.5h", timedelta(minutes=30)),
     ("2D", timedelta(days=2))],
)
def test_duration_accepts_weeks_days_hours_minutes(text: str, expected: timedelta) -> None:
    """--expiring-within takes a number, fractions too, of w, d, h or m."""
    assert duration(text) == expected


@pytest.mark.parametrize("text", ["7", "7y", "-1d", "1.5.2d", "0h", "0.0d", "d", "", "1e3d",
                                  "36501d", "3000000d", "99999999999w"])
def test_duration_refuses_anything_else(text: str) -> None:
    """Other units, malformed numbers, zero, signs, and windows past a century (now plus
    one leaves the calendar) are usage errors."""
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(None, "-"), (0, "expired"), (59, "under a minute"), (60, "0h 1m"), (3 * 3600 + 600, "3h 10m"),
     (86400 * 12 + 3 * 3600 + 5, "12d 3h")],
)
def test_time_left(seconds: int | None, expected: str) -> None:
    """The list's time-left column: days and hours, or hours and minutes."""
    assert time_left(seconds) == expected


def test_the_program_loads_no_other_command_until_it_runs() -> None:
    """Startup is much of a small fetch: the web server and the archive walkers are
    imported only by their own commands (here in a fresh interpreter)."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, tune_archiver.cli.main; print(*sys.modules)"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    others = ["dry_run", "export", "forget", "gc", "listing", "repair", "retrain"]
    assert "tune_archiver.commands.fetch" in loaded
    assert [name for name in loaded if name.startswith(("aiohttp.web", "tune_archiver.web"))
            or name in {f"tune_archiver.commands.{other}" for other in others}] == []
