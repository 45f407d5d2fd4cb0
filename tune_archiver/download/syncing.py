"""How much of a partial download is durable: its file is fsynced every SYNC_EVERY bytes,
in a thread of its own, so the writers go on meanwhile (the disk is often slower than
the network), and what that made durable is recorded for a resume after a reboot.

A partial that is not durable (an S3 archive's: the bucket makes its bytes durable,
and the file is uploaded and removed within moments) is never fsynced, so the disk
need not write it at all; after a reboot it starts over.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from tune_archiver.download.sidecar import Span

SYNC_EVERY = 128 * 2**20  # fsync and record progress this often, for resume after a power cut


class PeriodicSync:
    """The bytes of one growing file known to be on disk, and the fsync running, if any.

    `lock` is the partial's own (its size and spans change under it); `record` is
    called under it once an fsync ends: to record what it made durable, or once one
    failed to remove the record, which would vouch for bytes the disk may have lost.
    """

    def __init__(self, durable: bool, lock: threading.Lock, record: Callable[[], None]) -> None:
        self.durable = durable
        self.size = 0  # bytes from the first that are on disk after a reboot
        self.spans: list[Span] | None = None  # of a split file: the same, span by span
        self._lock = lock
        self._record = record
        self._running = False
        self._thread: threading.Thread | None = None
        # The kernel reports a lost write once, to the first fsync that comes after: a
        # later one may succeed although those bytes never reached the disk.
        self.failed: OSError | None = None

    def maybe(self, fd: int, size: int, spans: list[Span] | None) -> None:
        """Start an fsync if SYNC_EVERY bytes were written since the last one; what it
        makes durable is what had been written by now (call it under the lock)."""
        if not self.durable or self.failed or self._running or size - self.size < SYNC_EVERY:
            return  # after a failure, a later fsync that succeeds would vouch for lost bytes
        self._running = True
        claimed = (size, [list(span) for span in spans] if spans else None)
        self._thread = threading.Thread(target=self._sync, args=(fd, *claimed), daemon=True)
        self._thread.start()

    def _sync(self, fd: int, size: int, spans: list[Span] | None) -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            self.failed = exc  # the commit fails, and the record goes (see `record`)
        with self._lock:
            self._running = False
            if self.failed is None:
                self.size, self.spans = size, spans
            self._record()

    def wait(self) -> None:
        """Wait for the fsync running, if any: whatever else records or drops bytes
        (split, reset, finish, close) does so first."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
