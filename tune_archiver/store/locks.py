"""Lock files held with flock: the archive's (fetch shared, gc exclusive) and each tune's
manifest's (one writer at a time). A lock dies with its process, so none is ever stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from tune_archiver.errors import StorageError, storage_error
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
    """Hold the lock file at `path`, shared or exclusive, for the length of the block.

    Calls `waiting` once when another process holds it, then tries again every `poll`
    seconds (a poll can be cancelled, a blocked flock cannot). The file is opened
    without following a link, and must be a regular file of ours with one name:
    else StorageError, naming `shown`.
    """
    fd = open_lock(path, shown)
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if waiting is not None:
                    waiting()
                    waiting = None
                await asyncio.sleep(LOCK_POLL if poll is None else poll)
        yield
    finally:
        os.close(fd)


def open_lock(path: Path, shown: Path) -> int:
    """A descriptor of the lock file, created if need be; refuses a planted one."""
    try:
        return open_own(path, os.O_RDWR | os.O_CREAT)
    except Planted as exc:
        raise StorageError(
            f"refused the lock {path} in {shown}: not a regular file of this user "
            "with one name (planted by someone else?)"
        ) from exc
    except OSError as exc:
        raise storage_error(exc, shown, f"open the lock {path.name}") from exc
