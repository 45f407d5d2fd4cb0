"""Slips a user makes by hand or in a cron line: the tool does what was meant when it
safely can, else says in one line what to change."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.helpers import Sleeps
from tests.standin import StandIn
from tune_archiver.cli.main import main


def _one_tune(standin: StandIn) -> None:
    standin.add_tune(788416, [standin.add_file("ckpt", os.urandom(4_000))],
                     [standin.add_file("img", os.urandom(3_000))])


def _fetch(standin: StandIn, *args: str) -> int:
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    return main(["fetch", "788416", "--api-url", standin.api_url, *args],
                sleep=Sleeps(), clock=lambda: datetime.now(UTC))


@pytest.mark.parametrize("given", ["option", "env"])
def test_an_archive_under_a_quoted_tilde_is_the_home_folders(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    # A cron line's --archive "~/astria" (or TUNE_ARCHIVE=~/astria): no shell reads the ~.
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    _one_tune(standin)
    if given == "env":
        monkeypatch.setenv("TUNE_ARCHIVE", "~/astria")
    assert _fetch(standin, *(["--archive", "~/astria"] if given == "option" else [])) == 0
    assert (home / "astria" / "manifests" / "788416.json").is_file()
    assert not (tmp_path / "~").exists()
    assert main(["verify", "--archive", "~/astria"]) == 0



@pytest.mark.parametrize("pasted", ["Bearer {key}", "bearer  {key}", "Authorization: Bearer {key}"])
@pytest.mark.parametrize("given", ["file", "env"])
def test_a_key_pasted_with_its_bearer_is_sent_as_the_key(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], pasted: str, given: str,
) -> None:
    # Copied whole from the API's docs or a curl line: the header read "Bearer Bearer
    # KEY", the API said 401, exit 3, and nothing said why.
    _one_tune(standin)
    text = pasted.format(key=standin.api_key)
    args = ["--archive", str(tmp_path / "archive"), "--api-url", standin.api_url]
    if given == "file":
        (tmp_path / "key").write_text(text + "\n")
        (tmp_path / "key").chmod(0o600)
        args += ["--api-key-file", str(tmp_path / "key")]
    else:
        monkeypatch.setenv("ASTRIA_API_KEY", text)
    code = main(["fetch", "788416", *args], sleep=Sleeps(), clock=lambda: datetime.now(UTC))
    assert code == 0, capsys.readouterr().err
    sent = {r.headers.get("Authorization") for r in standin.seen("api")}
    assert sent == {f"Bearer {standin.api_key}"}


@pytest.mark.parametrize("command", [["fetch", "788416"], ["verify"], ["list"], ["gc"]])
def test_an_empty_archive_option_returns_2_and_archives_nowhere(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    # A cron line's --archive "$DEST" with DEST unset: fetch archived into ./tune-archive
    # wherever cron stood, exit 0, and verify checked that one.
    _one_tune(standin)
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    (tmp_path / "tune-archive").mkdir()
    (tmp_path / "tune-archive" / "manifests").mkdir()
    api = ["--api-url", standin.api_url] if command[0] == "fetch" else []
    assert main([*command, "--archive", "", *api]) == 2
    assert "--archive is empty" in capsys.readouterr().err
    assert list((tmp_path / "tune-archive").iterdir()) == [tmp_path / "tune-archive" / "manifests"]
    assert not standin.seen("api")


def test_an_export_under_a_quoted_tilde_is_in_the_home_folder(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # export 788416 "~/astria-export": the photos went into a folder named "~" wherever
    # the run stood.
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    _one_tune(standin)
    assert _fetch(standin, "--archive", str(tmp_path / "archive")) == 0
    assert main(["export", "788416", "~/astria-export", "--archive",
                 str(tmp_path / "archive")]) == 0
    assert (home / "astria-export" / "788416-tune-788416" / "manifest.json").is_file()
    assert not (tmp_path / "~").exists()


@pytest.mark.parametrize("pasted", [
    "https://www.astria.ai/tunes/788416", "https://www.astria.ai/tunes/788416.json",
    "https://astria.ai/tunes/788416/", "https://www.astria.ai/tunes/788416/prompts#top",
])
def test_a_tune_pasted_as_its_astria_url_is_fetched_by_its_id(
    standin: StandIn, tmp_path: Path, pasted: str
) -> None:
    # From the browser's address bar, or the tune's own "url" field: refused, exit 2.
    _one_tune(standin)
    os.environ["ASTRIA_API_KEY"] = standin.api_key
    assert main(["fetch", pasted, "--archive", str(tmp_path / "archive"), "--api-url",
                 standin.api_url], sleep=Sleeps(), clock=lambda: datetime.now(UTC)) == 0
    assert (tmp_path / "archive" / "manifests" / "788416.json").is_file()


@pytest.mark.parametrize("other", [
    "https://evil.example/tunes/788416", "https://www.astria.ai/tunes/78x", "788416 ",
    "https://www.astria.ai/prompts/788416", "https://www.astria.ai/tunes/788416 7",
])
def test_other_urls_and_text_are_still_no_tune_id(
    other: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fetch", other]) == 2
    assert "not a tune id" in capsys.readouterr().err


def test_a_key_set_under_another_name_is_named_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key exported as ASTRIA_TOKEN (a guess, another tool's name) met 'no API key: set
    ASTRIA_API_KEY', which reads as if no key was given at all: the line names the
    variable that is set, and never its value."""
    monkeypatch.delenv("ASTRIA_API_KEY", raising=False)
    monkeypatch.setenv("ASTRIA_TOKEN", "sd_secret_0123456789")
    assert main(["fetch", "788416", "--archive", str(tmp_path / "archive")]) == 2
    err = capsys.readouterr().err
    assert "no API key" in err
    assert "ASTRIA_TOKEN is set, but the key is read from ASTRIA_API_KEY" in err
    assert "sd_secret" not in err



@pytest.mark.parametrize("given", ["option", "env"])
@pytest.mark.parametrize("stray", ["{archive} ", " {archive}", "{archive}\t", "{archive} /"])
def test_an_archive_named_with_a_stray_space_is_refused_not_made(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], given: str, stray: str,
) -> None:
    # --archive "$DEST " in a cron line, or TUNE_ARCHIVE=/backups/c4 with a space left at
    # its end in a .env: fetch made a folder 'c4 ' beside the real archive c4, archived
    # there, exit 0, and c4 was never updated.
    _one_tune(standin)
    real = tmp_path / "c4"
    assert _fetch(standin, "--archive", str(real)) == 0
    named = stray.format(archive=real)
    capsys.readouterr()
    if given == "env":
        monkeypatch.setenv("TUNE_ARCHIVE", named)
    assert _fetch(standin, *(["--archive", named] if given == "option" else [])) == 2
    assert repr(named) in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == [real]


def test_an_existing_archive_whose_name_ends_in_a_space_is_used(
    standin: StandIn, tmp_path: Path
) -> None:
    # One made so on purpose (the refusal is of a new folder alone) stays usable.
    _one_tune(standin)
    (tmp_path / "c4 ").mkdir(mode=0o700)
    assert _fetch(standin, "--archive", str(tmp_path / "c4 ")) == 0
    assert main(["verify", "--archive", str(tmp_path / "c4 ")]) == 0
    # and a new archive made inside a folder so named ("My Drive " on a share)
    assert _fetch(standin, "--archive", str(tmp_path / "c4 " / "new")) == 0
