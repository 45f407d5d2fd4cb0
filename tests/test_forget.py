"""forget: manifests removed (by id, or expired longer ago than --keep-within), then gc."""

from __future__ import annotations

import fcntl
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.archive_helpers import (
    add_tune,
    archived,
    cli,
    first_error_line,
    start,
    stop,
    two_tunes_sharing_an_image,
)
from tests.helpers import blob_file, run_fetch
from tests.standin import StandIn
from tune_archiver.store import local as local_module


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def test_forget_then_gc_frees_only_the_blobs_no_other_tune_uses(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After forget 2 and gc, tune 2's own blobs are gone; the image it shared with 1 stays."""
    one, two = two_tunes_sharing_an_image(standin, archive)
    ran = cli(capsys, "forget", "2", "--archive", str(archive))
    assert ran.code == 0, ran.err
    assert "removed the manifest of tune 2 (Tune 2)" in ran.out
    assert not (archive / "manifests" / "2.json").exists()
    assert cli(capsys, "gc", "--archive", str(archive)).code == 0
    shared = two.images[-1]
    assert blob_file(archive, shared).exists()
    for data in one.all:
        assert blob_file(archive, data).exists()
    for data in two.checkpoints + two.images[:-1]:
        assert not blob_file(archive, data).exists()


def test_dry_run_removes_nothing(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """forget --dry-run says what it would remove and leaves the manifest in place."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    ran = cli(capsys, "forget", "1", "--dry-run", "--archive", str(archive))
    assert ran.code == 0
    assert "would remove the manifest of tune 1" in ran.out
    assert (archive / "manifests" / "1.json").exists()


def test_an_unknown_tune_is_named_and_exit_1(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """forget 1 42 with only tune 1 archived: 42 named on stderr, 1 still forgotten, exit 1."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    ran = cli(capsys, "forget", "1", "42", "--archive", str(archive), "--json")
    assert ran.code == 1
    assert "tune 42: not in the archive" in ran.err
    assert json.loads(ran.out)["unknown"] == [42]
    assert not (archive / "manifests" / "1.json").exists()


def test_keep_within_forgets_tunes_expired_longer_ago(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the clock at 2027-06-01, --keep-within 90d forgets the tune that expired in
    January, keeps the one expired in April and the one still alive."""
    for tune_id, expires in ((1, "2027-01-10T00:00:00Z"), (2, "2027-04-10T00:00:00Z"),
                             (3, "2027-12-01T00:00:00Z")):
        add_tune(standin, tune_id, expires_at=expires)
    archived(standin, archive, 1, 2, 3)
    now = datetime(2027, 6, 1, tzinfo=UTC)
    ran = cli(capsys, "forget", "--keep-within", "90d", "--archive", str(archive), now=now)
    assert ran.code == 0, ran.err
    assert sorted(int(p.stem) for p in (archive / "manifests").glob("*.json")) == [2, 3]


def test_keep_within_leaves_an_unreadable_expiry_alone(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A manifest whose expires_at cannot be read is never forgotten by --keep-within."""
    add_tune(standin, 1, expires_at="soon")
    archived(standin, archive, 1)
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert cli(capsys, "forget", "--keep-within", "1d", "--archive", str(archive),
               now=now).code == 0
    assert (archive / "manifests" / "1.json").exists()


@pytest.mark.parametrize("planted", ["fifo", "link"])
def test_keep_within_goes_on_past_a_manifest_the_store_refuses(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    planted: str,
) -> None:
    """A FIFO, or a link to an expired tune's manifest outside, at manifests/2.json:
    --keep-within leaves it as it is (its expiry is unknown) and still forgets tune 1,
    expired long ago, rather than stopping with nothing forgotten."""
    for tune_id, expires in ((1, "2027-01-10T00:00:00Z"), (2, "2027-01-10T00:00:00Z"),
                             (3, "2027-12-01T00:00:00Z")):
        add_tune(standin, tune_id, expires_at=expires)
    archived(standin, archive, 1, 2, 3)
    place = archive / "manifests" / "2.json"
    if planted == "fifo":
        place.unlink()
        os.mkfifo(place)
    else:
        place.rename(tmp_path / "2.json")
        place.symlink_to(tmp_path / "2.json")
    now = datetime(2027, 6, 1, tzinfo=UTC)
    ran = cli(capsys, "forget", "--keep-within", "90d", "--archive", str(archive), "--json",
              now=now)
    assert (ran.code, ran.err) == (0, "")
    assert [row["tune_id"] for row in json.loads(ran.out)["removed"]] == [1]
    assert sorted(p.name for p in (archive / "manifests").glob("*.json")) == ["2.json",
                                                                               "3.json"]
    assert os.path.lexists(place)


def test_a_manifest_that_cannot_be_removed_stops_no_other_tune(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """forget 1 2 with a folder planted at manifests/1.json: tune 1 is named as failed on
    one line (exit 1), the folder kept; tune 2 is forgotten all the same."""
    add_tune(standin, 1)
    add_tune(standin, 2)
    archived(standin, archive, 1, 2)
    (archive / "manifests" / "1.json").unlink()
    (archive / "manifests" / "1.json").mkdir()
    ran = cli(capsys, "forget", "1", "2", "--archive", str(archive), "--json")
    assert ran.code == 1
    assert "Traceback" not in ran.err
    [line] = ran.errors
    assert "the manifest of tune 1" in line
    report = json.loads(ran.out)
    assert report["removed"] == [{"tune_id": 2, "title": "Tune 2", "what": "manifest"}]
    assert [row["tune_id"] for row in report["failed"]] == [1]
    assert (archive / "manifests" / "1.json").is_dir()
    assert not (archive / "manifests" / "2.json").exists()


def test_forget_removes_a_manifest_only_while_holding_the_tunes_own_lock(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify --repair and retrain write a manifest under the tune's own lock alone (no
    archive lock): a removal between their read and their write would be undone by the
    write, after forget said "removed". So forget removes it only holding that lock."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    lock = archive / "manifests" / "1.lock"
    held: list[bool] = []
    remove_file = local_module.remove_file

    def watched(root: Path, key: str, durable: bool = False) -> None:
        if key == "manifests/1.json":
            fd = os.open(lock, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)
            finally:
                os.close(fd)  # also lets go of a lock this took
        remove_file(root, key, durable)

    monkeypatch.setattr(local_module, "remove_file", watched)
    assert cli(capsys, "forget", "1", "--archive", str(archive)).code == 0
    assert held == [True]
    assert not (archive / "manifests" / "1.json").exists()


@pytest.mark.parametrize("argv", [["forget"], ["forget", "1", "--keep-within", "9d"]])
def test_ids_or_keep_within_one_of_them(
    archive: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """forget needs ids or --keep-within, not neither nor both: exit 2."""
    assert cli(capsys, *argv, "--archive", str(archive)).code == 2


def test_forget_waits_while_a_fetch_holds_the_archive(
    standin: StandIn, archive: Path
) -> None:
    """With the archive lock held shared (as a running fetch holds it), forget says it
    waits and removes nothing until the lock is let go; then it removes the manifest."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    fd = os.open(archive / "lock", os.O_RDWR)
    forget = None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        forget = start(archive, "forget", "1")
        assert "waiting: a fetch, gc or verify --repair is running" in first_error_line(forget)
        assert forget.poll() is None
        assert (archive / "manifests" / "1.json").exists()
        fcntl.flock(fd, fcntl.LOCK_UN)
        out, err = forget.communicate(timeout=30)
        assert forget.returncode == 0, err
        assert "removed the manifest of tune 1" in out
        assert not (archive / "manifests" / "1.json").exists()
    finally:
        os.close(fd)
        if forget is not None:
            stop(forget)


def test_forget_never_removes_through_a_link_planted_at_the_manifests_folder(
    standin: StandIn, archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """manifests/ a link to a folder outside that holds a 1.json: forget 1 refuses the
    archive on one line (exit 2: every tune's manifest is behind it) and removes nothing
    there, not even the lock it would have taken."""
    add_tune(standin, 1)
    archived(standin, archive, 1)
    elsewhere = tmp_path / "elsewhere"
    (archive / "manifests").rename(elsewhere)
    (archive / "manifests").symlink_to(elsewhere)
    before = (elsewhere / "1.json").read_bytes()
    files = sorted(elsewhere.iterdir())
    ran = cli(capsys, "forget", "1", "--archive", str(archive))
    assert ran.code == 2
    assert "Traceback" not in ran.err
    [line] = ran.errors
    assert "manifests: it is a symbolic link" in line
    assert (elsewhere / "1.json").read_bytes() == before
    assert sorted(elsewhere.iterdir()) == files


def test_forget_of_a_tune_not_expired_says_the_next_fetch_all_takes_it_back(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """forget 1 of a tune Astria still lists said 'removed the manifest of tune 1' and
    'run gc to free the blobs', as if the tune left the backup: the daily fetch --all
    archived it again, the forget undone, unsaid. Said now for a tune whose expires_at is
    ahead (--json: live), not for one expired."""
    add_tune(standin, 1)
    add_tune(standin, 2, expires_at="2026-01-10T00:00:00Z")
    archived(standin, archive, 1, 2)
    ran = cli(capsys, "forget", "1", "2", "--archive", str(archive))
    assert ran.code == 0, ran.err
    assert ("tune 1 has not expired: the next fetch --all archives it again while Astria "
            "lists it") in ran.out
    assert "tune 2 has not expired" not in ran.out
    run_fetch(standin, archive, "--all")  # as it said: tune 1 is back
    assert (archive / "manifests" / "1.json").exists()
    ran = cli(capsys, "forget", "1", "--archive", str(archive), "--json")
    assert json.loads(ran.out)["live"] == [1]
