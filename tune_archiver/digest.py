"""The hash that names blobs: sha256, and a bench-only switch that skips it."""

from __future__ import annotations

import hashlib
import os
from typing import Protocol

# A bench-only switch (bench/run measures what hashing costs): never for real archives.
SKIP_HASH = os.environ.get("TUNE_ARCHIVER_BENCH_SKIP_HASH") == "1"


class Hasher(Protocol):
    """What hashlib.sha256() offers, and the bench-only stand-in too."""

    def update(self, data: bytes | memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...
    def copy(self) -> Hasher: ...


class _NoHash:
    """Stands in for sha256 under SKIP_HASH: names blobs by nothing but their size."""

    def __init__(self) -> None:
        self._size = 0

    def update(self, data: bytes | memoryview, /) -> None:
        self._size += len(data)

    def hexdigest(self) -> str:
        return hashlib.sha256(str(self._size).encode()).hexdigest()

    def copy(self) -> _NoHash:
        twin = _NoHash()
        twin._size = self._size
        return twin


def new_hash() -> Hasher:
    return _NoHash() if SKIP_HASH else hashlib.sha256()
