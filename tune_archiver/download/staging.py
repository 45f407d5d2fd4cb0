"""Where downloads grow before they become blobs, written once for every backend.

A local archive stages in its own tmp/ (a commit is then a rename on one
filesystem); an S3 archive in a local folder of its own ($TUNE_ARCHIVER_STAGING,
else ~/.cache/tune-archiver/staging/<bucket>-<hash>). Each download is an Incoming:
its partial file here, and the store's Intake that takes the file in. This module
opens, measures room for, commits and releases them, and sweeps what is left over.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from stat import S_ISREG
from urllib.parse import urlsplit

from tune_archiver.download.partfile import Writer, partial_name
from tune_archiver.download.partial import RESUMABLE_FROM, Partial
from tune_archiver.errors import DiskFull, storage_error
from tune_archiver.filetypes import HEAD_BYTES, content_type_of
from tune_archiver.layout import TMP
from tune_archiver.models import Blob
from tune_archiver.safefs import check_folder, make_private_dir
from tune_archiver.store import Intake, Store
from tune_archiver.store.location import is_remote
from tune_archiver.threads import in_thread
from tune_archiver.urls import identity

ENV_STAGING = "TUNE_ARCHIVER_STAGING"
log = logging.getLogger(__name__)


class Incoming:
    """One download on its way to a blob: the partial file and the store's intake."""

    def __init__(self, partial: Partial, intake: Intake) -> None:
        self.partial = partial
        self.intake = intake
        self._settled = False

    async def commit(self, content_type: str | None, tail: Sequence[bytes] = ()) -> Blob:
        """Write the body's last pieces, fsync (when the staging is durable), and hand the
        file to the store as its blob.

        Raises IntegrityError if bytes are unhashed or missing, StorageError if the
        store fails (the partial is then still ours, for release).
        """
        partial = self.partial
        blob = await self.intake.commit(lambda: _finish(partial, content_type, tail))
        self._settled = True
        # The file's name is the store's now. When the store removed it (a blob stored
        # already), closing its last descriptor frees its blocks: near a second per GiB
        # on a disk mounted with online discard, too long to hold up the event loop.
        if partial.size >= RESUMABLE_FROM:
            await in_thread(partial.detach)
        else:
            partial.detach()
        return blob

    async def release(self, keep: bool) -> None:
        """Give back an uncommitted download: kept for a later run, or removed.

        Does nothing once committed.
        """
        if self._settled:
            return
        self._settled = True
        try:
            await self.intake.abandon()
        finally:
            await in_thread(self.partial.close, keep)


def _finish(partial: Partial, content_type: str | None, tail: Sequence[bytes]) -> Blob:
    if tail:
        partial.append(tail)
    head = partial.head(HEAD_BYTES)
    partial.finish()  # held bytes are written and hashed here
    # The server's type is kept unless it says nothing; then the first bytes tell.
    return Blob(partial.sha256(), partial.size, content_type_of(content_type, head))


class Staging:
    """A local folder of partial downloads, resumable across runs (see partial.py)."""

    def __init__(self, directory: Path, shown: Path | None = None,
                 write: Writer = os.pwritev, durable: bool = True) -> None:
        self.directory = directory
        self.shown = shown or directory  # what messages name: the archive, for a local one
        self._write = write
        # A local archive's partials become its blobs, so they are fsynced; an S3
        # archive's are uploaded and removed, and the bucket keeps them (see partial.py).
        self._durable = durable
        # Names of the partials here when prepared: a URL with none starts held in
        # memory, with no file and no thread hop (None: not listed, so look each time).
        self._leftovers: set[str] | None = None

    def __str__(self) -> str:
        return str(self.directory)

    async def prepare(self) -> None:
        """Create the folder (0700) if it is missing.

        Raises ConfigError for a folder another user owns or may write in: files
        planted there would be taken for our downloads.
        """
        warning = check_folder(self.directory, "the staging folder")
        if warning and self.shown == self.directory:  # tmp/ of an archive: said of it
            log.warning(warning)
        try:
            self._leftovers = await in_thread(_prepare, self.directory)
        except OSError as exc:
            raise storage_error(exc, self.shown, "create the staging folder") from exc

    async def open(self, url: str, store: Store) -> Incoming:
        """The download of `url`, resumed from an earlier run when possible."""
        key = identity(url)
        if self._leftovers is not None and partial_name(key) not in self._leftovers:
            partial = Partial.held(self.directory, key, self.shown, self._write, self._durable)
        else:
            partial = await in_thread(
                Partial.open, self.directory, key, self.shown, self._write, self._durable)
        return Incoming(partial, store.intake(partial))

    async def check_room(self, nbytes: int) -> None:
        """Raise DiskFull when the staging filesystem has less than `nbytes` free."""
        try:
            free = (await in_thread(shutil.disk_usage, self.directory)).free
        except OSError as exc:
            raise storage_error(exc, self.shown, "measure free space") from exc
        if nbytes > free:
            raise DiskFull(
                f"disk full in {self.shown}: {nbytes} bytes to download, {free} bytes free "
                "(--force to try anyway)"
            )

    # -- leftovers (gc) ----------------------------------------------------------------

    async def stale(self, older_than: datetime) -> list[tuple[str, int]]:
        """Files here last written before `older_than`: (name, bytes)."""
        return [(self._name(file), size) for file, size in await in_thread(
            self._stale, older_than)]

    async def remove_stale(self, older_than: datetime) -> list[tuple[str, int]]:
        """Remove what `stale` lists, except a partial a running download has locked."""
        return [(self._name(file), size) for file, size in await in_thread(
            self._remove_stale, older_than)]

    def _name(self, file: Path) -> str:
        """A file of a local archive's tmp/ by its archive-relative key; others in full."""
        if self.directory == self.shown / TMP:
            return f"{TMP}/{file.name}"
        return str(file)

    def _stale(self, older_than: datetime) -> list[tuple[Path, int]]:
        cutoff = older_than.timestamp()
        found = []
        try:
            for file in sorted(self.directory.iterdir()):
                stat = file.lstat()
                if S_ISREG(stat.st_mode) and stat.st_mtime < cutoff:  # damaged/ is kept
                    found.append((file, stat.st_size))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise storage_error(exc, self.shown, "list partial downloads") from exc
        return found

    def _remove_stale(self, older_than: datetime) -> list[tuple[Path, int]]:
        removed = []
        # Partials first: removing one removes its sidecar, which then counts as removed.
        stale = sorted(self._stale(older_than), key=lambda found: found[0].suffix != ".part")
        for file, size in stale:
            try:
                if file.suffix == ".part":
                    gone = _remove_unless_locked(file)
                else:  # a sidecar goes with its partial, if that one goes
                    gone = not file.with_suffix(".part").exists()
                    if gone:
                        file.unlink(missing_ok=True)
            except OSError as exc:
                raise storage_error(exc, self.shown, "remove a partial download") from exc
            if gone:
                removed.append((file, size))
        return sorted(removed)


def staging_for(location: str | Path, write: Writer = os.pwritev) -> Staging:
    """The staging of the archive at `location`: its tmp/, or an S3 archive's own folder."""
    if not is_remote(location):
        return Staging(Path(location) / TMP, Path(location), write)
    chosen = os.environ.get(ENV_STAGING)
    if chosen:
        return Staging(Path(chosen), write=write, durable=False)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    bucket = urlsplit(str(location)).netloc
    tag = hashlib.sha256(str(location).encode()).hexdigest()[:12]
    return Staging(cache / "tune-archiver" / "staging" / f"{bucket}-{tag}", write=write,
                   durable=False)


def _prepare(directory: Path) -> set[str]:
    """Create the folder if need be; the names of the partials in it."""
    make_private_dir(directory)
    with os.scandir(directory) as found:
        return {entry.name.removesuffix(".part") for entry in found
                if entry.name.endswith(".part")}


def _remove_unless_locked(part: Path) -> bool:
    """Remove a partial and its sidecar, unless a running download holds its lock."""
    try:
        fd = os.open(part, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        part.with_suffix(".json").unlink(missing_ok=True)
        part.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)
