"""Where downloads grow before they become blobs, written once for every backend.

A local archive stages in its own tmp/ (a commit is then a rename on one
filesystem); an S3 archive in a local folder of its own ($TUNE_ARCHIVER_STAGING,
else ~/.cache/tune-archiver/staging/<bucket>-<hash>). Each download is an Incoming:
its partial file here, and the store's Intake that takes the file in. This module
opens, measures room for, commits and releases them, and sweeps what is left over.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from stat import S_ISDIR, S_ISREG
from urllib.parse import urlsplit

from tune_archiver.download.partfile import Writer, kept, partial_name
from tune_archiver.download.partial import RESUMABLE_FROM, Partial
from tune_archiver.download.ranges import HASH_STEP
from tune_archiver.errors import ArchiverError, ConfigError, DiskFull, TooLarge, storage_error
from tune_archiver.filetypes import HEAD_BYTES, content_type_of
from tune_archiver.layout import TMP
from tune_archiver.models import Blob
from tune_archiver.safefs import (
    FAT_MAX,
    NOT_WRITABLE,
    check_folder,
    exists_at,
    file_size_limit,
    make_private_dir,
    refuse_links,
    refuse_others_links,
)
from tune_archiver.store import Intake, Store
from tune_archiver.store.location import is_remote
from tune_archiver.threads import in_thread
from tune_archiver.urls import download_identity

ENV_STAGING = "TUNE_ARCHIVER_STAGING"
Noted = Callable[[Blob], None]  # told a file's blob just before the store takes it
log = logging.getLogger(__name__)


class Incoming:
    """One download on its way to a blob: the partial file and the store's intake."""

    def __init__(self, partial: Partial, intake: Intake) -> None:
        self.partial = partial
        self.intake = intake
        self._settled = False

    async def commit(self, content_type: str | None, tail: Sequence[bytes] = (),
                     noted: Noted | None = None) -> Blob:
        """Write the body's last pieces, fsync (when the staging is durable), and hand the
        file to the store as its blob, `noted` told it first in the same thread hop.

        Raises IntegrityError if bytes are unhashed or missing, StorageError if the
        store fails (the partial is then still ours, for release).
        """
        partial = self.partial
        blob = await self.intake.commit(lambda: _finish(partial, content_type, tail, noted))
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


def _finish(partial: Partial, content_type: str | None, tail: Sequence[bytes],
            noted: Noted | None) -> Blob:
    if tail:
        partial.append(tail)
    head = partial.head(HEAD_BYTES)
    partial.finish()  # held bytes are written and hashed here
    # The server's type is kept unless it says nothing; then the first bytes tell.
    blob = Blob(partial.sha256(), partial.size, content_type_of(content_type, head))
    if noted is not None:
        noted(blob)
    return blob


class Staging:
    """A local folder of partial downloads, resumable across runs (see partial.py)."""

    def __init__(self, directory: Path, shown: Path | None = None,
                 write: Writer = os.pwritev, durable: bool = True,
                 made: Sequence[Path] | None = None) -> None:
        self.directory = directory
        self.shown = shown or directory  # what messages name: the archive, for a local one
        # The folders this tool makes on the way (tmp/, ~/.cache/tune-archiver/...): a
        # link at one was planted, and would lead downloads and gc out of them. One the
        # user chose ($TUNE_ARCHIVER_STAGING) is theirs to make a link.
        self._made = (directory,) if made is None else tuple(made)
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

        Raises ConfigError for a folder another user owns or may write in (files
        planted there would be taken for our downloads), or one behind their link.
        """
        refuse_links(self._made, "the staging folder")
        # One the user chose ($TUNE_ARCHIVER_STAGING) may be behind a link of theirs, never
        # behind one another user planted in a shared folder: it would be made in theirs.
        refuse_others_links(self.directory, "the staging folder")
        warning = check_folder(self.directory, "the staging folder")
        if warning and self.shown == self.directory:  # tmp/ of an archive: said of it
            log.warning("%s", warning)
        try:
            self._leftovers = await in_thread(_prepare, self.directory, self._durable)
        except OSError as exc:
            if exc.errno in NOT_WRITABLE:  # a read-only or FAT folder: as the archive's own
                raise ConfigError(f"cannot create the staging folder in {self.shown}: "
                                  f"{exc.strerror or exc}") from exc
            raise storage_error(exc, self.shown, "create the staging folder") from exc

    async def open(self, url: str, store: Store) -> Incoming:
        """The download of `url`, resumed from an earlier run when possible: one of the
        same download_key (a renewed signature), never of another file whose URL only
        a secret-looking parameter tells apart (its bytes would be committed unasked)."""
        key = download_identity(url)
        if self._leftovers is not None and partial_name(key) not in self._leftovers:
            partial = Partial.held(self.directory, key, self.shown, self._write, self._durable)
        else:
            partial = await in_thread(
                Partial.open, self.directory, key, self.shown, self._write, self._durable)
            await _hash_taken_over(partial)
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

    async def check_size(self, total: int) -> None:
        """Raise TooLarge when a file of `total` bytes cannot be written here (see
        safefs.file_size_limit): said before a byte is downloaded, not at the limit."""
        try:  # a thread for /proc only (past 4 GiB): a hop would let the body's start wait
            why = (await in_thread(file_size_limit, self.directory, total) if total > FAT_MAX
                   else file_size_limit(self.directory, total))
        except OSError as exc:
            raise storage_error(exc, self.shown, "look at the file-size limit") from exc
        if why:
            raise TooLarge(f"file too large for {self.shown}: {total} bytes, {why}; "
                           "nothing was downloaded")

    async def drop(self, urls: Iterable[str]) -> None:
        """Remove what an earlier run left of these files, archived since, unless a
        download holds it: one stopped while another run committed the file kept its
        partial (GiBs of a checkpoint) for a next run that never resumes it, since the
        file is archived; gc takes it only a day later, if gc is run."""
        names = {partial_name(download_identity(url)) for url in urls}
        if self._leftovers is not None:
            names &= self._leftovers
        if names:
            with contextlib.suppress(ArchiverError, OSError):  # left for gc, as ever
                await in_thread(self._drop, names)

    def _drop(self, names: set[str]) -> None:
        with self._folder() as folder:
            for name in sorted(names) if folder >= 0 else ():
                _remove_unless_locked(folder, f"{name}.part")

    # -- leftovers (gc) ----------------------------------------------------------------

    async def stale(self, older_than: datetime) -> list[tuple[str, int]]:
        """What remove_stale would remove now (gc --dry-run), by the same rules."""
        return [(self._name(file), size) for file, size in await in_thread(
            self._sweep, older_than, None, False)]

    async def remove_stale(
        self, older_than: datetime, failed: list[str] | None = None
    ) -> list[tuple[str, int]]:
        """Remove what `stale` lists, except a partial a running download has locked.
        One that cannot be removed is said in `failed` (raised without it) and the
        others are still removed."""
        return [(self._name(file), size) for file, size in await in_thread(
            self._sweep, older_than, failed, True)]

    def _name(self, file: Path) -> str:
        """A file of a local archive's tmp/ by its archive-relative key; others in full."""
        if self.directory == self.shown / TMP:
            return f"{TMP}/{file.name}"
        return str(file)

    def _stale_in(self, folder: int, older_than: datetime) -> list[tuple[str, int]]:
        try:
            return _stale_in(folder, older_than)
        except OSError as exc:  # EIO: one line, never a traceback
            raise storage_error(exc, self.shown, "list partial downloads") from exc

    def _sweep(
        self, older_than: datetime, failed: list[str] | None, remove: bool
    ) -> list[tuple[Path, int]]:
        """The stale files that go (removed, with `remove`): not a partial a running
        download holds, nor the sidecar of a partial that stays (held, or written since)."""
        going, removed = set(), []
        with self._folder() as folder:
            # Partials first: removing one removes its sidecar, which then counts as removed.
            stale = sorted(self._stale_in(folder, older_than),
                           key=lambda found: not found[0].endswith(".part"))
            for name, size in stale:
                try:
                    if _RETRAIN_COPY.fullmatch(name):
                        if remove:
                            shutil.rmtree(name, dir_fd=folder)  # never follows a link in it
                        gone = True
                    elif name.endswith(".part"):
                        gone = (_remove_unless_locked(folder, name) if remove
                                else not kept(folder, name))
                        if gone:
                            going.add(name)
                    else:  # a sidecar goes with its partial, if that one goes
                        part = f"{name.removesuffix('.json')}.part"
                        gone = part in going or not exists_at(folder, part)
                        if gone and remove:
                            _unlink(folder, name)
                except OSError as exc:
                    shown = self._name(self.directory / name)
                    error = storage_error(exc, self.shown, f"remove {shown}")
                    if failed is None:
                        raise error from exc
                    failed.append(str(error))
                    continue
                if gone:
                    removed.append((self.directory / name, size))
        return sorted(removed)

    @contextlib.contextmanager
    def _folder(self) -> Iterator[int]:
        """The folder, opened without following a link (none at all at the folders this
        tool makes; one the user chose may be a link of theirs); -1 when it does not exist."""
        refuse_links(self._made, "the staging folder")
        unfollowed = os.O_NOFOLLOW if self.directory in self._made else 0
        try:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | unfollowed)
        except FileNotFoundError:
            yield -1
            return
        except OSError as exc:
            raise storage_error(exc, self.shown, "list partial downloads") from exc
        try:
            yield fd
        finally:
            os.close(fd)


# What this tool leaves in a staging folder: partials and their sidecars (and their
# temp names), private partials, tunes' journals (journal.py: they have no partial, so
# go with no other), a local archive's manifest temp files, and the
# folder of a photo a killed retrain was copying. gc removes nothing else:
# $TUNE_ARCHIVER_STAGING may name a folder that holds the user's files.
_OURS = re.compile(r"[0-9a-f]{40}\.(part|json)|\.[0-9a-f]{40}\.json\.tmp|private-[a-z0-9_]{8}\.part"
                   r"|manifest-[a-z0-9_]{8}\.tmp|[1-9][0-9]*(\.[0-9a-f]{12})?\.committed")
RETRAIN_COPY_PREFIX = "retrain-"  # retrain's tempfile folders: the prefix, 8 of its letters
_RETRAIN_COPY = re.compile(rf"{RETRAIN_COPY_PREFIX}[a-z0-9_]{{8}}")


def _stale_in(folder: int, older_than: datetime) -> list[tuple[str, int]]:
    """Our regular files in the open folder last written before `older_than`: (name, bytes)."""
    if folder < 0:
        return []
    cutoff = older_than.timestamp()
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            copy = _RETRAIN_COPY.fullmatch(entry.name)
            if not (copy or _OURS.fullmatch(entry.name)):
                continue  # damaged/ is kept, and whatever the user put here
            try:
                stat = entry.stat(follow_symlinks=False)
                if (S_ISDIR if copy else S_ISREG)(stat.st_mode) and stat.st_mtime < cutoff:
                    found.append((entry.name, _size_in(folder, entry.name) if copy
                                  else stat.st_size))
            except FileNotFoundError:
                continue  # committed (or swept) meanwhile: a fetch may be running
    return sorted(found)


def _size_in(folder: int, name: str) -> int:
    """The bytes of the regular files directly in the folder `name` of `folder`; 0 when
    it cannot be looked into (chmod 000: its removal then says why)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder)
    except FileNotFoundError:
        raise
    except OSError:
        return 0
    try:
        with os.scandir(fd) as entries:
            return sum(entry.stat(follow_symlinks=False).st_size for entry in entries
                       if entry.is_file(follow_symlinks=False))
    finally:
        os.close(fd)


def _unlink(folder: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=folder)
    except FileNotFoundError:
        pass


async def _hash_taken_over(partial: Partial) -> None:
    """Hash the bytes an earlier run left, HASH_STEP at a time: a checkpoint of GBs read
    back after a reboot would keep a Ctrl-C waiting for all of it. Stopped, the partial
    is kept as it was found; one that cannot be read back is removed."""
    try:
        while await in_thread(partial.catch_up_hash, HASH_STEP):
            pass
    except asyncio.CancelledError:
        await in_thread(partial.close, True)
        raise
    except BaseException:
        await in_thread(partial.close, False)  # bytes it cannot vouch for go, and its lock
        raise


def staging_for(location: str | Path, write: Writer = os.pwritev) -> Staging:
    """The staging of the archive at `location`: its tmp/, or an S3 archive's own folder."""
    if not is_remote(location):
        return Staging(Path(location) / TMP, Path(location), write)
    chosen = os.environ.get(ENV_STAGING)
    if chosen:
        return Staging(Path(chosen), write=write, durable=False, made=())
    ours = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tune-archiver"
    bucket = urlsplit(str(location)).netloc
    tag = hashlib.sha256(str(location).encode()).hexdigest()[:12]
    directory = ours / "staging" / f"{bucket}-{tag}"
    return Staging(directory, write=write, durable=False,
                   made=(ours, ours / "staging", directory))


def _prepare(directory: Path, durable: bool) -> set[str]:
    """Create the folder if need be (its name fsynced when its partials are); the names
    of the partials in it."""
    make_private_dir(directory, durable)
    with os.scandir(directory) as found:
        return {entry.name.removesuffix(".part") for entry in found
                if entry.name.endswith(".part")}


def _remove_unless_locked(folder: int, part: str) -> bool:
    """Remove a partial and its sidecar, unless a running download holds its lock."""
    try:
        fd = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        _unlink(folder, f"{part.removesuffix('.part')}.json")
        _unlink(folder, part)
        return True
    finally:
        os.close(fd)
