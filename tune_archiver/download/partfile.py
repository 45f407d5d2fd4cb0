"""A partial's file on disk: its name in the staging folder, the lock that makes it one
process's, and gathered writes into it. A process that finds the name locked, or
holding a planted link, writes a private temp file of its own instead, never through
theirs."""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from tune_archiver.download.sidecar import resumable
from tune_archiver.errors import IntegrityError
from tune_archiver.safefs import Planted, open_own

IOV_MAX = 1024  # the most pieces one pwritev takes on Linux
READ_BLOCK = 4 * 2**20

# os.pwritev's shape: pieces are written as they came, never joined; tests inject a failing one
Writer = Callable[[int, list[memoryview], int], int]


def partial_name(key: str) -> str:
    """The partial's file name, without suffix, for a URL key (a URL without its query)."""
    return hashlib.sha256(key.encode()).hexdigest()[:40]


def kept(folder: int, part: str) -> bool:
    """Whether the partial `part` in the open folder stays through a sweep: a running
    download holds its lock, or it is gone. The lock is let go at once."""
    try:
        fd = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def claim(tmp: Path, key: str) -> tuple[int, Path, Path | None]:
    """Open and lock the named partial for `key`: (descriptor, path, sidecar path).

    A private file (see private_file) when another process holds it, the name is
    planted, or the file there may not be written (a run killed between its finish,
    which makes it read-only, and its rename). Raises OSError.
    """
    name = partial_name(key)
    path, sidecar = tmp / f"{name}.part", tmp / f"{name}.json"
    # A folder at a name of its record (which write_private renames over, its temp name
    # unlinked first) would fail every save, and the download, on every run: as planted.
    if any(_is_folder(tmp / record) for record in (f"{name}.json", f".{name}.json.tmp")):
        return (*private_file(tmp), None)
    while True:
        try:
            fd = open_own(path, os.O_RDWR | os.O_CREAT)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, Planted, PermissionError, IsADirectoryError) as exc:
            if isinstance(exc, BlockingIOError):
                os.close(fd)
            return (*private_file(tmp), None)
        # The holder before us may have renamed or removed the file by this name (a
        # commit): then our lock is on an orphan, and we must start again.
        if same_file(fd, path):
            return fd, path, sidecar
        os.close(fd)


def _is_folder(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def fresh(tmp: Path, key: str, named: bool) -> tuple[int, Path, Path | None]:
    """A new, empty file for a download that had none: the named partial for `key`
    (locked, as claim gives it), or with `named` False a private one. A leftover by that
    name that its record could still resume (another run's, come since the staging was
    listed, or kept earlier in this run) is left alone: a private file then. Raises OSError.
    """
    if not named:
        return (*private_file(tmp), None)
    fd, path, sidecar = claim(tmp, key)
    if sidecar is None:
        return fd, path, None
    try:
        if resumable(sidecar, key, os.fstat(fd).st_size) is not None:
            os.close(fd)
            return (*private_file(tmp), None)
        sidecar.unlink(missing_ok=True)  # a record of other bytes, never of these
        os.ftruncate(fd, 0)
    except OSError:
        os.close(fd)
        raise
    return fd, path, sidecar


def private_file(tmp: Path) -> tuple[int, Path]:
    """A new empty 0600 file of a unique name in `tmp`, no later run's to resume."""
    fd, path = tempfile.mkstemp(dir=tmp, prefix="private-", suffix=".part")
    return fd, Path(path)


def write_pieces(write: Writer, fd: int, offset: int, pieces: Sequence[bytes]) -> int:
    """Write every piece, in order, from `offset`; returns the bytes written. Raises OSError."""
    views = [memoryview(piece) for piece in pieces if piece]
    total = 0
    while views:
        written = write(fd, views[:IOV_MAX], offset)
        offset += written
        total += written
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if views and written:
            views[0] = views[0][written:]
    return total


def same_file(fd: int, path: Path) -> bool:
    """True when `path` names the file open at `fd`."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


class ReadBack:
    """A partial's bytes read back from its file (from the page cache, as a rule) into
    one buffer, read into again and again: a fresh 4 MiB per read would be freed in the
    reading thread's own malloc arena, and each arena keeps its peak."""

    def __init__(self) -> None:
        self._buffer: memoryview | None = None  # made on first use

    def blocks(self, fd: int, start: int, end: int) -> Iterator[memoryview]:
        """Bytes [start, end) of the file, a block at a time; each block is valid only
        until the next is asked for. Raises OSError, or IntegrityError for a short file."""
        while start < end:
            if self._buffer is None:
                self._buffer = memoryview(bytearray(READ_BLOCK))
            view = self._buffer[:min(READ_BLOCK, end - start)]
            got = os.preadv(fd, [view], start)
            if not got:
                raise IntegrityError("a partial download is shorter than its record")
            yield view[:got]
            start += got
