"""--log-file: JSON lines of what a run did, UTC-stamped, appended, with no secret."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import others_link, run_fetch
from tests.standin import StandIn, Status
from tests.test_fetch import make_tune


def events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_log_file_records_the_run_tunes_files_retries_and_failures(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fetch with a retry and a failed tune writes each event with a UTC timestamp."""
    make_tune(standin, 1, images=1)
    signed = standin.add_file("signed", b"s" * 100) + "?X-Amz-Signature=SECRETSIG"
    standin.tunes[1]["orig_images"].append(signed)
    standin.faults["signed"] = [Status(503)]
    log = tmp_path / "run.log"
    assert run_fetch(standin, tmp_path / "a", "1", "2", "--log-file", str(log)) == 1
    found = events(log)
    names = [e["event"] for e in found]
    assert names[0] == "run_start"
    assert names[-1] == "run_end"
    assert found[-1]["exit"] == 1
    for name in ("tune_start", "tune_end", "file_done", "retry", "failure"):
        assert name in names, name
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(e["time"]))
               for e in found)
    assert sum(1 for e in found if e["event"] == "file_done") == 3
    text = log.read_text()
    assert "SECRETSIG" not in text
    assert standin.api_key not in text
    assert "X-Amz-Signature=REDACTED" in text
    assert "retrying" in capsys.readouterr().err  # the human lines are still there


def test_log_file_is_appended_to(standin: StandIn, tmp_path: Path) -> None:
    """Two runs with one --log-file leave both runs' lines, in order."""
    make_tune(standin, 1, images=1)
    log = tmp_path / "run.log"
    for _ in range(2):
        assert run_fetch(standin, tmp_path / "a", "1", "--log-file", str(log)) == 0
    names = [e["event"] for e in events(log)]
    assert names.count("run_start") == 2
    assert names.count("run_end") == 2


def test_log_file_dash_replaces_the_human_lines_on_stderr(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--log-file - writes JSON lines to stderr and no "tune-archiver: error:" line."""
    make_tune(standin, 1, images=1)
    assert run_fetch(standin, tmp_path / "a", "1", "7", "--log-file", "-") == 1
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines()]
    assert "tune-archiver:" not in err
    assert any(e["event"] == "failure" and "tune 7" in str(e["message"]) for e in lines)


def test_a_log_file_that_cannot_be_opened_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--log-file in a folder that does not exist: one error line, exit 2."""
    from tune_archiver.cli.main import main

    assert main(["list", "--log-file", str(tmp_path / "no" / "log")]) == 2
    assert "cannot open the log file" in capsys.readouterr().err


def test_a_link_planted_at_the_log_file_is_refused_and_never_written_through(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """README: "Every file tune-archiver writes is opened with O_NOFOLLOW". A link planted
    at --log-file's name (a shared log folder) is refused with one error line and exit 2;
    the file it points to is left as it was."""
    target = tmp_path / "bashrc"
    target.write_text("# mine\n")
    log = tmp_path / "run.jsonl"
    log.symlink_to(target)
    make_tune(standin, 1, images=1)
    assert run_fetch(standin, tmp_path / "a", "1", "--log-file", str(log)) == 2
    assert target.read_text() == "# mine\n"
    assert capsys.readouterr().err.splitlines() == [
        f"tune-archiver: error: refused the log file: {log} is a symbolic link"]


def test_a_link_another_user_planted_on_the_way_to_the_log_file_is_refused(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--log-file in a shared folder where another user planted a link (to a folder of
    theirs) on the way: refused on one line (exit 2), nothing written there, as export's
    DEST. Before, the run's log was made in their folder, theirs to remove or rename."""
    logs, theirs = others_link(tmp_path, "logs")
    make_tune(standin, 1, images=1)
    log = logs / "run.jsonl"
    assert run_fetch(standin, tmp_path / "a", "1", "--log-file", str(log)) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "symbolic link of another user" in line
    assert list(theirs.iterdir()) == []


def test_a_log_rotated_under_a_long_run_goes_on_in_the_new_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """logrotate moves the log away, then (with `create`) makes a new one, or not: the
    next lines go to a file at the log's name, not on into the moved one, which a later
    rotation compresses and deletes. A link planted there meanwhile is never written
    through: one warning, and the run goes on without its log."""
    from tune_archiver.cli.eventlog import event, open_log

    log, moved, target = tmp_path / "run.jsonl", tmp_path / "run.jsonl.1", tmp_path / "mine"
    handler = open_log(str(log), [])
    logger = logging.getLogger("test.rotation")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        logger.info("one", extra=event("first"))
        log.rename(moved)
        logger.info("two", extra=event("second"))
        log.rename(tmp_path / "run.jsonl.2")
        log.touch(mode=0o600)  # logrotate's `create`
        logger.info("three", extra=event("third"))
        created = [e["event"] for e in events(log)]
        log.unlink()
        target.write_text("# mine\n")
        log.symlink_to(target)
        logger.info("four", extra=event("fourth"))
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert [e["event"] for e in events(moved)] == ["first"]
    assert [e["event"] for e in events(tmp_path / "run.jsonl.2")] == ["second"]
    assert created == ["third"]
    assert target.read_text() == "# mine\n"
    assert "cannot write the log file" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["-", "run.jsonl"])
def test_warnings_reach_the_log_file_and_dash(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    """A tune that lists no file and an --all that selects none are warnings, and the log
    says them: --log-file - (a Kubernetes pod's only lines) and -q with a file (the
    systemd unit) left nothing but an ok tune_end and exit 0."""
    standin.add_tune(1, [], [])
    log = tmp_path / where
    assert run_fetch(standin, tmp_path / "a", "1", "-q", "--log-file", where) == 0
    assert run_fetch(standin, tmp_path / "a", "--all", "--expiring-within", "1d", "-q",
                     "--log-file", where) == 0
    err = capsys.readouterr().err
    found = [json.loads(line) for line in err.splitlines()] if where == "-" else events(log)
    said = [str(e["message"]) for e in found if e["event"] == "warning"]
    assert any("lists no files (expired and deleted upstream?)" in m for m in said), said
    assert any("--all selected no tunes" in m for m in said), said


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A folder every user may go through to its files (pytest's own is 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="tune-archiver-log-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o604, True), (0o640, False),
                                              (0o600, False), (None, False)])
def test_a_log_file_every_user_can_read_is_said_once(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: int | None,
    warned: bool, reachable: Path,
) -> None:
    """An existing log file of ours that every local user can read (0644, as `touch` or
    logrotate's `create 0644` leave it) holds tune titles and URLs: one warning line
    says so, and how to make it private. It was written to without a word. Its mode is
    the owner's to choose (kept); a new one is made 0600, and says nothing."""
    make_tune(standin, 1, images=1)
    log = reachable / "run.log"
    if mode is not None:
        log.touch()
        log.chmod(mode)
    assert run_fetch(standin, tmp_path / "a", "1", "--log-file", str(log)) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "log file" in line]
    assert said == ([f"tune-archiver: warning: the log file {log} is readable by every user "
                     "of this machine (it names your tunes and files): chmod 600 it"]
                    if warned else [])
    assert log.stat().st_mode & 0o777 == (0o600 if mode is None else mode)
    assert events(log)[-1]["event"] == "run_end"


def test_a_log_file_in_a_folder_others_cannot_enter_is_not_warned_about(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str], reachable: Path,
) -> None:
    """A 0644 log file in a 0700 home (a folder on the way shuts others out) is private:
    no other user can reach it. Every run of a cron warned that every user could read
    it, to be chmod 600'd, which the operator learns to ignore."""
    make_tune(standin, 1, images=1)
    home = reachable / "home"
    home.mkdir(mode=0o700)
    (home / "logs").mkdir(mode=0o755)
    log = home / "logs" / "run.log"
    log.touch()
    log.chmod(0o644)
    assert run_fetch(standin, tmp_path / "a", "1", "--log-file", str(log)) == 0
    assert "readable by every user" not in capsys.readouterr().err
    assert events(log)[-1]["event"] == "run_end"
    home.chmod(0o711)  # others may go through, and read what they can name
    assert run_fetch(standin, tmp_path / "a", "1", "--log-file", str(log)) == 0
    assert "readable by every user" in capsys.readouterr().err


def test_a_log_recreated_readable_by_all_under_a_run_is_said_then(
    reachable: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """logrotate's `create 0644` makes a new log every user can read while a long run
    goes on: its next lines went into it without a word, said only by the next run. The
    warning is said once, on the human lines and in the new log, as the run's first."""
    from tune_archiver.cli.eventlog import event, open_log

    log = reachable / "run.jsonl"
    handler = open_log(str(log), [])
    logger = logging.getLogger("test.rotation.readable")
    logger.addHandler(handler)
    logger.addHandler(logging.StreamHandler())
    logger.setLevel(logging.DEBUG)
    try:
        logger.info("one", extra=event("first"))
        log.rename(reachable / "run.jsonl.1")
        log.touch(mode=0o644)
        log.chmod(0o644)
        logger.info("two", extra=event("second"))
        logger.info("three", extra=event("third"))
    finally:
        logger.handlers.clear()
        handler.close()
    said = [line for line in capsys.readouterr().err.splitlines() if "every user" in line]
    assert said == [f"warning: the log file {log} is readable by every user of this "
                    "machine (it names your tunes and files): chmod 600 it"]
    assert [e["event"] for e in events(log)] == ["warning", "second", "third"]


def test_a_write_only_log_file_is_still_appended_to(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log its owner made write-only (0200) was appended to, then refused once the file
    was opened to read its last byte too: 'cannot open the log file', exit 2, no backup.
    (Root reads it whatever its mode: the kernel's refusal is played for root.)"""
    from tune_archiver.cli import eventlog

    own = eventlog._own

    def as_its_owner(path: str, flags: int) -> int:
        if flags & os.O_ACCMODE != os.O_WRONLY and not os.stat(path).st_mode & 0o400:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return own(path, flags)

    monkeypatch.setattr(eventlog, "_own", as_its_owner)
    make_tune(standin, 1, images=1)
    log = tmp_path / "run.log"
    log.write_text('{"event": "cut')  # a line a full disk cut short
    log.chmod(0o200)
    assert run_fetch(standin, tmp_path / "a", "1", "--log-file", str(log)) == 0
    log.chmod(0o600)
    lines = log.read_text().splitlines()
    assert json.loads(lines[-1])["event"] == "run_end"
    assert any('"run_start"' in line for line in lines)
