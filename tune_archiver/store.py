"""The local content-addressed archive: partial files, commit by rename, lookups.

A blob appears under its final name only by an atomic rename of a temp file whose
bytes were fully received, size-checked and hashed, fsynced before the rename and
its directory after. Two writers of the same blob both rename identical bytes, so
concurrent fetches never expose a half-written blob.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import tempfile
from pathlib import Path

import aiofiles
import aiofiles.os

from tune_archiver.errors import DiskFull, StorageError
from tune_archiver.layout import MANIFESTS, OBJECTS, TMP, blob_key, manifest_key
from tune_archiver.models import Blob

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def storage_error(exc: OSError, archive: Path, doing: str) -> StorageError:
    """Our error for a failed filesystem call; a full disk gets a message of its own."""
    if exc.errno in _FULL:
        return DiskFull(f"disk full in {archive}")
    return StorageError(f"cannot {doing} in {archive}: {exc.strerror or exc}")


class Partial:
    """A download in progress: a temp file under tmp/ and the sha256 of its bytes so far.

    `append` and `reset` block; call them from a worker thread.
    """

    def __init__(self, path: Path, fd: int, archive: Path) -> None:
        self.path = path
        self.size = 0
        self._fd = fd
        self._archive = archive
        self._hash = hashlib.sha256()

    def append(self, data: bytes) -> None:
        """Write the bytes at the end and hash them (hashlib lets go of the GIL)."""
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            raise storage_error(exc, self._archive, "write a download") from exc
        self._hash.update(data)
        self.size += len(data)

    def reset(self) -> None:
        """Forget every byte: the next append starts the file again."""
        try:
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
        except OSError as exc:
            raise storage_error(exc, self._archive, "truncate a download") from exc
        self._hash = hashlib.sha256()
        self.size = 0

    def sha256(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        """Close the file and remove it, unless commit already moved it into place."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.path.unlink(missing_ok=True)

    def sync(self) -> None:
        os.fsync(self._fd)


class LocalStore:
    """An archive in a local directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __str__(self) -> str:
        return str(self.root)

    def path(self, key: str) -> Path:
        """The file for an archive-relative key; refuses any key that would leave the root."""
        root = Path(os.path.normpath(self.root.absolute()))
        path = Path(os.path.normpath(root / key))  # lexical: the archive may sit behind a symlink
        if not path.is_relative_to(root) or path == root:
            raise StorageError(f"refused a path outside the archive: {key!r}")
        return path

    async def prepare(self) -> None:
        """Create the archive's directories if they are missing."""
        try:
            for name in (OBJECTS, MANIFESTS, TMP):
                await aiofiles.os.makedirs(self.root / name, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, self.root, "create the archive") from exc

    async def blob_size(self, sha256: str) -> int | None:
        """The size of the blob, or None when it is not in the archive."""
        try:
            return (await aiofiles.os.stat(self.path(blob_key(sha256)))).st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise storage_error(exc, self.root, "look up a blob") from exc

    async def new_partial(self) -> Partial:
        """An empty temp file under tmp/ for one download."""
        return await asyncio.to_thread(self._new_partial)

    def _new_partial(self) -> Partial:
        try:
            fd, name = tempfile.mkstemp(dir=self.path(TMP), prefix="download-", suffix=".part")
        except OSError as exc:
            raise storage_error(exc, self.root, "start a download") from exc
        return Partial(Path(name), fd, self.root)

    async def commit(self, partial: Partial, content_type: str | None) -> Blob:
        """Move a finished download to the name its sha256 gives it.

        A blob already present with the same size is kept and the partial dropped.
        """
        return await asyncio.to_thread(self._commit, partial, content_type)

    def _commit(self, partial: Partial, content_type: str | None) -> Blob:
        blob = Blob(partial.sha256(), partial.size, content_type)
        final = self.path(blob_key(blob.sha256))
        try:
            if _size_of(final) != blob.size:
                partial.sync()
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(partial.path, final)
                _sync_dir(final.parent)
        except OSError as exc:
            raise storage_error(exc, self.root, "store a blob") from exc
        finally:
            partial.close()
        return blob

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
        await asyncio.to_thread(self._write_atomic, self.path(key), data)
        return key

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


def _size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _sync_dir(directory: Path) -> None:
    """fsync a directory so a rename in it survives a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
