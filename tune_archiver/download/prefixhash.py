"""The sha256 of a partial download's first bytes, grown as they come or are read back,
and held to what an earlier run recorded of them (see Partial)."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from tune_archiver.digest import new_hash
from tune_archiver.download.partfile import ReadBack


class PrefixHash:
    """The sha256 of bytes [0, size) of a partial. `size` and the hash move together,
    under a lock: a close may record them while a cancelled hasher's thread still runs."""

    def __init__(self) -> None:
        self.size = 0
        # An earlier run's (n, sha256 of bytes [0, n)), until the bytes read back reach n.
        self.vouched: tuple[int, str] | None = None
        self._hash = new_hash()
        self._lock = threading.Lock()
        self._read_back = ReadBack()  # read_from's buffer

    def add(self, pieces: Iterable[bytes | memoryview]) -> None:
        """Hash the bytes that follow (hashlib lets go of the GIL)."""
        with self._lock:
            for piece in pieces:
                self._hash.update(piece)
                self.size += len(piece)

    def read_from(self, fd: int, end: int) -> bool:
        """Hash bytes [size, end) of the file at `fd`, stopping at the vouched length to
        check them there; False when they are not the bytes the earlier run hashed (a
        damaged disk). Raises OSError, or IntegrityError for a file shorter than `end`."""
        if self.vouched is not None:
            end = min(end, self.vouched[0])
        for block in self._read_back.blocks(fd, self.size, end):
            self.add((block,))
        if self.vouched is None or self.size != self.vouched[0]:
            return True
        (_, sha256), self.vouched = self.vouched, None
        return self._hash.copy().hexdigest() == sha256

    def recorded(self) -> tuple[int, str] | None:
        """(size, sha256 of those bytes) taken at one moment, for a sidecar; None when empty.
        An earlier run's record not reached yet stays the record: the bytes past `size`
        are the ones it vouched for, unchecked still."""
        with self._lock:
            if self.vouched is not None:
                return self.vouched
            return (self.size, self._hash.copy().hexdigest()) if self.size else None

    def hexdigest(self) -> str:
        return self._hash.hexdigest()
