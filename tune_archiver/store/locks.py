"""Lock files held with flock: the archive's (fetch shared, gc exclusive) and each tune's
manifest's (one writer at a time). A lock dies with its process, so none is ever stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from tune_archiver.errors import ArchiverError, ConfigError, StorageError, storage_error
from tune_archiver.safefs import Planted, open_own

LOCK_POLL = 0.2  # seconds between tries for a lock that another process holds


@contextlib.asynccontextmanager
async def flocked(
    path: Path,
    exclusive: bool,
    shown: Path,
    waiting: Callable[[], None] | None = None,
    poll: float | None = None,
) -> AsyncIterator[None]:
    """Hold the lock file at `path` for the length of the block, as `holding` does."""
    async with holding(path, exclusive, shown, waiting, poll):
        yield


@contextlib.asynccontextmanager
async def holding(
    path: Path,
    exclusive: bool,
    shown: Path,
    waiting: Callable[[], None] | None = None,
    poll: float | None = None,
    refused: type[ArchiverError] = StorageError,
) -> AsyncIterator[Callable[[], bool]]:
    """Hold the lock file at `path`, shared or exclusive, for the length of the block;
    gives a check that is False once that file is no longer at `path` (someone removed
    it meanwhile, so another process may hold a new one: nothing it guards is ours).

    Calls `waiting` once when another process holds it, then tries again every `poll`
    seconds (a poll can be cancelled, a blocked flock cannot). A lock taken on a file
    that no longer has that name (its holder removed it) is let go and taken on the one
    the name gives now, so a removed lock file never lets two in. The file is opened
    without following a link, and must be a regular file of ours (a link, another
    user's file or a folder planted there): else `refused`, naming `shown`.
    """
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    fd = open_lock(path, shown, refused)
    try:
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting is not None:
                    waiting()
                    waiting = None
                await asyncio.sleep(LOCK_POLL if poll is None else poll)
                continue
            if names_it(path, fd):
                break
            # The file was removed (or replaced) since we opened it: a lock on it keeps
            # out no one who opens the name now. Take the one the name gives.
            os.close(fd)
            fd = -1
            fd = open_lock(path, shown, refused)
        held = fd
        yield lambda: names_it(path, held)
    finally:
        if fd >= 0:
            os.close(fd)


class ArchiveLock:
    """The archive's lock file as one store holds it (fetch shared, gc exclusive), which
    can tell whether it is still held: a lock file removed by hand while held (taken
    for one a killed run left) lets a gc take a new one and run, removing the blobs a
    fetch stored but no manifest names yet."""

    def __init__(self, path: Path, shown: Path) -> None:
        self._path, self._shown = path, shown
        self._checks: list[Callable[[], bool]] = []  # one per hold, nested ones too

    @contextlib.asynccontextmanager
    async def held(
        self, exclusive: bool, waiting: Callable[[], None] | None = None
    ) -> AsyncIterator[Callable[[], bool]]:
        """Hold it for the length of the block, as `holding` does (its check given). A
        planted one is refused as a link at a folder the tool makes is: the operator's
        to remove, nothing done (ConfigError, exit 2), no tune's failure."""
        async with holding(self._path, exclusive, self._shown, waiting,
                           refused=ConfigError) as check:
            self._checks.append(check)
            try:
                yield check
            finally:
                self._checks.remove(check)

    def check(self, doing: str) -> None:
        """StorageError when a hold's lock file is no longer in place: a gc may have run
        meanwhile, so nothing may be written that names what it could have removed."""
        if not all(check() for check in self._checks):
            raise StorageError(
                f"cannot {doing} in {self._shown}: the archive's lock file {self._path} was "
                "removed while this run held it (a gc may have run since, removing blobs it "
                "names); nothing written: run fetch again. A lock dies with its process: "
                "never remove one")


def names_it(path: Path, fd: int) -> bool:
    """True when `path` still names the open file (not removed or replaced meanwhile)."""
    try:
        found = os.stat(path, follow_symlinks=False)
    except OSError:  # gone, or its folder too: opening it again says what is wrong
        return False
    held = os.fstat(fd)
    return (found.st_dev, found.st_ino) == (held.st_dev, held.st_ino)


def open_lock(path: Path, shown: Path, refused: type[ArchiverError] = StorageError) -> int:
    """A descriptor of the lock file, created if need be; refuses a planted one (a link,
    another user's file, a folder) with `refused`."""
    try:
        return open_own(path, os.O_RDWR | os.O_CREAT, links=True)  # only ever locked
    except Planted as exc:
        raise refused(
            f"refused the lock {path} in {shown}: not a regular file of this user "
            "(planted by someone else?)"
        ) from exc
    except OSError as exc:
        if exc.errno == errno.EISDIR:
            raise refused(f"refused the lock {path} in {shown}: it is a folder, not a lock "
                          "file (remove it)") from exc
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):  # the operator's to fix
            raise ConfigError(f"cannot write in {shown} (its lock file {path.name}): "
                              f"{exc.strerror or exc}") from exc
        raise storage_error(exc, shown, f"open the lock file {path.name}") from exc
