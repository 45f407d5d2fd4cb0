"""Files received whole whose commit failed, and the partials around them: what is kept
for the next run, what is not, and that no kept file turns a later run away."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import os
import stat
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest

from tests.helpers import blob_file, run_fetch, stored_blobs
from tests.standin import Cut, StandIn, Status
from tune_archiver.download import sidecar as sidecar_module
from tune_archiver.download import syncing as syncing_module
from tune_archiver.download.partial import Partial
from tune_archiver.download.staging import Incoming
from tune_archiver.errors import IntegrityError, StorageError
from tune_archiver.store import local as local_module

MiB = 2**20
KEY = "https://cdn.example/model.safetensors"
DATA = os.urandom(2 * MiB)


def finished(tmp_path: Path) -> Partial:
    partial = Partial.open(tmp_path, KEY, tmp_path)
    partial.describe('"etag-1"', len(DATA))
    partial.append([DATA])
    partial.finish()
    return partial


def as_another_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """We run as root: have os.open refuse to write a file without u+w, as it does for
    every other user."""
    real = os.open

    def checked(path: str | Path, flags: int, mode: int = 0o777, *,
                dir_fd: int | None = None) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR):
            with_mode = os.stat(path, follow_symlinks=False) if os.path.lexists(path) else None
            if with_mode and stat.S_ISREG(with_mode.st_mode) and not with_mode.st_mode & 0o200:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", checked)


def first_periodic_fsync_fails(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """An fsync every MiB; the first fails (EIO), later ones succeed. Every call is listed."""
    monkeypatch.setattr(syncing_module, "SYNC_EVERY", MiB)
    fsync = os.fsync
    calls: list[int] = []

    def once_failed(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(errno.EIO, "Input/output error")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", once_failed)
    return calls


def failed_at_the_rename(standin: StandIn, archive: Path, monkeypatch: pytest.MonkeyPatch
                         ) -> None:
    """Fetch tune 1 with every rename into objects/ refused (EIO): it fails, exit 1."""
    replace = os.replace

    def refused(source: str | Path, target: str | Path, **dir_fds: int) -> None:
        if "dst_dir_fd" in dir_fds and "src_dir_fd" not in dir_fds:  # into objects/
            raise OSError(errno.EIO, "Input/output error")
        replace(source, target, **dir_fds)

    with monkeypatch.context() as patched:
        patched.setattr(local_module.os, "replace", refused)
        assert run_fetch(standin, archive, "1") == 1


def test_a_file_whose_rename_failed_is_stored_by_the_next_run_as_it_was_served(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local archive: the next run stores the kept file without asking the host, with
    the type the host served it as (recorded with it, since no response is read)."""
    archive = tmp_path / "archive"
    url = standin.add_file("photo", DATA)
    standin.content_types["photo"] = "image/heic"
    standin.add_tune(1, [], [url])
    failed_at_the_rename(standin, archive, monkeypatch)
    asked = len(standin.seen("cdn"))
    assert run_fetch(standin, archive, "1") == 0
    assert len(standin.seen("cdn")) == asked
    [entry] = json.loads((archive / "manifests" / "1.json").read_text())["assets"]
    assert entry["content_type"] == "image/heic"
    assert blob_file(archive, DATA).read_bytes() == DATA
    assert list((archive / "tmp").iterdir()) == []


@pytest.mark.parametrize(("size", "dated"), [(200_000, False), (2 * MiB, True)],
                         ids=["small", "no-validator"])
def test_any_file_received_whole_whose_rename_failed_is_stored_later_without_the_host(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int, dated: bool
) -> None:
    """A file too small to be worth resuming, or one served with no validator (a
    Last-Modified of this very second is none): once every byte is in, they are as
    whole as any other. The host deletes them before the next run, which still stores
    them, asking the host nothing (they were thrown away, and the next run got a 404)."""
    archive = tmp_path / "archive"
    data = os.urandom(size)
    url = standin.add_file("photo", data)
    if dated:
        standin.last_modified["photo"] = format_datetime(datetime.now(UTC), usegmt=True)
    standin.add_tune(1, [], [url])
    failed_at_the_rename(standin, archive, monkeypatch)
    del standin.files["photo"]  # the host deleted it: a 404 from now on
    asked = len(standin.seen("cdn"))
    assert run_fetch(standin, archive, "1") == 0
    assert len(standin.seen("cdn")) == asked
    assert blob_file(archive, data).read_bytes() == data
    assert list((archive / "tmp").iterdir()) == []


def test_a_file_kept_whole_is_never_committed_for_another_file_told_apart_by_a_key(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/img?key=a and /img?key=b are two files (a2a600e), whose URLs share a url_key:
    tune 1's file, kept whole when its rename failed, was the partial tune 2's file
    opened, and committed unasked as tune 2's: its manifest held tune 1's photo, ok."""
    archive = tmp_path / "archive"
    first, second = os.urandom(3000), os.urandom(3000)
    standin.files["img?key=a"], standin.files["img?key=b"] = first, second
    standin.add_tune(1, [], [standin.file_url("img", query="key=a&X-Amz-Signature=s")])
    standin.add_tune(2, [], [standin.file_url("img", query="key=b&X-Amz-Signature=t")])
    failed_at_the_rename(standin, archive, monkeypatch)
    assert run_fetch(standin, archive, "2") == 0
    [entry] = json.loads((archive / "manifests" / "2.json").read_text())["assets"]
    assert blob_file(archive, second).read_bytes() == second
    assert entry["sha256"] == blob_file(archive, second).name
    assert run_fetch(standin, archive, "1") == 0  # its own kept file
    [entry] = json.loads((archive / "manifests" / "1.json").read_text())["assets"]
    assert entry["sha256"] == blob_file(archive, first).name


def test_the_type_a_file_is_served_as_is_recorded_with_its_partial_from_the_first_answer(
    standin: StandIn, tmp_path: Path
) -> None:
    """Not only at its commit: a file whose every byte came in before a kill is later
    committed unasked, with the type it was served as."""
    archive = tmp_path / "archive"
    standin.add_tune(1, [standin.add_file("model", DATA)], [])
    standin.content_types["model"] = "image/heic"
    # Each attempt breaks off (then fails: attempts that moved it on may start a round).
    standin.faults["model"] = [Cut(MiB // 2)] * 2 + [Status(500)] * 2
    assert run_fetch(standin, archive, "1", "--retries", "1") == 1
    [record] = (archive / "tmp").glob("*.json")
    assert json.loads(record.read_text())["content_type"] == "image/heic"


def test_a_span_the_server_overfilled_costs_only_that_span(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An IntegrityError while downloading (not at the commit) fails the file but keeps
    the good spans for the next run."""
    archive = tmp_path / "archive"
    standin.add_tune(1, [standin.add_file("model", os.urandom(16 * MiB))], [])
    write_span = Partial.write_span

    def overfilled(partial: Partial, index: int, pieces: list[bytes]) -> None:
        # The last of 16 pieces of 1 MiB: taken in order by 4 connections, so when it
        # comes at least 12 others are in, whatever the timing (the fourth was taken
        # at once, with three pieces barely begun).
        if index == 15:
            raise IntegrityError("the server sent more bytes than the range asked for")
        write_span(partial, index, pieces)

    monkeypatch.setattr(Partial, "write_span", overfilled)
    assert run_fetch(standin, archive, "1", "--split", "4", "--split-threshold", "8M",
                     "--retries", "1") == 1
    [kept] = (archive / "tmp").glob("*.part")
    spans = json.loads(kept.with_suffix(".json").read_text())["spans"]
    assert sum(pos - start for start, pos, _ in spans) >= 12 * MiB


def test_a_finish_whose_fsync_failed_keeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes the disk may not hold are never taken as they are by a later run."""
    partial = Partial.open(tmp_path, KEY, tmp_path)
    partial.describe('"etag-1"', len(DATA))
    partial.append([DATA])

    def failed(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failed)
    with pytest.raises(StorageError, match="Input/output error"):
        partial.finish()
    partial.close(keep=True)
    assert list(tmp_path.iterdir()) == []


def test_a_periodic_fsync_that_failed_fails_the_finish_that_follows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel reports a lost write to one fsync only: a later one that succeeds does
    not make those bytes durable, so the partial is neither committed nor kept."""
    calls = first_periodic_fsync_fails(monkeypatch)
    partial = Partial.open(tmp_path, KEY, tmp_path)
    partial.describe('"etag-1"', len(DATA))
    partial.append([DATA[:MiB]])  # the periodic fsync, in its own thread
    partial.append([DATA[MiB:]])
    with pytest.raises(StorageError, match="Input/output error"):
        partial.finish()
    partial.close(keep=True)
    assert calls
    assert list(tmp_path.iterdir()) == []


def test_after_a_failed_periodic_fsync_no_later_one_vouches_and_nothing_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A download that fails after its periodic fsync failed: no later fsync records
    bytes as durable (it would vouch for the lost ones), and close keeps nothing."""
    monkeypatch.setattr(syncing_module, "SYNC_EVERY", MiB)
    calls: list[int] = []

    def failed(fd: int) -> None:
        calls.append(fd)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failed)
    partial = Partial.open(tmp_path, KEY, tmp_path)
    partial.describe('"etag-1"', len(DATA))
    partial.save()
    partial.append([DATA[:MiB]])  # the periodic fsync fails, in its own thread
    partial.reset()  # waits for it; then a restart would clear the failure, so...
    partial.append([DATA[:MiB]])  # ...this one fails again
    partial.append([DATA[MiB:]])  # no fsync is tried after a failure
    partial.close(keep=True)  # the connection dropped, say
    assert len(calls) == 2
    assert list(tmp_path.iterdir()) == []


def test_a_failed_periodic_fsync_takes_the_record_away_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill may come before any close: the record that would vouch for the lost bytes
    goes as soon as the fsync fails, and the next run starts the file over."""
    first_periodic_fsync_fails(monkeypatch)
    partial = Partial.open(tmp_path, KEY, tmp_path)
    partial.describe('"etag-1"', len(DATA))
    partial.save()  # a large file's record, written at its first response
    partial.append([DATA])  # the periodic fsync fails, in its own thread
    partial._synced.wait()  # that thread ends; no close follows, as after a kill
    assert not partial.path.with_suffix(".json").exists()
    partial.detach()  # killed: the file stays, and its lock goes
    again = Partial.open(tmp_path, KEY, tmp_path)
    assert again.size == 0
    again.close(keep=False)


def test_a_resume_that_fails_removes_the_partial_and_lets_go_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its resume's fsync failed: the bytes it cannot vouch for go, and so does its lock,
    which would turn every later try of that URL in the run away."""
    partial = Partial.open(tmp_path, KEY, tmp_path)
    partial.describe('"etag-1"', len(DATA))
    partial.append([DATA[:MiB]])
    partial.close(keep=True)

    def failed(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failed)  # the resume's fsync
    with pytest.raises(StorageError, match="Input/output error"):
        Partial.open(tmp_path, KEY, tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    again = Partial.open(tmp_path, KEY, tmp_path)
    assert again.path == partial.path  # not locked: the named partial, not a private one
    again.close(keep=False)


def test_a_read_only_partial_left_by_a_killed_run_turns_no_later_run_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between its finish (the file is 0400) and its rename: another user's run
    (or one racing that rename) downloads into a private file instead of failing."""
    partial = finished(tmp_path)
    assert partial.path.stat().st_mode & 0o777 == 0o400
    as_another_user(monkeypatch)
    other = Partial.open(tmp_path, KEY, tmp_path)
    assert other.path != partial.path
    other.close(keep=False)
    partial.detach()


def test_with_no_boot_id_only_fsynced_bytes_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the boot cannot be told (no /proc), a resume is taken as after a reboot: a
    file's length alone vouches for nothing."""
    monkeypatch.setattr(sidecar_module, "boot_id", lambda: "")
    partial = Partial.open(tmp_path, KEY, tmp_path, durable=False)
    partial.describe('"etag-1"', len(DATA))
    partial.append([DATA])
    partial.close(keep=True)
    again = Partial.open(tmp_path, KEY, tmp_path, durable=False)
    assert again.size == 0
    assert not again.complete
    again.close(keep=False)


class FailingIntake:
    """An intake whose abandon fails, as a second Ctrl-C during its clean-up makes it."""

    async def commit(self, finish: object) -> object:
        raise AssertionError("not committed in this test")

    async def abandon(self) -> None:
        raise asyncio.CancelledError


async def test_a_release_closes_the_partial_even_when_the_intake_fails_to_let_go(
    tmp_path: Path,
) -> None:
    partial = Partial.open(tmp_path, KEY, tmp_path)
    partial.describe('"etag-1"', len(DATA))
    partial.append([DATA])
    incoming = Incoming(partial, FailingIntake())  # type: ignore[arg-type]
    with pytest.raises(asyncio.CancelledError):
        await incoming.release(keep=True)
    assert partial.path.with_suffix(".json").exists()  # kept, and its lock let go
    fd = os.open(partial.path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


@pytest.mark.parametrize("kept", ["cut", "whole"])
def test_bytes_kept_for_the_next_run_that_a_disk_changed_are_never_archived(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], kept: str,
) -> None:
    """A partial left by a download cut off (or a file received whole whose rename
    failed), one byte of it flipped on disk before the next run: that run resumed (or
    committed) the bytes as they were now, named the blob by their hash, exit 0, and
    verify said all intact: bytes the host never sent, ok. The record holds the sha256
    of the bytes it keeps; the next run checks it, says so, and downloads the file anew."""
    archive = tmp_path / "archive"
    data = os.urandom(3 * MiB)
    standin.add_tune(1, [standin.add_file("model", data)], [])
    if kept == "cut":
        standin.faults["model"] = [Cut(2 * MiB)]
        assert run_fetch(standin, archive, "1", "--retries", "0") == 1
    else:
        failed_at_the_rename(standin, archive, monkeypatch)
    [part] = (archive / "tmp").glob("*.part")
    os.chmod(part, 0o600)  # a file kept whole is read-only
    with part.open("r+b") as file:
        file.seek(1000)
        flipped = bytes([file.read(1)[0] ^ 0xFF])
        file.seek(1000)
        file.write(flipped)
    assert run_fetch(standin, archive, "1") == 0
    [blob] = stored_blobs(archive)
    assert blob == blob_file(archive, data)
    assert blob.read_bytes() == data
    assert "changed on disk since: the download starts over" in capsys.readouterr().err
