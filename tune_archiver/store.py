"""The local content-addressed archive: partial files, commit by rename, lookups.

A blob appears under its final name only by an atomic rename of a partial file whose
bytes were fully received, size-checked and hashed, fsynced before the rename and
its directory after. Two writers of the same blob both rename identical bytes, so
concurrent fetches never expose a half-written blob. Manifests are replaced the
same way, so they are never interleaved.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

import aiofiles
import aiofiles.os

from tune_archiver.errors import DiskFull, StorageError
from tune_archiver.layout import MANIFESTS, OBJECTS, TMP, blob_key, manifest_key
from tune_archiver.models import Blob
from tune_archiver.partial import Partial, Writer, storage_error
from tune_archiver.urls import url_key


class LocalStore:
    """An archive in a local directory."""

    def __init__(self, root: Path, write: Writer = os.write) -> None:
        self.root = root
        self._write = write

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

    async def open_partial(self, url: str) -> Partial:
        """The partial download of this URL, resumed from an earlier run when possible."""
        return await asyncio.to_thread(
            Partial.open, self.path(TMP), url_key(url), self.root, self._write
        )

    async def check_room(self, nbytes: int) -> None:
        """Raise DiskFull when the archive's filesystem has less than `nbytes` free."""
        try:
            free = (await asyncio.to_thread(shutil.disk_usage, self.path(TMP))).free
        except OSError as exc:
            raise storage_error(exc, self.root, "measure free space") from exc
        if nbytes > free:
            raise DiskFull(
                f"disk full in {self.root}: {nbytes} bytes to download, {free} bytes free "
                "(--force to try anyway)"
            )

    async def commit(self, partial: Partial, content_type: str | None) -> Blob:
        """Move a finished download to the name its sha256 gives it.

        A blob already present with the same size is kept and the partial dropped.
        """
        return await asyncio.to_thread(self._commit, partial, content_type)

    def _commit(self, partial: Partial, content_type: str | None) -> Blob:
        blob = Blob(partial.sha256(), partial.size, content_type)
        final = self.path(blob_key(blob.sha256))
        try:
            if _size_of(final) == blob.size:
                partial.close(keep=False)  # stored already, by an earlier run or another tune
                return blob
            partial.finish()
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(partial.path, final)
            partial.renamed()
            _sync_dir(final.parent)
        except OSError as exc:
            raise storage_error(exc, self.root, "store a blob") from exc
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
