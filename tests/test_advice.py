"""A command a line says to run works when pasted by hand: it names what the run needed to
reach the API (--api-key-file, --workspace, --api-url), never the key itself."""

from __future__ import annotations

import os
import shlex
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.archive_helpers import add_tune, cli, manifest_of
from tests.helpers import blob_file, run_fetch, stored_blobs
from tests.standin import StandIn, Status

NOW = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)


def said_command(line: str, start: str, end: str) -> list[str]:
    """The words of the command a line says to run, between `start` and `end`, as a
    shell reads them (the 'tune-archiver' first left out)."""
    words = shlex.split(line.split(start, 1)[1].rsplit(end, 1)[0])
    assert words[0] == "tune-archiver"
    return words[1:]


@pytest.fixture
def key_file(standin: StandIn, tmp_path: Path) -> Path:
    path = tmp_path / "astria keys" / "the key"
    path.parent.mkdir()
    path.write_text(standin.api_key + "\n")
    path.chmod(0o600)
    return path


def test_fetch_advice_for_a_tune_about_to_expire_reaches_its_workspace(
    capsys: pytest.CaptureFixture[str], standin: StandIn, tmp_path: Path, key_file: Path
) -> None:
    """A cron line with --api-key-file and --workspace whose tune failed hours before
    Astria deletes it said 'run tune-archiver fetch 1 --archive A again before then':
    pasted by hand, that run had no key ("no API key", exit 2), and with one, asked in the
    personal scope, where the tune is not listed. It names both now, and works."""
    add_tune(standin, 1, expires_at="2026-12-10T17:30:00Z")
    standin.tune_workspaces[1] = "5"
    standin.tunes[1]["orig_images"].append(standin.file_url("late.jpg"))
    archive = tmp_path / "archive"
    ran = cli(capsys, "fetch", "1", "-q", "--archive", str(archive), "--api-key-file",
              str(key_file), "--workspace", "5", "--api-url", standin.api_url, now=NOW)
    assert ran.code == 1
    [line] = [line for line in ran.errors if "deletes it" in line]
    assert standin.api_key not in line
    argv = said_command(line, ": run ", " again before then")
    standin.add_file("late.jpg", os.urandom(3_000))
    os.chdir(tmp_path / "astria keys")  # by hand, from another folder
    assert cli(capsys, *argv, now=NOW).code == 0


def test_verify_repair_advice_carries_the_api_options(
    capsys: pytest.CaptureFixture[str], standin: StandIn, tmp_path: Path, key_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """verify --repair's '(retry: tune-archiver fetch 1 ...)' for a file it could not get
    names the key file and the workspace given as TUNE_ARCHIVER_<OPTION>s (a crontab's
    environment, not the shell's a user pastes into), and not the key."""
    add_tune(standin, 1)
    standin.tune_workspaces[1] = "5"
    standin.tunes[1]["orig_images"].append(standin.file_url("late.jpg"))
    archive = tmp_path / "archive"
    monkeypatch.setenv("TUNE_ARCHIVER_API_KEY_FILE", str(key_file))
    monkeypatch.setenv("TUNE_ARCHIVER_WORKSPACE", "5")
    monkeypatch.setenv("TUNE_ARCHIVER_API_URL", standin.api_url)
    assert cli(capsys, "fetch", "1", "--archive", str(archive)).code == 1
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive))
    assert ran.code == 1
    [line] = [line for line in ran.errors if "(retry: " in line]
    assert standin.api_key not in line
    argv = said_command(line, "(retry: ", ")")
    for name in ("TUNE_ARCHIVER_API_KEY_FILE", "TUNE_ARCHIVER_WORKSPACE",
                 "TUNE_ARCHIVER_API_URL"):
        monkeypatch.delenv(name)
    standin.add_file("late.jpg", os.urandom(3_000))
    assert cli(capsys, *argv).code == 0
    assert cli(capsys, "verify", "--archive", str(archive)).code == 0


def test_a_key_from_the_environment_stays_there(
    capsys: pytest.CaptureFixture[str], standin: StandIn, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ASTRIA_API_KEY is never written into a command a line says to run."""
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
    add_tune(standin, 1, expires_at="2026-12-10T17:30:00Z")
    standin.tunes[1]["orig_images"].append(standin.file_url("late.jpg"))
    ran = cli(capsys, "fetch", "1", "-q", "--archive", str(tmp_path / "a"), "--api-url",
              standin.api_url, now=NOW)
    [line] = [line for line in ran.errors if "deletes it" in line]
    assert standin.api_key not in line
    assert said_command(line, ": run ", " again before then") == [
        "fetch", "1", "--archive", str(tmp_path / "a"), "--api-url", standin.api_url]


def test_the_verify_said_of_a_deleted_tune_lacking_files_names_the_archive(
    capsys: pytest.CaptureFixture[str], standin: StandIn, tmp_path: Path
) -> None:
    """fetch --all --ids-from's line for a tune deleted upstream whose blob the archive
    lost said '(see tune-archiver verify 2)': pasted, it verified ./tune-archive, which
    is none ("no archive", exit 2), not the archive lacking the file."""
    add_tune(standin, 1)
    add_tune(standin, 2)
    ids = tmp_path / "keep.txt"
    ids.write_text("1\n2\n")
    archive = tmp_path / "my archive"
    assert run_fetch(standin, archive, "--all", "--ids-from", str(ids)) == 0
    del standin.tunes[2]
    (lost,) = [b for b in stored_blobs(archive)
               if b.read_bytes() == standin.files["ckpt-2.safetensors"]]
    lost.unlink()
    capsys.readouterr()
    assert run_fetch(standin, archive, "--all", "--ids-from", str(ids)) == 1
    [line] = [line for line in capsys.readouterr().err.splitlines() if "(see " in line]
    argv = said_command(line, "(see ", ")")
    ran = cli(capsys, *argv)
    assert ran.code == 1
    assert [e for e in ran.errors if "checkpoint 0: missing" in e]


def test_a_key_piped_in_is_not_named_again(
    capsys: pytest.CaptureFixture[str], standin: StandIn, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A key given through a pipe (`--api-key-file <(pass show astria)`, which README
    supports) was named as its /dev/fd/N: pasted by hand, that is no file of the user's
    shell ("cannot read the API key file", exit 2), though ASTRIA_API_KEY was set there.
    Only a regular file is named again; a pipe's key is the user's shell's to give."""
    add_tune(standin, 1, expires_at="2026-12-10T17:30:00Z")
    standin.tunes[1]["orig_images"].append(standin.file_url("late.jpg"))
    archive = tmp_path / "archive"
    read_end, write_end = os.pipe()
    os.write(write_end, standin.api_key.encode() + b"\n")
    os.close(write_end)
    try:
        ran = cli(capsys, "fetch", "1", "-q", "--archive", str(archive), "--api-key-file",
                  f"/dev/fd/{read_end}", "--api-url", standin.api_url, now=NOW)
    finally:
        os.close(read_end)
    assert ran.code == 1
    [line] = [line for line in ran.errors if "deletes it" in line]
    argv = said_command(line, ": run ", " again before then")
    assert "--api-key-file" not in argv
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)  # the shell pasted into
    standin.add_file("late.jpg", os.urandom(3_000))
    assert cli(capsys, *argv, now=NOW).code == 0


def test_the_fetch_said_of_a_prompt_of_another_workspace_names_the_archive(
    capsys: pytest.CaptureFixture[str], standin: StandIn, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run of the personal scope said of a failed file of a prompt made in another
    workspace 'run tune-archiver fetch 10 --prompts --workspace all', with no --archive:
    pasted, it archived the tune into a ./tune-archive of its own, exit 0, and the
    cron's archive kept the file failed. The line names this run's options now (the
    manifest keeps the text without them), --workspace all last, as said."""
    standin.scoped_prompts = True
    ckpt = standin.add_file("ckpt-10", os.urandom(4_000))
    standin.add_tune(10, [ckpt], [standin.add_file("img-10", os.urandom(900))],
                     model_type="faceid")
    image = os.urandom(1_200)
    standin.add_prompt(1504944, 501, "<faceid:10:1> woman", [standin.add_file("ws", image)])
    standin.prompt_workspaces[501] = "42"
    standin.faults["ws"] = [Status(404)]
    archive = tmp_path / "archive"
    assert run_fetch(standin, archive, "10", "--prompts", "--workspace", "all") == 1
    capsys.readouterr()
    assert run_fetch(standin, archive, "10", "--prompts") == 1
    [stored] = [e["error"] for e in manifest_of(archive, 10)["assets"]
                if e["kind"] == "prompt_image"]
    assert "fetch 10 --prompts --workspace all (" in stored  # no run's options kept
    [line] = [line for line in capsys.readouterr().err.splitlines()
              if "Astria has it (in another workspace): run " in line]
    argv = said_command(line, "Astria has it (in another workspace): run ",
                        " (its last error: ")
    assert argv[-2:] == ["--workspace", "all"]
    assert argv[:-2] == ["fetch", "10", "--prompts", "--archive", str(archive),
                         "--api-url", standin.api_url]
    monkeypatch.chdir(tmp_path)  # by hand, from another folder
    assert cli(capsys, *argv).code == 0
    assert not (tmp_path / "tune-archive").exists()
    assert cli(capsys, "verify", "--archive", str(archive)).code == 0


def test_the_verify_said_of_a_prompt_of_another_workspace_names_the_archive(
    capsys: pytest.CaptureFixture[str], standin: StandIn, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """verify quoted the manifest's 'run tune-archiver fetch 10 --prompts --workspace
    all' as stored, with no --archive: pasted from another folder, it archived the tune
    into a ./tune-archive of its own, exit 0, the archive verified still failed."""
    standin.scoped_prompts = True
    ckpt = standin.add_file("ckpt-10", os.urandom(4_000))
    standin.add_tune(10, [ckpt], [standin.add_file("img-10", os.urandom(900))],
                     model_type="faceid")
    standin.add_prompt(1504944, 501, "<faceid:10:1> woman", [standin.add_file("ws", b"w" * 900)])
    standin.prompt_workspaces[501] = "42"
    standin.faults["ws"] = [Status(404)]
    archive = tmp_path / "archive"
    assert run_fetch(standin, archive, "10", "--prompts", "--workspace", "all") == 1
    assert run_fetch(standin, archive, "10", "--prompts") == 1
    ran = cli(capsys, "verify", "--archive", str(archive), "--api-url", standin.api_url)
    [line] = [line for line in ran.errors if "(in another workspace): run " in line]
    argv = said_command(line, "(in another workspace): run ", " (its last error: ")
    assert argv == ["fetch", "10", "--prompts", "--archive", str(archive), "--api-url",
                    standin.api_url, "--workspace", "all"]
    monkeypatch.chdir(tmp_path)
    assert cli(capsys, *argv).code == 0
    assert not (tmp_path / "tune-archive").exists()
    assert cli(capsys, "verify", "--archive", str(archive)).code == 0


def test_fetch_advice_carries_allow_private_redirects(
    capsys: pytest.CaptureFixture[str], standin: StandIn, tmp_path: Path, key_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run given --allow-private-redirects (an asset host redirecting into the local
    network, the API public) said 'run tune-archiver fetch 1 ... again before then'
    without it: pasted, the redirect was refused, the file failed again. It says it now."""
    monkeypatch.setattr("tune_archiver.cli.running.is_private_host", lambda host: False)
    add_tune(standin, 1, expires_at="2026-12-10T17:30:00Z")
    port = standin.urls["mirror"].rpartition(":")[2]
    standin.redirects["start"] = f"http://127.0.0.1:{port}/files/moved"
    standin.tunes[1]["orig_images"].append(standin.file_url("start"))
    archive = tmp_path / "archive"
    ran = cli(capsys, "fetch", "1", "-q", "--archive", str(archive), "--api-key-file",
              str(key_file), "--api-url", standin.api_url, "--allow-private-redirects", now=NOW)
    assert ran.code == 1
    [line] = [line for line in ran.errors if "deletes it" in line]
    argv = said_command(line, ": run ", " again before then")
    standin.files["moved"] = os.urandom(3_000)
    assert cli(capsys, *argv, now=NOW).code == 0
    assert manifest_of(archive, 1)["complete"] is True


def test_verify_advice_reaches_the_workspace_the_tune_was_archived_in(
    capsys: pytest.CaptureFixture[str], standin: StandIn, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tune of workspace 5 archived by 'fetch --all --workspace all' (a cron line) with
    a file failed: verify, run by hand with no --workspace, said '(retry: tune-archiver
    fetch 1 --archive A)', which asked in the personal scope, where the tune is not: not
    found, exit 1. The manifest records its workspace: the command reaches it."""
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
    add_tune(standin, 1)
    standin.scoped_gets = True
    standin.tune_workspaces[1] = "5"
    standin.tunes[1]["orig_images"].append(standin.file_url("late.jpg"))
    archive = tmp_path / "archive"
    assert cli(capsys, "fetch", "1", "--archive", str(archive), "--workspace", "all",
               "--api-url", standin.api_url).code == 1
    assert manifest_of(archive, 1)["workspace"] == "5"
    ran = cli(capsys, "verify", "--archive", str(archive))
    [line] = [line for line in ran.errors if "(retry: " in line]
    argv = said_command(line, "(retry: ", ")")
    standin.add_file("late.jpg", os.urandom(3_000))
    assert cli(capsys, *argv, "--api-url", standin.api_url).code == 0
    assert cli(capsys, "verify", "--archive", str(archive)).code == 0


def test_a_repair_fetches_a_tune_of_a_workspace_where_it_was_archived(
    capsys: pytest.CaptureFixture[str], standin: StandIn, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tune of workspace 5 archived by 'fetch --all --workspace all', a blob of it lost:
    'verify --repair' with no --workspace (a cron line's) asked for it in the personal
    scope, 'not repaired: tune 1 is not in the scope this run asks in', exit 1, every
    night. The manifest records its workspace: the repair fetches it there."""
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
    served = add_tune(standin, 1)
    standin.scoped_gets = True
    standin.tune_workspaces[1] = "5"
    archive = tmp_path / "archive"
    assert cli(capsys, "fetch", "1", "--archive", str(archive), "--workspace", "all",
               "--api-url", standin.api_url).code == 0
    blob_file(archive, served.images[0]).unlink()
    ran = cli(capsys, "verify", "--repair", "--archive", str(archive),
              "--api-url", standin.api_url)
    assert ran.code == 0, ran.err
    assert blob_file(archive, served.images[0]).read_bytes() == served.images[0]
    assert manifest_of(archive, 1)["workspace"] == "5"
