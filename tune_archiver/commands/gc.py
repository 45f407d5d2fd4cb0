"""`gc`: remove blobs no manifest references, and partial downloads left for a day.

On a local archive gc holds the archive lock exclusively, so no fetch runs while it
decides: a blob that a running fetch has just stored, or is about to reuse, is never
taken. An S3 archive has no lock across machines; there gc leaves alone any blob
younger than the store's gc_grace (a day) by the bucket's clock (store_now), which a
running fetch keeps refreshed.
A manifest gc cannot read stops it, since it cannot know what that one references.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from tune_archiver import manifest
from tune_archiver.download.journal import Journals
from tune_archiver.download.staging import Staging
from tune_archiver.errors import (
    ArchiverError,
    Denied,
    NewerManifest,
    NotAFile,
    StorageError,
    UnreadableManifest,
)
from tune_archiver.layout import blob_key, is_sha256, named_blob
from tune_archiver.store import Store, store_now

T = TypeVar("T")

PARTIAL_MAX_AGE = timedelta(days=1)


@dataclass
class GcReport:
    """What gc removed, or would remove with --dry-run: (key, bytes) each."""

    blobs: list[tuple[str, int]] = field(default_factory=list)
    partials: list[tuple[str, int]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # why one could not be removed

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.blobs + self.partials)

    @property
    def copies(self) -> int:
        """How many of `partials` are copies a stopped verify --repair left of a blob (a
        bucket's stray at a wrong place, a local .<sha256>.put-back): no partial download,
        but a blob's bytes, a checkpoint's maybe, which the summary counts apart."""
        return sum(not what.startswith("unfinished ") and is_sha256(
            what.rsplit("/", 1)[-1].removeprefix(".").removesuffix(".put-back"))
            for what, _ in self.partials)


async def collect(
    store: Store,
    now: datetime,
    dry_run: bool,
    staging: Staging,
    waiting: Callable[[], None] | None = None,
    report: GcReport | None = None,
) -> GcReport:
    """Find (and unless dry_run, remove) unreferenced blobs, and the partial downloads
    in `staging` and the store's own uploads left for a day.

    A dry run holds the lock as gc does, so what it lists is exactly what gc would
    remove now (it too waits for a running fetch). Raises ArchiverError, removing
    nothing, while a manifest is unreadable or one set aside as damaged is kept. Each
    blob removed is added to `report`'s as it goes: a stop part way can say them.
    """
    async with store.locked(exclusive=True, waiting=waiting) as held:
        await _no_damaged(store)
        cutoff = now - PARTIAL_MAX_AGE  # of the staging folder's files, by our clock
        # and those a stopped fetch committed, named by its tune's journal till it is swept
        referenced = await referenced_blobs(store) | await Journals(
            staging.directory).blobs(cutoff)
        cut = tuple(sha256 for sha256 in referenced if len(sha256) < 64)  # a line cut inside it
        # Again: a fetch on another machine (a bucket has no lock) may have set one aside
        # since, which gc then found gone, its blobs unreferenced. Copied there first.
        await _no_damaged(store)
        report = GcReport() if report is None else report
        # by the clock the store dates blobs by (a bucket's: a fetch elsewhere reads it too,
        # see Store.gc_grace); this machine's, ahead, took a blob a fetch had just stored
        now = store_now(store, now)
        young = now - store.gc_grace  # see Store.gc_grace: a fetch may be about to refer to it
        left = now - PARTIAL_MAX_AGE  # the store's uploads: a running fetch's are younger
        unreferenced = [
            (blob_key(blob.sha256), blob.size)
            for blob in await store.blobs()
            if blob.sha256 not in referenced and not blob.sha256.startswith(cut)
            and blob.modified <= young
        ]
        partials = [*await staging.stale(cutoff), *await store.stale_uploads(left)]
        if dry_run:
            report.blobs, report.partials = unreferenced, partials
        else:
            # each upload swept is said, those before a failure part way too; a bucket
            # refusing the sweep alone (Denied: a policy without s3:AbortMultipartUpload)
            # is said as well, and gc goes on. Before the blobs: a bucket's copy a killed
            # put-back left at a wrong place is known for one only while its blob is there
            await _or_failed(store.remove_stale_uploads(left, report.partials),
                             report.failed, [], refused=(StorageError, Denied))
            await _remove_blobs(store, unreferenced, young, report.blobs, report.failed, held)
            report.partials[:0] = await staging.remove_stale(cutoff, report.failed)
    return report


async def _no_damaged(store: Store) -> None:
    """ArchiverError while a manifest set aside as damaged is kept."""
    damaged = await store.damaged_manifests()
    if damaged:
        raise ArchiverError(
            f"{len(damaged)} damaged manifest(s) set aside in manifests/damaged/ "
            f"({', '.join(damaged[:3])}{', ...' if len(damaged) > 3 else ''}); gc "
            "removes nothing while they are kept, since it cannot know what they "
            "reference: check them (verify names them), then remove them"
        )


async def _remove_blobs(store: Store, blobs: list[tuple[str, int]], young: datetime,
                        removed: list[tuple[str, int]], failed: list[str],
                        held: Callable[[], bool]) -> None:
    """Remove `blobs`, each added to `removed` once gone: one the store will not remove
    is said in `failed`, and the others are removed. A bucket refusing deletes (Denied)
    is said once, and no further blob is tried; those removed before it are still said
    (it stopped gc, and what it had removed went unsaid). So is the archive's lock lost
    (`held` False: its lock file removed by hand, a fetch may have taken a new one and
    named a blob listed here). gc goes on to the partials, which their own locks keep."""
    for key, size in blobs:
        if not held():
            failed.append(f"the archive's lock file {store}/lock was removed while this run "
                          "held it (a fetch may have started since, naming blobs gc listed): "
                          "gc removed no further blob; run gc again, and never remove a "
                          "lock file (a lock dies with its process)")
            break
        try:
            if await _or_failed(store.delete_blob(key.rsplit("/", 1)[-1], older_than=young),
                                failed, False):
                removed.append((key, size))
        except Denied as exc:
            failed.append(f"{exc}; gc removed no further blob")
            break


async def _or_failed(removal: Awaitable[T], failed: list[str], otherwise: T,
                     refused: tuple[type[ArchiverError], ...] = (StorageError,)) -> T:
    """What the removal gives; one the store refuses (a folder made read-only, EIO, a
    bucket's listing of uploads failing: that step's alone) is said in `failed`, and
    `otherwise` given: gc goes on. Stopping there left what it had removed unsaid, and
    the rest in place. A bucket refusing deletes (Denied) is not caught here unless
    `refused` says so: said once (by _remove_blobs), rather than once per blob."""
    try:
        return await removal
    except refused as exc:
        failed.append(str(exc))
        return otherwise


async def referenced_blobs(store: Store) -> set[str]:
    """Every sha256 any manifest names, whatever the entry's status, by an entry's
    sha256 or by its path.

    Raises ArchiverError, naming the tune and what is wrong, for a manifest that
    cannot be read: gc cannot know what that one references.
    """
    referenced: set[str] = set()
    for tune_id in await store.manifest_ids():
        try:
            found = await manifest.read(store, tune_id)
        except UnreadableManifest as exc:
            # Never "or removed": the blobs it alone names would go with this very gc,
            # and a tune expired upstream could never be fetched again.
            until = ("tune-archiver is upgraded" if isinstance(exc, NewerManifest)
                     else f"it is mended: the next fetch of tune {tune_id} sets it aside, "
                     "and the fetch after it archives the tune anew (one gone upstream, "
                     f"which no fetch finds, is moved to manifests/damaged/{tune_id}-0.json "
                     "by hand; never remove it: gc would then take the blobs it alone names)")
            raise ArchiverError(f"{exc}; gc removes nothing until {until}") from exc
        except StorageError as exc:
            # A folder, link or FIFO, or one the local disk fails to read (EIO, past the
            # size a manifest may have): no fetch sets it aside (verify says the same).
            # A bucket's failure (a 503) is said as it is: no move mends it.
            if not (isinstance(exc, NotAFile) or store.unreadable_is_damaged):
                raise
            raise ArchiverError(
                f"{exc}; gc removes nothing until it is moved to manifests/damaged/"
                f"{tune_id}-0.json in the archive (gc keeps every blob while it is there), "
                f"then the next fetch of tune {tune_id} archives the tune anew") from exc
        for entry in found.entries if found is not None else ():
            # and the blob its path names, when another: an entry whose sha256 a hand
            # edit or a flipped bit changed still names its blob there (verify says so)
            referenced.update(filter(None, (entry.sha256, named_blob(entry.path))))
    return referenced
