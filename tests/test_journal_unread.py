"""gc and a tune's journal it cannot read: it cannot rule out the blobs that one names."""

from __future__ import annotations

import errno
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.archive_helpers import cli
from tests.helpers import blob_file
from tests.standin import StandIn
from tests.test_journal import GONE, expire, images_of, stopped_after_the_images
from tune_archiver.download import journal


def unreadable_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tune 1's journal fails to open from now on: the disk's EIO."""
    open_own = journal.open_own

    def failing(path: Path, flags: int, **options: Any) -> int:
        if path.name == "1.committed":
            raise OSError(errno.EIO, "Input/output error")
        return open_own(path, flags, **options)

    monkeypatch.setattr(journal, "open_own", failing)


def test_gc_removes_no_blob_while_a_journal_cannot_be_read(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stopped run's journal the disk fails to read (EIO) was taken for one naming no
    blob: gc removed the images it alone named, exit 0, nothing said."""
    archive = tmp_path / "archive"
    images = stopped_after_the_images(standin, archive)
    unreadable_journal(monkeypatch)
    later = datetime.now(UTC) + timedelta(hours=2)
    ran = cli(capsys, "gc", "--archive", str(archive), now=later)
    assert ran.code == 1
    assert [line for line in ran.err.splitlines() if "1.committed" in line] == [
        line for line in ran.err.splitlines() if line.strip()]
    assert "Input/output error" in ran.err, ran.err
    assert all(blob_file(archive, data).exists() for data in images)
    # A day after its last line it is swept as ever, with what only it named: unread.
    ran = cli(capsys, "gc", "--archive", str(archive), now=later + timedelta(days=1))
    assert ran.code == 0, ran.err
    assert not (archive / "tmp" / "1.committed").exists()


def test_a_fetch_that_cannot_read_a_journal_says_no_file_gone_it_may_hold(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stopped run's journal the disk fails to read (EIO) was taken as empty by the
    rerun: the tune expired meanwhile, it recorded the images that journal names (their
    blobs held, gc keeping them) 'gone upstream, never archived', never asked for again,
    a false statement. They are failed now, saying why: the next fetch that can read
    the journal archives them."""
    archive = tmp_path / "archive"
    images = stopped_after_the_images(standin, archive)
    expire(standin)
    open_own = journal.open_own
    unreadable_journal(monkeypatch)
    monkeypatch.setenv("ASTRIA_API_KEY", standin.api_key)
    fetch = ("fetch", "1", "--archive", str(archive), "--api-url", standin.api_url)
    ran = cli(capsys, *fetch)
    assert ran.code == 1
    said = [line for line in ran.errors if "training_image" in line]
    assert len(said) == 3
    assert all("Input/output error" in line and GONE not in line for line in said), said
    assert [e["status"] for e in images_of(archive)] == ["failed"] * 3
    monkeypatch.setattr(journal, "open_own", open_own)  # the disk mended
    ran = cli(capsys, *fetch)
    assert [(e["status"], e["sha256"]) for e in images_of(archive)] == [
        ("ok", blob_file(archive, data).name) for data in images]
