"""The API key's file and variable: a key of more than one line is refused, a key file
that others may read is used with a warning."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tune_archiver.cli.main import main
from tune_archiver.commands import fetch as archive

KEY = "sd_file_key_0123456789"


@pytest.fixture
def fetches(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Replace archive.fetch by one that records its settings and archives nothing."""
    started: list[Any] = []

    async def fetch(settings: Any, *args: Any, **kwargs: Any) -> list[Any]:
        started.append(settings)
        return []

    monkeypatch.setattr(archive, "fetch", fetch)
    return started


def key_file(tmp_path: Path, content: str, mode: int = 0o600) -> Path:
    path = tmp_path / "astria.key"
    path.write_text(content)
    path.chmod(mode)
    return path


def run(path: Path, tmp_path: Path) -> int:
    return main(["fetch", "1", "--api-key-file", str(path), "--archive", str(tmp_path / "a")])


@pytest.mark.parametrize(
    ("content", "says"),
    [(f"{KEY}\nsecond line\n", "holds more than one line"),
     (f"{KEY}\r\nx", "holds more than one line"),
     (f"{KEY}\x1b[2J", "holds a control character"),
     (f"{KEY}\x00", "holds a control character"),
     (f"{KEY}\u0085x", "holds a control character")],
    ids=["lf", "crlf", "escape", "nul", "c1"],
)
def test_a_key_file_with_a_line_break_or_control_is_refused(
    content: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    fetches: list[Any],
) -> None:
    """A key file holding more than the key is a configuration error: exit 2, one line
    that does not show the key, and no fetch."""
    path = key_file(tmp_path, content)
    assert run(path, tmp_path) == 2
    err = capsys.readouterr().err
    assert err == f"tune-archiver: error: the API key file {path} {says}; it must hold the " \
                  "API key alone\n"
    assert fetches == []


def test_a_key_with_a_line_break_in_the_environment_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    fetches: list[Any],
) -> None:
    """ASTRIA_API_KEY with an embedded newline is a configuration error too."""
    monkeypatch.setenv("ASTRIA_API_KEY", f"{KEY}\nX-Injected: 1")
    assert main(["fetch", "1", "--archive", str(tmp_path / "a")]) == 2
    assert "ASTRIA_API_KEY holds more than one line" in capsys.readouterr().err
    assert fetches == []


def test_a_key_file_too_large_for_a_key_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fetches: list[Any]
) -> None:
    """A key file of more than 4 KiB (the wrong file; /dev/zero never ends) is a
    configuration error, read no further: it was read whole and sent, and the API's
    400 made it exit 1 as a failed tune."""
    path = key_file(tmp_path, "k" * 2**20)
    assert run(path, tmp_path) == 2
    assert capsys.readouterr().err == (
        f"tune-archiver: error: the API key file {path} is larger than 4 KiB; it must hold "
        "the API key alone\n")
    assert fetches == []


def test_a_key_too_long_in_the_environment_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    fetches: list[Any],
) -> None:
    """ASTRIA_API_KEY of more than 4096 characters (a file pasted into it) is refused too."""
    monkeypatch.setenv("ASTRIA_API_KEY", "k" * 5000)
    assert main(["fetch", "1", "--archive", str(tmp_path / "a")]) == 2
    assert "ASTRIA_API_KEY is longer than 4096 characters" in capsys.readouterr().err
    assert fetches == []


@pytest.mark.parametrize("content", [f"{KEY}\n", f"  {KEY}\r\n", f"{KEY}", f"\ufeff{KEY}\r\n"],
                         ids=["lf", "crlf", "bare", "bom"])
def test_a_key_file_with_one_line_is_used(
    content: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], fetches: list[Any]
) -> None:
    """A 0600 key file of one line (with or without its line ending, or the byte order mark
    Notepad writes) gives the key, and nothing is printed."""
    assert run(key_file(tmp_path, content), tmp_path) == 0
    assert [settings.api_key for settings in fetches] == [KEY]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_a_key_file_others_may_open_gives_one_warning(
    mode: int, tmp_path: Path, capsys: pytest.CaptureFixture[str], fetches: list[Any]
) -> None:
    """A key file open to group or others is used, after one warning line naming its mode."""
    path = key_file(tmp_path, KEY, mode)
    assert run(path, tmp_path) == 0
    assert [settings.api_key for settings in fetches] == [KEY]
    assert capsys.readouterr().err == (
        f"tune-archiver: warning: the API key file {path} can be read or changed by group "
        f"or others (mode {mode:04o}); chmod 600 it\n"
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_key_file_owned_by_another_user_gives_one_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fetches: list[Any]
) -> None:
    """A 0600 key file owned by another uid is used, after one warning line naming it."""
    path = key_file(tmp_path, KEY)
    os.chown(path, 54321, -1)
    assert run(path, tmp_path) == 0
    assert [settings.api_key for settings in fetches] == [KEY]
    assert capsys.readouterr().err == (
        f"tune-archiver: warning: the API key file {path} is owned by uid 54321, not by you "
        f"(uid {os.geteuid()})\n"
    )
