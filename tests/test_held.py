"""A small file's lean path: its bytes are held in memory and written once, at its
commit, in that commit's one thread hop; they go to disk early only when a retry or a
later run needs them."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import check_manifest
from tests.helpers import Sleeps, blob_file, run_fetch, sha256
from tests.standin import Cut, StandIn, Status
from tune_archiver.download.partfile import partial_name
from tune_archiver.download.partial import RESUMABLE_FROM, Partial
from tune_archiver.download.sidecar import record
from tune_archiver.errors import StorageError
from tune_archiver.urls import identity

KEY = "https://cdn.example/img.jpg"
IMAGE = os.urandom(300_000)  # well under RESUMABLE_FROM, as generated images are


def tmp_files(archive: Path) -> list[str]:
    return sorted(path.name for path in (archive / "tmp").iterdir())


@dataclass
class Hops:
    """asyncio.to_thread, recording the name of each function sent to a worker thread
    and what the archive's tmp/ held at that moment."""

    archive: Path
    seen: list[tuple[str, list[str]]] = field(default_factory=list)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = asyncio.to_thread

        async def to_thread(function: Callable[..., Any], *args: Any) -> Any:
            tmp = self.archive / "tmp"
            self.seen.append((function.__qualname__, tmp_files(self.archive)
                              if tmp.exists() else []))
            return await real(function, *args)

        monkeypatch.setattr(asyncio, "to_thread", to_thread)

    def named(self, *prefixes: str) -> list[tuple[str, list[str]]]:
        return [hop for hop in self.seen if hop[0].startswith(prefixes)]


def test_a_small_file_costs_one_thread_hop_and_no_file_before_its_commit(
    standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three images: no partial is opened nor written from a worker thread, each costs
    exactly its commit's hop, and tmp/ never holds more than the commits' own files."""
    archive = tmp_path / "archive"
    images = [os.urandom(200_000 + i) for i in range(3)]
    standin.add_tune(1, [], [standin.add_file(f"img{i}.jpg", d) for i, d in enumerate(images)])
    hops = Hops(archive)
    hops.install(monkeypatch)
    assert run_fetch(standin, archive, "1") == 0
    assert hops.named("Partial.") == []
    assert len(hops.named("_Intake._commit")) == len(images)
    # What tmp/ held at any hop: only files that commits write and rename at once, no
    # resume record; and the tune's journal of the files committed (journal.py).
    assert all(name.endswith(".part") or name == "1.committed"
               for _, files in hops.seen for name in files)
    assert tmp_files(archive) == []
    for data in images:
        assert blob_file(archive, data).read_bytes() == data
    check_manifest(archive / "manifests" / "1.json")


def test_bytes_held_when_a_connection_drops_wait_on_disk_for_the_retry(
    standin: StandIn, tmp_path: Path
) -> None:
    """The bytes before the drop are in the named (resumable) partial while the retry
    waits, and the retry asks only for the rest."""
    archive = tmp_path / "archive"
    url = standin.add_file("img.jpg", IMAGE)
    standin.add_tune(1, [], [url])
    standin.faults["img.jpg"] = [Cut(at=100_000)]
    named = archive / "tmp" / f"{partial_name(identity(url))}.part"
    on_disk: list[int] = []

    class Backoff(Sleeps):
        async def __call__(self, seconds: float) -> None:
            on_disk.append(named.stat().st_size)  # between the attempts
            await super().__call__(seconds)

    assert run_fetch(standin, archive, "1", sleep=Backoff()) == 0
    assert on_disk == [100_000]
    ranges = [r.headers.get("Range") for r in standin.seen("cdn", "/files/img.jpg")]
    assert ranges == [None, "bytes=100000-"]
    assert blob_file(archive, IMAGE).read_bytes() == IMAGE


def test_a_small_file_that_fails_for_good_is_resumed_by_the_next_run(
    standin: StandIn, tmp_path: Path
) -> None:
    """Held bytes are kept, with their record, when the download gives up; the next run
    resumes them with If-Range."""
    archive = tmp_path / "archive"
    url = standin.add_file("img.jpg", IMAGE)
    standin.add_tune(1, [], [url])
    standin.faults["img.jpg"] = [Cut(at=100_000), Status(503)]
    assert run_fetch(standin, archive, "1", "--retries", "1") != 0
    name = partial_name(identity(url))
    assert (archive / "tmp" / f"{name}.part").stat().st_size == 100_000
    assert (archive / "tmp" / f"{name}.json").exists()
    assert run_fetch(standin, archive, "1") == 0
    last = standin.seen("cdn", "/files/img.jpg")[-1]
    assert last.headers.get("Range") == "bytes=100000-"
    assert last.headers.get("If-Range")
    assert blob_file(archive, IMAGE).read_bytes() == IMAGE
    assert tmp_files(archive) == []


# -- the partial itself ----------------------------------------------------------------


def held(tmp_path: Path) -> Partial:
    partial = Partial.held(tmp_path, KEY, tmp_path)
    partial.describe('"etag-1"', len(IMAGE))
    return partial


def test_a_held_partial_touches_no_file_until_its_commit(tmp_path: Path) -> None:
    """hold keeps the bytes in memory; finish writes them once into the named, read-only
    file (the name a failed commit keeps it under), whose bytes and sha256 are the
    download's, with no record beside it."""
    partial = held(tmp_path)
    assert partial.hold([IMAGE[:1000], IMAGE[1000:]])
    assert list(tmp_path.iterdir()) == []
    assert partial.head(4) == IMAGE[:4]
    partial.finish()
    assert partial.path.name == f"{partial_name(KEY)}.part"
    assert partial.path.read_bytes() == IMAGE
    assert stat.S_IMODE(partial.path.stat().st_mode) == 0o400
    assert partial.sha256() == sha256(IMAGE)
    assert not partial.path.with_suffix(".json").exists()


def test_a_held_partial_that_grows_large_takes_its_named_file(tmp_path: Path) -> None:
    """Past RESUMABLE_FROM the bytes go to the named, resumable file, held ones first."""
    partial = held(tmp_path)
    first, rest = os.urandom(1000), os.urandom(RESUMABLE_FROM)
    assert partial.hold([first])
    assert not partial.hold([rest])
    partial.append([rest])
    assert not partial.is_held
    assert partial.path.name == f"{partial_name(KEY)}.part"
    assert partial.path.read_bytes() == first + rest
    assert partial.hashed == len(first + rest)


def test_a_resumable_leftover_that_came_meanwhile_is_left_alone(tmp_path: Path) -> None:
    """Another run's leftover by the same name, come after the staging was listed and
    still resumable by its record, is neither spliced onto the held bytes nor thrown
    away: they go to a private file, and the leftover resumes later as it was."""
    name = partial_name(KEY)
    theirs = os.urandom(500_000)
    (tmp_path / f"{name}.part").write_bytes(theirs)
    (tmp_path / f"{name}.json").write_bytes(record(KEY, '"other"', 900_000, 0, None, None))
    partial = held(tmp_path)
    assert partial.hold([IMAGE[:1000]])
    partial.spill()
    assert partial.path.name.startswith("private-")
    assert partial.path.read_bytes() == IMAGE[:1000]
    partial.close(keep=False)
    reopened = Partial.open(tmp_path, KEY, tmp_path)
    assert (reopened.size, reopened.validator) == (len(theirs), '"other"')
    assert reopened.path.read_bytes() == theirs


def test_a_leftover_its_record_does_not_vouch_for_is_taken_over(tmp_path: Path) -> None:
    """A leftover with no usable record holds nothing to resume: the held bytes take its
    name, none of its bytes stay, and its stale record is gone."""
    name = partial_name(KEY)
    (tmp_path / f"{name}.part").write_bytes(os.urandom(500_000))
    (tmp_path / f"{name}.json").write_bytes(b"{damaged")
    partial = held(tmp_path)
    assert partial.hold([IMAGE[:1000]])
    partial.spill()
    assert partial.path.name == f"{name}.part"
    assert partial.path.read_bytes() == IMAGE[:1000]
    assert not (tmp_path / f"{name}.json").exists()
    partial.close(keep=True)
    reopened = Partial.open(tmp_path, KEY, tmp_path)
    assert (reopened.size, reopened.validator) == (1000, '"etag-1"')


def test_a_held_partial_kept_when_stopped_is_resumable(tmp_path: Path) -> None:
    """close(keep) of a partial still held (Ctrl-C mid-download) writes its named file
    and record, which the next run resumes."""
    partial = held(tmp_path)
    assert partial.hold([IMAGE[:1000]])
    partial.close(keep=True)
    reopened = Partial.open(tmp_path, KEY, tmp_path)
    assert (reopened.size, reopened.validator) == (1000, '"etag-1"')
    assert reopened.path.read_bytes() == IMAGE[:1000]


def test_a_spill_that_fails_keeps_the_bytes_held_and_leaves_no_file(tmp_path: Path) -> None:
    """A write that fails part-way (a full disk) removes the file it started; the bytes
    stay held, counted once, for the retry."""
    calls = 0

    def half_then_full(fd: int, views: list[memoryview], offset: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            return os.pwritev(fd, [views[0][:400]], offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    partial = Partial.held(tmp_path, KEY, tmp_path, half_then_full)
    partial.describe('"etag-1"', len(IMAGE))
    assert partial.hold([IMAGE[:1000]])
    with pytest.raises(StorageError):
        partial.spill()
    assert partial.is_held
    assert partial.size == 1000
    assert list(tmp_path.iterdir()) == []


def test_a_held_partial_let_go_leaves_nothing(tmp_path: Path) -> None:
    """close without keeping, or with nothing worth keeping, writes no file."""
    partial = held(tmp_path)
    assert partial.hold([IMAGE[:1000]])
    partial.close(keep=False)
    empty = Partial.held(tmp_path, KEY, tmp_path)
    empty.close(keep=True)  # no bytes, no validator
    assert list(tmp_path.iterdir()) == []


def test_closing_a_partial_renamed_away_never_removes_a_file_now_by_its_name(
    tmp_path: Path,
) -> None:
    """A commit cancelled just after its rename leaves the partial to close: the name
    may hold another process's new partial by then, which close must not remove."""
    partial = Partial.open(tmp_path, KEY, tmp_path)
    partial.describe('"etag-1"', len(IMAGE))
    partial.append([IMAGE])
    partial.finish()
    name = partial.path
    os.replace(name, tmp_path / "blob")  # the store's rename, done before the cancel
    name.write_bytes(b"another run's bytes")
    partial.close(keep=True)
    assert name.read_bytes() == b"another run's bytes"
    assert (tmp_path / "blob").read_bytes() == IMAGE
