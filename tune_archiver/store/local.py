"""The local content-addressed archive: commit by rename, lookups, walks, the lock.

A blob appears under its final name only by an atomic rename of a downloaded file (staged in
tmp/, see download/staging.py) whose bytes were fully received, size-checked, hashed and
fsynced; its directory is fsynced after. Two writers of the same blob both rename identical
bytes, so concurrent fetches never expose a half-written blob. Manifests are replaced the
same way, so they are never interleaved. Committed blobs are read-only. Every blocking call
runs through threads.in_thread, which sees it through even when the caller is cancelled.

The archive lock (<archive>/lock) is held shared by every fetch and exclusively by
gc, so gc never judges a blob unreferenced while a fetch may be about to reference it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import aiofiles
import aiofiles.os

from tune_archiver.errors import ConfigError, NotAFile, StorageError, storage_error
from tune_archiver.layout import (
    DAMAGED,
    DAMAGED_BLOBS,
    MANIFESTS,
    MAX_MANIFEST_BYTES,
    OBJECTS,
    TMP,
    blob_key,
    manifest_id,
    manifest_key,
)
from tune_archiver.models import Blob, StoredBlob
from tune_archiver.safefs import (
    NOT_WRITABLE,
    check_folder,
    make_archive_folders,
    refuse_links,
    refuse_others_links,
)
from tune_archiver.store import Change, Growing
from tune_archiver.store.aside import move_blobs_aside, move_manifest_aside, put_back, stale_copies
from tune_archiver.store.files import (
    DirSyncs,
    has_manifests,
    hash_file,
    read_capped,
    remove_file,
    replace_file,
    size_of,
    store_blob,
    walk_objects,
)
from tune_archiver.store.locks import ArchiveLock, holding
from tune_archiver.store.saving import save_as
from tune_archiver.threads import in_thread, reading

LOCK = "lock"
FOLDERS = (OBJECTS, MANIFESTS, TMP)  # made by prepare
log = logging.getLogger(__name__)
READ_BLOCK = 4 * 2**20
MANIFEST_LOCK_POLL = 0.02  # a manifest is held for milliseconds
MANIFEST_ATTEMPTS = 5  # tries of an update whose lock file is removed while it holds it
# A hard link is impossible across filesystems, or where the filesystem refuses it.
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES})


class LocalStore:
    """An archive in a local directory."""

    gc_grace = timedelta(0)  # the archive lock keeps gc and fetches apart
    unreadable_is_damaged = True  # the disk failed reading it

    def __init__(self, root: Path) -> None:
        self.root = root
        # Lexical, not resolved: the archive may sit behind a symlink.
        self._absolute = Path(os.path.normpath(root.absolute()))
        self._lock = ArchiveLock(self.path(LOCK), root)
        self.dir_syncs = DirSyncs()  # blob folders to fsync before the next manifest
        self._warned = False  # that others may read the archive: said once

    def __str__(self) -> str:
        return str(self.root)

    def path(self, key: str) -> Path:
        """The file for an archive-relative key; refuses any key that would leave the root."""
        root = self._absolute
        path = Path(os.path.normpath(root / key))
        if not path.is_relative_to(root) or path == root:
            raise StorageError(f"refused a path outside the archive: {key!r}")
        return path

    async def exists(self) -> bool:
        """True when there is an archive here (see files.has_manifests)."""
        return await in_thread(has_manifests, self.root, self.path(MANIFESTS))

    async def prepare(self) -> None:
        """Create the archive's folders (0700) if they are missing.

        Raises ConfigError for an archive of another user or one others may write in, one
        reached through a link of another user, or one we may not create (permission
        denied, a read-only filesystem); warns once when others may read it.
        """
        # As export's DEST: a link another user planted on the way (a shared folder)
        # would have the archive made, and later sought, in a folder of theirs.
        refuse_others_links(self.root, "the archive")
        warning = check_folder(self.root, "the archive")
        if warning and not self._warned:  # verify --repair prepares, then its fetch
            log.warning("%s", warning)
            self._warned = True
        # Folders this tool makes: a link at one was planted, and would take blobs,
        # manifests or partials out of the archive.
        refuse_links([self.root / "objects", *(self.root / name for name in FOLDERS)],
                     "the archive's folder")
        try:
            await in_thread(make_archive_folders, self.root, FOLDERS)
        except OSError as exc:
            if exc.errno in {*NOT_WRITABLE, errno.ENOTDIR, errno.EEXIST}:  # the operator's to fix
                raise ConfigError(
                    f"cannot create the archive in {self.root}: {exc.strerror or exc}"
                ) from exc
            raise storage_error(exc, self.root, "create the archive") from exc

    async def blob_size(self, sha256: str) -> int | None:
        """The size of the blob, or None when it is not in the archive as a regular file
        (a link or a FIFO at its place is never followed: the blob is fetched again)."""
        try:
            return size_of(self.path(blob_key(sha256)))
        except OSError as exc:
            raise storage_error(exc, self.root, "look up a blob") from exc

    async def blob_sizes(self, sha256s: Collection[str]) -> dict[str, int]:
        """sha256 -> size of each of those blobs stored as a regular file, looked up
        in one worker thread."""
        return await in_thread(self._blob_sizes, list(sha256s))

    def _blob_sizes(self, sha256s: list[str]) -> dict[str, int]:
        found = {}
        checked: set[str] = set()  # the fan-out folders found whole so far
        try:
            for sha256 in sha256s:  # blob_key refuses anything that is not a digest
                size = size_of(os.path.join(self._absolute, blob_key(sha256)), checked)
                if size is not None:
                    found[sha256] = size
        except OSError as exc:
            raise storage_error(exc, self.root, "look up a blob") from exc
        return found

    def intake(self, file: Growing) -> _Intake:
        """Take in a file staged in tmp/: at its commit, a rename to the blob's name."""
        return _Intake(self, file)

    async def read_manifest(self, tune_id: int) -> bytes | None:
        """The manifest's bytes, or None when the tune has none yet. Raises ConfigError
        for a link planted at manifests/, as manifest_ids does: `verify 1` found the
        manifest of a folder outside whole where `verify` refused it."""
        refuse_links([self.path(MANIFESTS)], "the archive's folder")
        return await in_thread(self._read_manifest, self.path(manifest_key(tune_id)), tune_id)

    async def read_manifests(self, tune_ids: Sequence[int]) -> list[bytes | None]:
        """Each tune's manifest bytes (None when it has none), read in one worker
        thread: a page of the listing costs one trip, not three per tune."""
        refuse_links([self.path(MANIFESTS)], "the archive's folder")
        return await in_thread(self._read_manifests, list(tune_ids))

    def _read_manifests(self, tune_ids: list[int]) -> list[bytes | None]:
        folder = self.path(MANIFESTS)
        return [self._read_manifest(folder / os.path.basename(manifest_key(tune_id)), tune_id)
                for tune_id in tune_ids]

    def _read_manifest(self, path: Path, tune_id: int) -> bytes | None:
        """A FIFO, a link or a device planted at a manifest's place is never read."""
        doing = f"read the manifest of tune {tune_id}"
        try:
            return read_capped(path, MAX_MANIFEST_BYTES, "a manifest")
        except StorageError as exc:  # NotAFile stays one: no fetch can set it aside
            raise type(exc)(f"cannot {doing} in {self.root}: {exc}") from exc
        except OSError as exc:
            raise storage_error(exc, self.root, doing) from exc

    async def write_manifest(self, tune_id: int, data: bytes) -> str:
        """Replace the tune's manifest atomically; returns its archive-relative key."""
        key = manifest_key(tune_id)
        await in_thread(self._write_atomic, self.path(key), data)
        return key

    async def update_manifest(self, tune_id: int, change: Change) -> str:
        """Read, change and write the tune's manifest under its own lock (manifests/<id>.lock),
        so a second fetch of the tune waits and then builds on what this one wrote; never
        once the archive's lock held is lost (ArchiveLock). Returns the manifest's key."""
        key = manifest_key(tune_id)
        for _ in range(MANIFEST_ATTEMPTS):
            async with self._manifest_lock(tune_id) as held:
                data = await change(await self.read_manifest(tune_id))
                # Its lock file removed meanwhile (by hand, a clean-up), another run may have
                # taken a new one and written: change what is there now instead.
                if held():
                    self._lock.check(f"write the manifest of tune {tune_id}")
                    await in_thread(self._write_atomic, self.path(key), data)
                    return key
        raise StorageError(f"cannot write the manifest of tune {tune_id} in {self.root}: its "
                           f"lock file was removed while held, each of {MANIFEST_ATTEMPTS} times")

    def _manifest_lock(
        self, tune_id: int
    ) -> contextlib.AbstractAsyncContextManager[Callable[[], bool]]:
        """The tune's own lock, held by whoever writes its manifest or sets it aside;
        gives a check that its lock file is still in place (see locks.holding)."""
        # verify --repair and retrain come here with no fetch's prepare before them: a
        # link planted at manifests/ would have the lock file made outside the archive.
        refuse_links([self.path(MANIFESTS)], "the archive's folder")
        return holding(self.path(f"{MANIFESTS}/{tune_id}.lock"), True, self.root,
                       poll=MANIFEST_LOCK_POLL)

    async def set_aside_manifest(self, tune_id: int, stamp: str, damaged: bytes) -> str | None:
        """Move the tune's manifest to manifests/damaged/<id>-<stamp>.json (or the name a
        killed move gave it there), never over another one, if it still holds `damaged`:
        checked and moved under the lock its writers hold (see Store.set_aside_manifest)."""
        key = f"{DAMAGED}/{tune_id}-{stamp}.json"
        async with self._manifest_lock(tune_id):
            if await self.read_manifest(tune_id) != damaged:
                return None
            with _inside(self.root, "set a damaged manifest aside"):
                return await in_thread(move_manifest_aside, self._absolute,
                                       manifest_key(tune_id), key)

    async def damaged_manifests(self) -> list[str]:
        """The manifests set aside as damaged, by archive-relative key."""
        names = await self._names(DAMAGED, "list the damaged manifests")
        return sorted(f"{DAMAGED}/{name}" for name in names)

    async def _names(self, key: str, doing: str) -> list[str]:
        """The names in an archive folder; none when it does not exist, or is a file
        (a stray file at manifests/damaged holds no manifest set aside, and must not
        stop verify from checking every tune)."""
        try:
            return await aiofiles.os.listdir(self.path(key))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise storage_error(exc, self.root, doing) from exc

    def _write_atomic(self, final: Path, data: bytes) -> None:
        with _inside(self.root, "write a manifest"):
            self.dir_syncs.sync()  # every blob it may name is durably there first
            # verify --repair and retrain write manifests with no fetch's prepare before
            # them: tmp/ and manifests/ are opened without following a link.
            replace_file(self._absolute, f"{MANIFESTS}/{final.name}", data, TMP)

    # -- the archive lock ----------------------------------------------------------

    def locked(
        self, exclusive: bool, waiting: Callable[[], None] | None = None
    ) -> contextlib.AbstractAsyncContextManager[Callable[[], bool]]:
        """Hold the archive lock: shared for a fetch, exclusive for gc (see locks.py). Raises
        ConfigError, as prepare does, for an archive of another user or one others may
        write in: gc and forget come here with no prepare, and a lock file of theirs
        (root's) would be refused as planted by every run of its owner."""
        check_folder(self.root, "the archive")  # its warning is prepare's to give
        return self._lock.held(exclusive, waiting)

    # -- reading the whole archive (verify, list, export, gc) ------------------------

    async def manifest_ids(self) -> list[int]:
        """Every tune with a manifest, in increasing order; other names are ignored.
        Raises ConfigError for a link planted at manifests/: gc would judge every blob
        by the manifests of a folder outside, and verify find that folder's tunes whole."""
        refuse_links([self.path(MANIFESTS)], "the archive's folder")
        names = await self._names(MANIFESTS, "list the manifests")
        return sorted(i for i in map(manifest_id, names) if i is not None)

    async def blobs(self) -> list[StoredBlob]:
        """Every blob at the path its name gives."""
        found = await in_thread(walk_objects, self.path(OBJECTS), self.root)
        return [blob for blob, key in found if key == blob_key(blob.sha256)]

    async def misplaced(self) -> dict[str, str]:
        """Files named by a digest but in the wrong fan-out directory: sha256 -> key.
        A fan-out folder that cannot be listed is passed by: its blobs are each read."""
        found = await in_thread(walk_objects, self.path(OBJECTS), self.root, True)
        return {blob.sha256: key for blob, key in found if key != blob_key(blob.sha256)}

    async def hash_blob(
        self, sha256: str, advance: Callable[[int], None]
    ) -> tuple[int, str] | None:
        """Re-read the blob: its size and the sha256 of its bytes; None when it is missing.

        In a worker thread, calling `advance` there; a stop gives it up (threads.reading)."""
        path = self.path(blob_key(sha256))
        return await reading(lambda step: hash_file(path, step, self.root), advance)

    async def save_blob_as(
        self, sha256: str, target: Path, hard_link: bool, size: int | None = None
    ) -> str:
        """Put the blob's bytes at `target`, which must not exist; "linked" or "copied".

        A hard link when asked and the filesystem allows it, else a copy written
        beside the target and linked into place, so nothing is ever overwritten. With
        `size`, a blob of another size (cut short by the disk) is refused by one fstat,
        nothing written; one whose bytes do not hash to its name (rotted, same size) is
        refused with IntegrityError, nothing written. A stop gives it up at its next chunk."""
        blob = self.path(blob_key(sha256))
        return await reading(lambda step: save_as(blob, target, hard_link, self.root, size,
                                                  step), lambda _: None)

    async def set_aside_blob(self, sha256: str, stamp: str, misplaced: str | None) -> list[str]:
        """Move the blob's file (a link or FIFO as it is, never followed), and the copy
        at the wrong place `misplaced`, to tmp/damaged/<sha256>-<stamp>; returns the new
        keys."""
        keys = [blob_key(sha256), *([misplaced] if misplaced else [])]
        with _inside(self.root, "set a damaged blob aside"):
            return await in_thread(move_blobs_aside, self._absolute, keys, DAMAGED_BLOBS,
                                   f"{sha256}-{stamp}")

    async def put_back(self, sha256: str, key: str, stamp: str) -> list[str] | None:
        """The file at `key` renamed to the blob's place if whole (see Store.put_back),
        never through a link; hashed in a worker thread."""
        with _inside(self.root, "put a misplaced blob back"):
            return await in_thread(put_back, self._absolute, key, blob_key(sha256), sha256,
                                   DAMAGED_BLOBS, f"{sha256}-{stamp}")

    async def delete_blob(self, sha256: str, older_than: datetime | None = None) -> bool:
        """Remove a blob (gc only, under the exclusive lock, so no fetch refreshed it since:
        `older_than` is not looked at), in its fan-out folder opened without following a
        link: gc listed the folder as one, but a link planted at it since would have it
        remove a file outside the archive."""
        with _inside(self.root, f"remove {blob_key(sha256)}"):
            await in_thread(remove_file, self._absolute, blob_key(sha256))
        return True

    async def delete_manifest(self, tune_id: int) -> None:
        """Remove the tune's manifest (forget, under the exclusive lock), in manifests/
        opened without following a link: one planted there would have forget remove a
        file outside the archive. Under the tune's own lock too: verify --repair and
        retrain write under it alone, and a write after their read would undo this.
        Durable before it returns: a forgotten manifest a power cut brought back after
        gc removed its blobs would name blobs that are gone."""
        async with self._manifest_lock(tune_id):
            with _inside(self.root, f"remove the manifest of tune {tune_id}"):
                await in_thread(remove_file, self._absolute, manifest_key(tune_id), True)

    async def stale_uploads(self, older_than: datetime) -> list[tuple[str, int]]:
        """The copies a killed put-back left (aside.stale_copies); tmp/ is the staging's."""
        with _inside(self.root, "list the copies a stopped repair left"):
            return await in_thread(stale_copies, self._absolute, older_than, False)

    async def remove_stale_uploads(
        self, older_than: datetime, removed: list[tuple[str, int]] | None = None
    ) -> list[tuple[str, int]]:
        """Remove what stale_uploads lists, each added to `removed` as it goes."""
        with _inside(self.root, "remove a copy a stopped repair left"):
            return await in_thread(stale_copies, self._absolute, older_than, True, removed)


@contextlib.contextmanager
def _inside(root: Path, doing: str) -> Iterator[None]:
    """Our error for a write inside the archive: a link planted on the way refused (never
    followed), another failure said as the filesystem's."""
    try:
        yield
    except NotAFile as exc:
        raise StorageError(f"refused to {doing} in {root}: {exc}, never followed; nothing "
                           "was moved (remove it, then try again)") from exc
    except OSError as exc:
        raise storage_error(exc, root, doing) from exc


class _Intake:
    """A file in tmp/ that becomes a blob by a rename; nothing is sent ahead."""

    def __init__(self, store: LocalStore, file: Growing) -> None:
        self._store = store
        self._file = file  # its path is read at the commit: a held file gets one then

    async def commit(self, finish: Callable[[], Blob]) -> Blob:
        """Finish the file and rename it to the blob's name, read-only, in one thread hop
        (a small file costs one in all); over a blob already there."""
        return await in_thread(self._commit, finish)

    def _commit(self, finish: Callable[[], Blob]) -> Blob:
        blob = finish()
        key = blob_key(blob.sha256)
        with _inside(self._store.root, "store a blob"):
            # Read-only already (Partial.finish); over a blob stored meanwhile, by another
            # run or tune, whose bytes may have rotted since: these were just hashed.
            store_blob(self._store._absolute, self._file.path, key)
            # The folder is fsynced before a manifest names the blob, and its parent
            # too, once a run (on ext4 without a journal a new folder's name is durable
            # only then; one found there may be another run's, made and not yet synced).
            self._store.dir_syncs.add(self._store.path(key).parent, named=True)
        return blob

    async def abandon(self) -> None:
        """Nothing was sent ahead."""
