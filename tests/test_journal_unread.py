"""gc and a tune's journal it cannot read: it cannot rule out the blobs that one names."""

from __future__ import annotations

import errno
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.archive_helpers import cli
from tests.helpers import blob_file
from tests.standin import StandIn
from tests.test_journal import stopped_after_the_images
from tune_archiver.download import journal


def test_gc_removes_no_blob_while_a_journal_cannot_be_read(
    standin: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stopped run's journal the disk fails to read (EIO) was taken for one naming no
    blob: gc removed the images it alone named, exit 0, nothing said."""
    archive = tmp_path / "archive"
    images = stopped_after_the_images(standin, archive)
    open_own = journal.open_own

    def failing(path: Path, flags: int) -> int:
        if path.name == "1.committed":
            raise OSError(errno.EIO, "Input/output error")
        return open_own(path, flags)

    monkeypatch.setattr(journal, "open_own", failing)
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
