"""Partial downloads in <archive>/tmp/: resumable across runs, locked while in use.

A partial for a URL lives at tmp/<hash of the URL without its query>.part, beside a
sidecar .json that records what resuming needs: the URL key, the validator for
If-Range, the expected size, and how many bytes are known to be on disk. The .part
is locked (flock) by the process writing it; another process that finds it locked
downloads into a private temp file instead. After a crash in the same boot the
file's length is trusted (the page cache survived); after a reboot only the bytes
fsynced before the sidecar was last written are.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tune_archiver.errors import DiskFull, StorageError

SYNC_EVERY = 128 * 2**20  # fsync and record progress this often, for resume after a power cut
READ_BLOCK = 4 * 2**20
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})

Writer = Callable[[int, memoryview], int]  # os.write's shape; tests inject a failing one


def storage_error(exc: OSError, archive: Path, doing: str) -> StorageError:
    """Our error for a failed filesystem call; a full disk gets a message of its own."""
    if exc.errno in _FULL:
        return DiskFull(f"disk full in {archive}")
    return StorageError(f"cannot {doing} in {archive}: {exc.strerror or exc}")


def boot_id() -> str:
    """This boot's id: a partial written in another boot may have lost unsynced bytes."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


class Partial:
    """The bytes of one download received so far, their sha256, and what resuming needs.

    Every method blocks; call them from a worker thread (close may run anywhere: it
    only writes a few bytes).
    """

    def __init__(
        self, path: Path, fd: int, archive: Path, sidecar: Path | None, write: Writer = os.write
    ) -> None:
        self.path = path
        self.size = 0
        self.validator: str | None = None  # strong ETag or Last-Modified, for If-Range
        self.total: int | None = None  # the file's full size, once a server said it
        self._fd = fd
        self._archive = archive
        self._sidecar = sidecar  # None for a private temp file that no later run resumes
        self._key = ""
        self._synced = 0
        self._hash = hashlib.sha256()
        self._write = write

    # -- opening ---------------------------------------------------------------

    @classmethod
    def open(cls, tmp: Path, key: str, archive: Path, write: Writer = os.write) -> Partial:
        """The resumable partial for `key`, or a private one when another process holds it."""
        name = hashlib.sha256(key.encode()).hexdigest()[:40]
        path, sidecar = tmp / f"{name}.part", tmp / f"{name}.json"
        try:
            while True:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    fd, private = tempfile.mkstemp(dir=tmp, prefix="private-", suffix=".part")
                    return cls(Path(private), fd, archive, None, write)
                # The holder before us may have renamed or removed the file by this name
                # (a commit): then our lock is on an orphan, and we must start again.
                if _same_file(fd, path):
                    break
                os.close(fd)
            partial = cls(path, fd, archive, sidecar, write)
            partial._key = key
            partial._resume()
            return partial
        except OSError as exc:
            raise storage_error(exc, archive, "start a download") from exc

    def _resume(self) -> None:
        """Take over what an earlier run left, if its sidecar vouches for it; else start empty."""
        state = _read_json(self._sidecar) if self._sidecar else None
        length = os.fstat(self._fd).st_size
        usable = 0
        if state is not None and state.get("url") == self._key:
            synced = state.get("synced", 0)
            trusted = length if state.get("boot_id") == boot_id() else synced
            if isinstance(trusted, int) and 0 < trusted <= length:
                usable = trusted
                self.validator = state.get("validator")
                self.total = state.get("total")
        if usable == 0 or not self.validator:
            usable = 0
            self.validator, self.total = None, None
        os.ftruncate(self._fd, usable)
        os.lseek(self._fd, 0, os.SEEK_SET)
        while chunk := os.read(self._fd, READ_BLOCK):
            self._hash.update(chunk)
        self.size = self._synced = usable

    # -- writing ---------------------------------------------------------------

    def append(self, data: bytes) -> None:
        """Write the bytes at the end and hash them (hashlib lets go of the GIL)."""
        view = memoryview(data)
        try:
            while view:
                view = view[self._write(self._fd, view) :]
            if self.size + len(data) - self._synced >= SYNC_EVERY:
                os.fsync(self._fd)
                self._synced = self.size + len(data)
                self._save()
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
        self.size = self._synced = 0

    def describe(self, validator: str | None, total: int | None) -> None:
        """Record what a response said about the file, for resuming it later."""
        if (validator, total) != (self.validator, self.total):
            self.validator, self.total = validator, total
            self._save()

    def sha256(self) -> str:
        return self._hash.hexdigest()

    # -- ending ----------------------------------------------------------------

    def finish(self) -> None:
        """Make the bytes durable and forget the sidecar, before the file is renamed."""
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise storage_error(exc, self._archive, "store a blob") from exc
        if self._sidecar:
            self._sidecar.unlink(missing_ok=True)
        self._sidecar = None

    def close(self, keep: bool) -> None:
        """Release the file: kept for a later run to resume, or removed.

        Only a partial with bytes, a validator and a sidecar is worth keeping.
        """
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            if keep and self._sidecar and self.size and self.validator:
                self._save()
            else:
                if self._sidecar:
                    self._sidecar.unlink(missing_ok=True)
                self.path.unlink(missing_ok=True)
        self._release()

    def renamed(self) -> None:
        """The file now lives under its blob name: release it without touching either name."""
        self._release()

    def _release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the lock last: nobody takes the name before we are done
            self._fd = -1

    def _save(self) -> None:
        if self._sidecar is None:
            return
        state: dict[str, Any] = {
            "url": self._key,
            "validator": self.validator,
            "total": self.total,
            "synced": self._synced,
            "boot_id": boot_id(),
        }
        temporary = self._sidecar.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(state))
        os.replace(temporary, self._sidecar)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _read_json(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
