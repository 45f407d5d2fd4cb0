"""The local content-addressed archive: commit by rename, lookups, walks, the lock.

A blob appears under its final name only by an atomic rename of a downloaded file
(staged in tmp/, see download/staging.py) whose bytes were fully received,
size-checked, hashed and fsynced; its directory is fsynced after. Two writers of the
same blob both rename identical bytes, so concurrent fetches never expose a
half-written blob. Manifests are replaced the same way, so they are never
interleaved. Committed blobs are read-only. Every blocking call runs through
threads.in_thread, which sees it through even when the caller is cancelled.

The archive lock (<archive>/lock) is held shared by every fetch and exclusively by
gc, so gc never judges a blob unreferenced while a fetch may be about to reference it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from stat import S_ISDIR, S_ISREG
from typing import BinaryIO

import aiofiles
import aiofiles.os

from tune_archiver.errors import NotAFile, StorageError, storage_error
from tune_archiver.layout import DAMAGED, MANIFESTS, OBJECTS, TMP, blob_key, is_sha256, manifest_key
from tune_archiver.models import Blob, StoredBlob
from tune_archiver.safefs import check_folder, make_private_dir
from tune_archiver.store import Change, Growing
from tune_archiver.store.locks import flocked
from tune_archiver.threads import in_thread

LOCK = "lock"
log = logging.getLogger(__name__)
READ_BLOCK = 4 * 2**20
MANIFEST_LOCK_POLL = 0.02  # a manifest is held for milliseconds
# A hard link is impossible across filesystems, or where the filesystem refuses it.
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES})


class LocalStore:
    """An archive in a local directory."""

    gc_grace = timedelta(0)  # the archive lock keeps gc and fetches apart

    def __init__(self, root: Path) -> None:
        self.root = root
        # Lexical, not resolved: the archive may sit behind a symlink.
        self._absolute = Path(os.path.normpath(root.absolute()))

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
        """True when there is an archive here (it has its manifests folder)."""
        return await aiofiles.os.path.isdir(self.path(MANIFESTS))

    async def prepare(self) -> None:
        """Create the archive's folders (0700) if they are missing.

        Raises ConfigError for an archive of another user or one others may write in;
        warns once when others may read it.
        """
        warning = check_folder(self.root, "the archive")
        if warning:
            log.warning(warning)
        try:
            for name in (OBJECTS, MANIFESTS, TMP):
                await in_thread(make_private_dir, self.root / name)
        except OSError as exc:
            raise storage_error(exc, self.root, "create the archive") from exc

    async def blob_size(self, sha256: str) -> int | None:
        """The size of the blob, or None when it is not in the archive as a regular file
        (a link or a FIFO at its place is never followed: the blob is fetched again)."""
        try:
            return _size_of(self.path(blob_key(sha256)))
        except OSError as exc:
            raise storage_error(exc, self.root, "look up a blob") from exc

    def intake(self, file: Growing) -> _Intake:
        """Take in a file staged in tmp/: at its commit, a rename to the blob's name."""
        return _Intake(self, file.path)

    async def read_manifest(self, tune_id: int) -> bytes | None:
        """The manifest's bytes, or None when the tune has none yet."""
        try:
            async with aiofiles.open(self.path(manifest_key(tune_id)), "rb") as file:
                return await file.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise storage_error(exc, self.root, f"read the manifest of tune {tune_id}") from exc

    async def write_manifest(self, tune_id: int, data: bytes) -> str:
        """Replace the tune's manifest atomically; returns its archive-relative key."""
        key = manifest_key(tune_id)
        await in_thread(self._write_atomic, self.path(key), data)
        return key

    async def update_manifest(self, tune_id: int, change: Change) -> str:
        """Read, change and write the tune's manifest under its own lock
        (manifests/<id>.lock), so a second fetch of the tune waits and then builds on
        what this one wrote. Returns the manifest's archive-relative key."""
        key = manifest_key(tune_id)
        lock = self.path(f"{MANIFESTS}/{tune_id}.lock")
        async with flocked(lock, True, self.root, poll=MANIFEST_LOCK_POLL):
            data = await change(await self.read_manifest(tune_id))
            await in_thread(self._write_atomic, self.path(key), data)
        return key

    async def set_aside_manifest(self, tune_id: int, stamp: str) -> str:
        """Move the tune's manifest to manifests/damaged/<id>-<stamp>.json, never over
        another one; returns where it went."""
        key = f"{DAMAGED}/{tune_id}-{stamp}.json"
        await in_thread(self._set_aside, self.path(manifest_key(tune_id)), self.path(key))
        return key

    def _set_aside(self, source: Path, target: Path) -> None:
        try:
            target.parent.mkdir(mode=0o700, exist_ok=True)
            os.link(source, target, follow_symlinks=False)  # fails rather than overwrite
            os.unlink(source)
            _sync_dir(target.parent)
            _sync_dir(source.parent)
        except OSError as exc:
            raise storage_error(exc, self.root, "set a damaged manifest aside") from exc

    async def damaged_manifests(self) -> list[str]:
        """The manifests set aside as damaged, by archive-relative key."""
        try:
            names = await aiofiles.os.listdir(self.path(DAMAGED))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise storage_error(exc, self.root, "list the damaged manifests") from exc
        return sorted(f"{DAMAGED}/{name}" for name in names)

    def _write_atomic(self, final: Path, data: bytes) -> None:
        fd, name = -1, ""
        try:
            fd, name = tempfile.mkstemp(dir=self.path(TMP), prefix="manifest-", suffix=".tmp")
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(name, final)
            _sync_dir(final.parent)
        except OSError as exc:
            raise storage_error(exc, self.root, "write a manifest") from exc
        finally:
            if name:
                Path(name).unlink(missing_ok=True)


    # -- the archive lock ----------------------------------------------------------

    def locked(
        self, exclusive: bool, waiting: Callable[[], None] | None = None
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold the archive lock: shared for a fetch, exclusive for gc (see locks.py)."""
        return flocked(self.path(LOCK), exclusive, self.root, waiting)

    # -- reading the whole archive (verify, list, export, gc) ------------------------

    async def manifest_ids(self) -> list[int]:
        """Every tune with a manifest, in increasing order."""
        try:
            names = await aiofiles.os.listdir(self.path(MANIFESTS))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise storage_error(exc, self.root, "list the manifests") from exc
        ids = (name.removesuffix(".json") for name in names if name.endswith(".json"))
        return sorted(int(i) for i in ids if i.isdigit() and int(i) > 0)

    async def blobs(self) -> list[StoredBlob]:
        """Every blob at the path its name gives."""
        found = await in_thread(self._objects)
        return [blob for blob, key in found if key == blob_key(blob.sha256)]

    async def misplaced(self) -> dict[str, str]:
        """Files named by a digest but in the wrong fan-out directory: sha256 -> key."""
        found = await in_thread(self._objects)
        return {blob.sha256: key for blob, key in found if key != blob_key(blob.sha256)}

    def _objects(self) -> list[tuple[StoredBlob, str]]:
        """Each file under objects/sha256/*/ named by a digest, with its key."""
        found = []
        try:
            for directory in self.path(OBJECTS).iterdir():
                if not S_ISDIR(directory.lstat().st_mode):
                    continue  # a link planted here could lead gc out of the archive
                for file in directory.iterdir():
                    stat = file.lstat()
                    if is_sha256(file.name) and S_ISREG(stat.st_mode):
                        modified = datetime.fromtimestamp(stat.st_mtime, UTC)
                        key = f"{OBJECTS}/{directory.name}/{file.name}"
                        found.append((StoredBlob(file.name, stat.st_size, modified), key))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise storage_error(exc, self.root, "list the blobs") from exc
        return found

    async def hash_blob(
        self, sha256: str, advance: Callable[[int], None]
    ) -> tuple[int, str] | None:
        """Re-read the blob: its size and the sha256 of its bytes; None when it is missing.

        Runs in a worker thread (hashlib lets go of the GIL) and calls `advance` there.
        """
        return await in_thread(self._hash_file, sha256, advance)

    def _hash_file(self, sha256: str, advance: Callable[[int], None]) -> tuple[int, str] | None:
        digest, size = hashlib.sha256(), 0
        try:
            with open_regular(self.path(blob_key(sha256))) as file:
                while chunk := file.read(READ_BLOCK):
                    digest.update(chunk)
                    size += len(chunk)
                    advance(len(chunk))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise storage_error(exc, self.root, f"read the blob {sha256}") from exc
        return size, digest.hexdigest()

    async def save_blob_as(self, sha256: str, target: Path, hard_link: bool) -> str:
        """Put the blob's bytes at `target`, which must not exist; "linked" or "copied".

        A hard link when asked and the filesystem allows it, else a copy written
        beside the target and linked into place, so nothing is ever overwritten.
        """
        blob = self.path(blob_key(sha256))
        return await in_thread(self._save_as, blob, target, hard_link)

    def _save_as(self, blob: Path, target: Path, hard_link: bool) -> str:
        try:
            with open_regular(blob) as source:  # a link planted at the blob is never exported
                if hard_link:
                    try:
                        os.link(blob, target, follow_symlinks=False)
                        return "linked"
                    except OSError as exc:
                        if exc.errno not in _NO_LINK:
                            raise
                self._copy(source, target)
            return "copied"
        except FileExistsError as exc:
            raise StorageError(f"{target} already exists; nothing was overwritten") from exc
        except FileNotFoundError as exc:
            raise StorageError(f"the blob {blob.name} is missing from {self.root}") from exc
        except OSError as exc:
            raise storage_error(exc, target.parent, f"write {target.name}") from exc

    def _copy(self, source: BinaryIO, target: Path) -> None:
        """Copy beside the target, then link it into place: nothing is ever overwritten."""
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=".export-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(source, out, READ_BLOCK)
                out.flush()
                os.fsync(out.fileno())
            os.link(name, target)
        finally:
            os.unlink(name)

    async def delete_blob(self, sha256: str) -> None:
        """Remove a blob (gc only, under the exclusive lock)."""
        try:
            await aiofiles.os.remove(self.path(blob_key(sha256)))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise storage_error(exc, self.root, "remove a blob") from exc

    async def stale_uploads(self, older_than: datetime) -> list[tuple[str, int]]:
        """Nothing: a local archive's only leftovers are in tmp/, which the staging sweeps."""
        return []

    async def remove_stale_uploads(self, older_than: datetime) -> list[tuple[str, int]]:
        """Nothing, as stale_uploads."""
        return []


class _Intake:
    """A file in tmp/ that becomes a blob by a rename; nothing is sent ahead."""

    def __init__(self, store: LocalStore, path: Path) -> None:
        self._store = store
        self._path = path

    async def commit(self, blob: Blob) -> None:
        """Rename the file to the blob's name, read-only; a blob already there is kept."""
        await in_thread(self._commit, blob)

    def _commit(self, blob: Blob) -> None:
        final = self._store.path(blob_key(blob.sha256))
        try:
            if _size_of(final) == blob.size:
                # Stored already, by an earlier run or another tune. The caller still
                # holds the file's lock, so the name is ours to remove.
                self._path.unlink()
                return
            make_private_dir(final.parent)  # the file is read-only already (Partial.finish)
            os.replace(self._path, final)
            _sync_dir(final.parent)
        except OSError as exc:
            raise storage_error(exc, self._store.root, "store a blob") from exc

    async def abandon(self) -> None:
        """Nothing was sent ahead."""


def _size_of(path: Path) -> int | None:
    """The size of a regular file at `path`; None for nothing, a link, a folder or a FIFO."""
    try:
        stat = path.lstat()
    except FileNotFoundError:
        return None
    return stat.st_size if S_ISREG(stat.st_mode) else None


def open_regular(path: Path) -> BinaryIO:
    """Open a regular file to read, never following a link nor blocking on a FIFO.

    Raises FileNotFoundError when nothing is there, NotAFile for anything else.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotAFile(f"{path.name} is a symbolic link, not a blob") from exc
        raise
    if not S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotAFile(f"{path.name} is not a regular file")
    return os.fdopen(fd, "rb", buffering=0)


def _sync_dir(directory: Path) -> None:
    """fsync a directory so a rename in it survives a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
