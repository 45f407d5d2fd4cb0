"""The storage seam: what every archive backend offers (location.py says which one a
location names: a plain path is a local directory, local.LocalStore; s3://bucket/prefix
is object storage, s3.store.S3Store, the optional `[s3]` extra). A Store holds blobs by sha256
and manifests by tune, and walks them for the archive commands. How a download grows
before it becomes a blob is the download side's business (download/staging.py): it
hands the store a growing local file, and the store takes it in through an Intake.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol, runtime_checkable

from tune_archiver.errors import ArchiverError
from tune_archiver.manifest import Entry
from tune_archiver.models import Blob, StoredBlob

# Given a manifest's bytes (None when there is none), the bytes to write in their place.
Change = Callable[[bytes | None], Awaitable[bytes]]


class Growing(Protocol):
    """A local file being downloaded, as a store sees it while taking it in."""

    @property
    def path(self) -> Path:
        """Where the file is."""
        ...

    @property
    def hashed(self) -> int:
        """How many bytes from the first are on disk and hashed (it drops on a restart)."""
        ...

    size: int  # bytes received so far, hashed or not: a split file fills out of order

    on_hashed: Callable[[], None] | None  # called (from a writer thread) as `hashed` grows


class Intake(Protocol):
    """A blob on its way into the store, from a file that may still be growing."""

    async def commit(self, finish: Callable[[], Blob]) -> Blob:
        """Call `finish` (blocking: it completes, fsyncs and hashes the file, and returns
        its blob) in a worker thread, then make the file that blob; returns it.

        The file's name is the store's afterwards (renamed away or removed); the
        caller only closes its descriptor. A blob already stored is kept as it is, or
        (a local archive, where a file may rot) replaced by these bytes.
        """
        ...

    async def abandon(self) -> None:
        """The download failed or stopped: drop whatever was sent ahead (the file stays)."""
        ...


class Store(Protocol):
    """An archive: blobs named by their sha256, one manifest per tune."""

    gc_grace: timedelta  # gc leaves unreferenced blobs younger than this alone
    # Whether a blob that cannot be read is damaged where it lies (a disk's EIO), not
    # maybe whole behind a read that failed on its way (a bucket's): repair moves it.
    unreadable_is_damaged: bool

    def locked(
        self, exclusive: bool, waiting: Callable[[], None] | None = None
    ) -> AbstractAsyncContextManager[Callable[[], bool]]:
        """Hold the archive lock: shared by fetches, exclusive for gc (`waiting` if held);
        gives a check that it is still held (False once its lock file was removed)."""
        ...

    async def exists(self) -> bool:
        """True when there is an archive at this location."""
        ...

    async def prepare(self) -> None:
        """Create the archive if it is missing, and check that it can be used."""
        ...

    async def blob_size(self, sha256: str) -> int | None:
        """The stored blob's size, or None when it is not there."""
        ...

    def intake(self, file: Growing) -> Intake:
        """Start taking in a file as it downloads (an S3 store sends whole parts early)."""
        ...

    async def read_manifest(self, tune_id: int) -> bytes | None:
        """The manifest's bytes, or None when the tune has none."""
        ...

    async def write_manifest(self, tune_id: int, data: bytes) -> str:
        """Replace the tune's manifest atomically; returns its archive-relative key."""
        ...

    async def update_manifest(self, tune_id: int, change: Change) -> str:
        """Write change(the manifest's bytes, or None) in its place, as one step: no
        other writer's update between the read and the write is lost. `change` may
        raise to write nothing. Returns the manifest's archive-relative key."""
        ...

    async def set_aside_manifest(self, tune_id: int, stamp: str, damaged: bytes) -> str | None:
        """Move the tune's manifest to manifests/damaged/, never over another, if it still
        holds `damaged` (the bytes found unreadable): another run may have set those
        aside and written a good manifest since. Returns where it went; None, nothing
        moved, when the manifest holds other bytes now or is gone."""
        ...

    async def damaged_manifests(self) -> list[str]:
        """The manifests set aside as damaged."""
        ...

    async def manifest_ids(self) -> list[int]:
        """Every tune with a manifest, in increasing order."""
        ...

    async def blobs(self) -> list[StoredBlob]:
        """Every blob stored at the place its name gives."""
        ...

    async def misplaced(self) -> dict[str, str]:
        """Digest-named files at a wrong place: sha256 -> archive-relative key."""
        ...

    async def hash_blob(
        self, sha256: str, advance: Callable[[int], None]
    ) -> tuple[int, str] | None:
        """Re-read a blob: (size, sha256 of its bytes), or None when it is missing."""
        ...

    async def save_blob_as(
        self, sha256: str, target: Path, hard_link: bool, size: int | None = None
    ) -> str:
        """Put the blob's bytes at the new local file `target`: "linked" or "copied".
        With `size` (what the manifest records), a blob of another size is refused
        (StorageError), and one whose bytes are not its name's (IntegrityError), before
        anything is written."""
        ...

    async def set_aside_blob(self, sha256: str, stamp: str, misplaced: str | None) -> list[str]:
        """Move what sits at the blob's place, and the copy at the wrong place
        `misplaced` (as `misplaced()` found it), to tmp/damaged/ (never deleted, never
        over another); returns where each went."""
        ...

    async def put_back(self, sha256: str, key: str, stamp: str) -> list[str] | None:
        """Move the digest-named file at the wrong place `key` to the blob's place if its
        bytes hash to its name, whatever sat there first moved to tmp/damaged/ (as
        set_aside_blob moves it); returns where that went. None, nothing moved, when
        the file there is not whole; StorageError, it kept, when its copy is not."""
        ...

    async def delete_blob(self, sha256: str, older_than: datetime | None = None) -> bool:
        """Remove a blob (gc only); one already gone is not an error. With `older_than`,
        one whose date is later now (a fetch with no lock to wait for refreshed it since
        gc listed it) is kept: False."""
        ...

    async def delete_manifest(self, tune_id: int) -> None:
        """Remove the tune's manifest (forget); one already gone is not an error."""
        ...

    async def stale_uploads(self, older_than: datetime) -> list[tuple[str, int]]:
        """Leftovers of the store's own uploads older than that: (description, bytes)."""
        ...

    async def remove_stale_uploads(
        self, older_than: datetime, removed: list[tuple[str, int]] | None = None
    ) -> list[tuple[str, int]]:
        """Remove what stale_uploads lists; returns what was removed, each also added to
        `removed` as it is: what a sweep failing part way did is known still."""
        ...


@runtime_checkable
class ReadsInBulk(Protocol):
    """A store that reads many manifests, or looks up many blobs, in one step (a local
    one: one trip to a worker thread, not one per file). Optional: read_manifests and
    blob_sizes below do it one by one, concurrently, for any other store."""

    async def read_manifests(self, tune_ids: Sequence[int]) -> list[bytes | None]:
        """Each tune's manifest bytes, or None when it has none, in the order asked."""
        ...

    async def blob_sizes(self, sha256s: Collection[str]) -> dict[str, int]:
        """sha256 -> size of each of those blobs that is stored."""
        ...


async def read_manifests(store: Store, tune_ids: Sequence[int]) -> list[bytes | None]:
    """Each tune's manifest bytes, or None when it has none, in the order asked."""
    if isinstance(store, ReadsInBulk):
        return await store.read_manifests(tune_ids)
    return list(await asyncio.gather(*(store.read_manifest(i) for i in tune_ids)))


async def blob_sizes(store: Store, sha256s: Collection[str]) -> dict[str, int]:
    """sha256 -> size of each of those blobs that is stored."""
    if isinstance(store, ReadsInBulk):
        return await store.blob_sizes(sha256s)
    found = await asyncio.gather(*(store.blob_size(sha256) for sha256 in sha256s))
    return {sha256: size for sha256, size in zip(sha256s, found, strict=True)
            if size is not None}


@runtime_checkable
class KeepsYoung(Protocol):
    """A store whose gc takes a blob no manifest names once it is old, with no lock to
    keep it off while a run is about to name it (a bucket's: see gc_grace)."""

    async def keep_young(self, blob: Blob) -> None:
        """Keep a blob held at its size that this run will name without storing it, as
        one it stored: refreshed when getting old, and looked up again before a manifest
        names it. Nothing when it is not there at its size."""
        ...


@runtime_checkable
class OwnClock(Protocol):
    """A store that dates its blobs by a clock of its own (a bucket's), which gc reads
    their age by: this machine's may run ahead of it, or behind."""

    def now(self, ours: datetime) -> datetime:
        """Now by the store's clock; `ours` (this machine's) while it is not known."""
        ...


def store_now(store: Store, ours: datetime) -> datetime:
    """Now by the clock the store dates its blobs by, as gc reads ages (`ours` for a
    local archive): the earlier of a bucket's and ours. Its answers' Date may run ahead
    of the clock it dates objects by (a proxy or a balancer's node on a host days ahead),
    and gc then took a blob a fetch had just stored; an early clock only keeps more."""
    return min(store.now(ours), ours) if isinstance(store, OwnClock) else ours


async def kept_young(store: Store, journaled: Sequence[Entry]) -> Sequence[Entry]:
    """The journal's entries, their blobs kept young (KeepsYoung) before the run takes
    them as archived: a stopped run stored them, and nothing names them but a journal
    a gc on another machine never sees, so one a day old went while the rerun fetched
    the rest, and its manifest named it ok. One not refreshed is taken as before, and so
    are the rest once one is not: a bucket failing (unreachable, throttling) fails each
    line after all its tries, which made a journal of 200 photos a silent half hour
    before the run met the same failure in its next request."""
    if isinstance(store, KeepsYoung):
        for blob in (entry.blob for entry in journaled):
            try:
                if blob is not None:
                    await store.keep_young(blob)
            except ArchiverError:
                break
    return journaled
