"""Partial downloads in <archive>/tmp/: resumable across runs, locked while in use.

A partial for a URL lives at tmp/<hash of the URL without its query>.part, beside a
sidecar .json that records what resuming needs: the URL key, the validator for
If-Range, the expected size, and how many bytes are known to be on disk. The .part
is locked (flock) by the process writing it; another process that finds it locked
downloads into a private temp file instead. A download that no earlier run left a
partial for starts with no file at all: under RESUMABLE_FROM its bytes are held in
memory and written once, at its commit (one thread hop and a few system calls for a
small image); a larger one, or one kept after a failure, takes its file at once. A
file received whole whose commit failed is kept, validator or not: the next run
commits it without asking the host, which may have deleted it meanwhile.

After a crash in the same boot the file's length is trusted (the page cache survived);
after a reboot only bytes fsynced before the sidecar's last write (see syncing.py; a
partial that is not `durable` is never fsynced). A large file may be split into spans
fetched at once (see ranges.py): each span is [start, pos, end), bytes [start, pos) on
disk. The sidecar then records every span, and the sha256 covers the contiguous prefix.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from tune_archiver.download.partfile import (
    Writer,
    claim,
    fresh,
    partial_name,
    same_file,
    write_pieces,
)
from tune_archiver.download.prefixhash import PrefixHash
from tune_archiver.download.sidecar import Span, prefix_end, record, resumable
from tune_archiver.download.syncing import PeriodicSync
from tune_archiver.errors import ChangedOnDisk, IntegrityError, StorageError, storage_error
from tune_archiver.safefs import BLOB_MODE, PRIVATE_FILE, write_private

RESUMABLE_FROM = 2**20  # smaller files are simply fetched again after a kill
log = logging.getLogger(__name__)


class Partial:
    """The bytes of one download received so far, their sha256, and what resuming needs.

    Every method blocks; call them from a worker thread (close may run anywhere: it
    only writes a few bytes).
    """

    def __init__(
        self, path: Path, fd: int, archive: Path, sidecar: Path | None,
        write: Writer = os.pwritev, key: str = "", durable: bool = True,
    ) -> None:
        self.path = path
        self.size = 0  # bytes on disk
        self.validator: str | None = None  # strong ETag or Last-Modified, for If-Range
        self.total: int | None = None  # the file's full size, once a server said it
        self.content_type: str | None = None  # as served: recorded for a file kept whole
        self.spans: list[Span] | None = None  # when split into ranges
        self._fd = fd
        self._archive = archive
        self._sidecar = sidecar  # None for a private temp file that no later run resumes
        self._key = key
        self._held: list[bytes] | None = None  # the bytes, while there is no file yet
        self._closed_early = False  # finish closed a private file before its commit
        self._finished_record: Path | None = None  # the sidecar finish removed, until the commit
        self._hash = PrefixHash()
        self._write = write
        self._lock = threading.Lock()  # span bookkeeping: ranges write from several threads
        self._synced = PeriodicSync(durable, self._lock, self._save_quietly)
        self._saving = threading.Lock()  # the sidecar has one temp name: one writer
        # Called (in the writing thread) as the hashed prefix grows: an S3 live upload.
        self.on_hashed: Callable[[], None] | None = None

    # -- opening ---------------------------------------------------------------

    @classmethod
    def open(cls, tmp: Path, key: str, archive: Path, write: Writer = os.pwritev,
             durable: bool = True) -> Partial:
        """The resumable partial for `key`, or a private one when another process holds it.
        Bytes taken over are hashed by catch_up_hash, a step at a time (see Staging.open)."""
        try:
            fd, path, sidecar = claim(tmp, key)
            partial = cls(path, fd, archive, sidecar, write, key, durable)
            try:
                if sidecar is not None:
                    partial._resume(sidecar)
            except BaseException:
                partial.close(keep=False)  # bytes it cannot vouch for go, and its lock
                raise
            return partial
        except OSError as exc:
            raise storage_error(exc, archive, "start a download") from exc

    @classmethod
    def held(cls, tmp: Path, key: str, archive: Path, write: Writer = os.pwritev,
             durable: bool = True) -> Partial:
        """A partial for `key` with no file yet (no earlier run left one); never blocks.
        Its bytes stay in memory until they need a file (see hold)."""
        partial = cls(tmp / f"{partial_name(key)}.part", -1, archive, None, write, key, durable)
        partial._held = []
        return partial

    @property
    def is_held(self) -> bool:
        """True while the bytes are in memory and there is no file."""
        return self._held is not None

    def hold(self, pieces: Sequence[bytes]) -> bool:
        """Keep the pieces in memory if this partial has no file and stays under
        RESUMABLE_FROM; True when kept. Never blocks, so the event loop may call it."""
        if self._held is None:
            return False
        added = sum(len(piece) for piece in pieces)
        if self.size + added >= RESUMABLE_FROM:
            return False
        self._held.extend(piece for piece in pieces if piece)
        self.size += added
        return True

    def spill(self) -> None:
        """Put held bytes into the named file (locked, resumable), e.g. to wait for a retry."""
        if self._held is not None:
            self._take_file(named=True)

    def _take_file(self, named: bool) -> None:
        """Give a held partial its file (see partfile.fresh), and write and hash the held
        bytes into it; if that fails, the file is removed and the bytes stay held."""
        held = b"".join(self._held or [])  # one write, one hash: each a GIL hand-off
        try:
            fd, path, sidecar = fresh(self.path.parent, self._key, named)
        except OSError as exc:
            raise storage_error(exc, self._archive, "start a download") from exc
        try:
            write_pieces(self._write, fd, 0, [held])
        except OSError as exc:
            with contextlib.suppress(OSError):
                path.unlink()  # ours: locked, or private
            os.close(fd)
            raise storage_error(exc, self._archive, "write a download") from exc
        self._fd, self.path, self._sidecar, self._held = fd, path, sidecar, None
        self._hash = PrefixHash()
        self._hash.add((held,))
        self.size = len(held)
        self._synced.size = 0
        if self.on_hashed is not None:
            self.on_hashed()

    def _resume(self, sidecar: Path) -> None:
        """Take over what an earlier run left, if its sidecar vouches for it; else start empty."""
        found = resumable(sidecar, self._key, os.fstat(self._fd).st_size)
        usable = found.size if found else 0
        if found is not None:
            self.validator, self.total, self.spans = found.validator, found.total, found.spans
            self.content_type, self._hash.vouched = found.content_type, found.prefix
        if self.spans is None:
            os.ftruncate(self._fd, usable)
        self.size = usable
        if usable and self._synced.durable:  # else none are synced: a reboot starts over
            os.fsync(self._fd)  # in the same boot its length was trusted, not fsynced
            self._synced.size = usable
            self._synced.spans = [list(span) for span in self.spans] if self.spans else None

    # -- writing ---------------------------------------------------------------

    def append(self, pieces: Sequence[bytes]) -> None:
        """Write the bytes at the end and hash them (hashlib lets go of the GIL); held
        in memory instead while they may be (see hold)."""
        if self._held is not None:
            if self.hold(pieces):
                return
            self._take_file(named=True)  # large now: worth resuming
        self.size += self._write_at(self.size, pieces)
        self._hash.add(pieces)
        self._maybe_sync()
        if self.on_hashed is not None:
            self.on_hashed()

    def reset(self) -> None:
        """Forget every byte, and any split: the next append starts the file again."""
        self._synced.wait()
        if self._held is not None:
            self._held = []
        else:
            try:
                os.ftruncate(self._fd, 0)
            except OSError as exc:
                raise storage_error(exc, self._archive, "truncate a download") from exc
        self._hash = PrefixHash()
        self.size = self._synced.size = 0
        # A restart drops the lost bytes, and what the last response said of the file.
        self.spans = self._synced.spans = self._synced.failed = self.content_type = None
        self._save()  # the record vouched for them: a kill before its next save resumed them

    # -- ranges ----------------------------------------------------------------

    def split(self, piece: int) -> None:
        """Cut the bytes still to come into spans of `piece` bytes, in order.

        Those on disk already stay the first span's. Small spans taken in order by a
        few connections keep the contiguous prefix, and so the hash, close behind.
        """
        assert self.spans is None
        assert self.total is not None
        self.spill()
        self._synced.wait()
        bounds = [*range(self.size, self.total, piece), self.total]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < piece // 2:
            del bounds[-2]  # no runt at the end
        self.spans = [[0, self.size, bounds[1]]]
        self.spans += [[bounds[i], bounds[i], bounds[i + 1]] for i in range(1, len(bounds) - 1)]
        synced = [[start, start, end] for start, _, end in self.spans]
        synced[0][1] = self._synced.size
        self._synced.spans = synced
        self._save()

    def write_span(self, index: int, pieces: Sequence[bytes]) -> None:
        """Write bytes at the span's position; several threads may write different spans."""
        span = self.spans[index] if self.spans else None
        if span is None or span[1] + sum(len(piece) for piece in pieces) > span[2]:
            raise IntegrityError("the server sent more bytes than the range asked for")
        written = self._write_at(span[1], pieces)
        with self._lock:
            span[1] += written
            self.size += written
        self._maybe_sync()

    def catch_up_hash(self, limit: int | None) -> int:
        """Hash the bytes on disk that now continue the hashed prefix, up to `limit` bytes:
        read back (from the page cache, as a rule). Returns how many it hashed. Only one
        thread may call this at a time."""
        with self._lock:
            end = self.size if self.spans is None else prefix_end(self.spans)
        start = self._hash.size
        if limit is not None:
            end = min(end, start + limit)
        try:
            same = self._hash.read_from(self._fd, end)
        except OSError as exc:
            raise storage_error(exc, self._archive, "read a download") from exc
        if not same:  # the sidecar's sha256 of them: a damaged disk's bytes are never committed
            log.warning("%s: the %d bytes an earlier run kept changed on disk since: the "
                        "download starts over (the disk may have damaged more: run "
                        "tune-archiver verify)", self.path, self._hash.size)
            self.reset()
            return 0
        if self._hash.size > start and self.on_hashed is not None:
            self.on_hashed()
        return self._hash.size - start

    @property
    def complete(self) -> bool:
        """True when every byte of the file's known size is on disk and hashed."""
        return self.total is not None and self._hash.size == self.size == self.total

    @property
    def hashed(self) -> int:
        return self._hash.size

    def _write_at(self, offset: int, pieces: Sequence[bytes]) -> int:
        """Write every piece, in order, from `offset`; returns the bytes written."""
        try:
            return write_pieces(self._write, self._fd, offset, pieces)
        except OSError as exc:
            raise storage_error(exc, self._archive, "write a download") from exc

    def _maybe_sync(self) -> None:
        with self._lock:
            self._synced.maybe(self._fd, self.size, self.spans)

    def _save_quietly(self) -> None:
        with contextlib.suppress(StorageError):  # then a resume starts a little earlier
            self._save()

    def describe(self, validator: str | None, total: int | None) -> bool:
        """Note what a response said about the file; True when the sidecar should be
        saved at once (save, in a worker thread): only for a file worth resuming after a
        kill. A small one's is written only if it is kept after a failure (see close)."""
        if (validator, total) == (self.validator, self.total):
            return False
        self.validator, self.total = validator, total
        return total is None or total >= RESUMABLE_FROM

    def save(self) -> None:
        """Write the sidecar now (and so take the named file, if the bytes are held)."""
        self.spill()
        self._save()

    def head(self, nbytes: int) -> bytes:
        """The file's first bytes (fewer when it is shorter), for telling its type."""
        if self._held is None:
            return os.pread(self._fd, nbytes, 0)
        first = self._held[0] if self._held else b""  # one piece, as a rule: not all joined
        return first[:nbytes] if len(first) >= nbytes else b"".join(self._held)[:nbytes]

    def sha256(self) -> str:
        """The sha256 of every byte; refuses while any byte is unhashed or a span unfilled."""
        if self._hash.size != self.size or (self.total is not None and self.size != self.total):
            raise ChangedOnDisk(
                f"internal error: {self._hash.size} of {self.size} bytes hashed, "
                f"{self.total} expected"
            )
        return self._hash.hexdigest()

    # -- ending ----------------------------------------------------------------

    def finish(self) -> None:
        """Make the bytes durable and read-only (unless the partial is not `durable`), and
        forget the sidecar, before the file becomes a blob. Held bytes are written now,
        once, into a private file."""
        self._synced.wait()
        if self._held is not None:
            self._take_file(named=True)  # the name a failed commit keeps it under
        if self.total is None:
            self.total = self.size  # every byte is in: a file kept whole has a known size
        try:
            if self._synced.durable:  # else it is uploaded, then removed: its mode is no one's
                if self._synced.failed is not None:
                    raise self._synced.failed
                os.fsync(self._fd)
                os.fchmod(self._fd, BLOB_MODE)  # only once durable: a failed fsync keeps it 0600
            if self._sidecar:  # no later run may resume a blob (close restores it on failure)
                self._sidecar.unlink(missing_ok=True)
                self._finished_record, self._sidecar = self._sidecar, None
        except OSError as exc:
            self.validator = self.total = None  # bytes that may not be on disk: none kept
            raise storage_error(exc, self._archive, "store a blob") from exc
        if self._finished_record is None:  # a private file has no lock to keep until the rename
            self._release()
            self._closed_early = True  # its file is still close's to remove

    def close(self, keep: bool) -> None:
        """Release the file: kept for a later run to resume, or removed. Only a partial
        with bytes, a validator and a sidecar is worth keeping; held bytes worth keeping
        take their named file now."""
        if self._held is not None and keep and self.size and self.validator:
            with contextlib.suppress(StorageError):  # then they are lost, as a full disk's are
                self._take_file(named=True)
        self._held = None
        if self._fd < 0 and not self._closed_early:
            return
        self._synced.wait()
        keep = keep and self._synced.failed is None  # the disk may have lost its bytes
        with contextlib.suppress(OSError, StorageError):  # a full disk keeps it unrecorded
            if keep and self._finished_record and same_file(self._fd, self.path):
                self._unfinish()
            # Whole, if not yet hashed again (a stop while Staging.open hashes it).
            if keep and self._sidecar and self.size and (self.validator or self.size == self.total):
                self._save(vouch=True)
            else:
                if self._sidecar:
                    self._sidecar.unlink(missing_ok=True)
                # Unless committed just before a cancel: the name may be another's now.
                if self._fd < 0 or same_file(self._fd, self.path):
                    self.path.unlink(missing_ok=True)
        self._release()

    def _unfinish(self) -> None:
        """After a failed commit: every byte is in (and fsynced, if durable); the next run
        takes the file as it is, asking the host nothing (it may have deleted it)."""
        os.fchmod(self._fd, PRIVATE_FILE)  # writable again, as a partial is
        if self._synced.durable:
            self._synced.size = self.size
            self._synced.spans = [list(span) for span in self.spans] if self.spans else None
        self._sidecar, self._finished_record = self._finished_record, None

    def detach(self) -> None:
        """The file's name is the store's now (renamed or removed): close it, touching no name."""
        self._release()

    def _release(self) -> None:
        self._synced.wait()
        if self._fd >= 0:
            os.close(self._fd)  # releases the lock last: nobody takes the name before we are done
            self._fd = -1

    def _save(self, vouch: bool = False) -> None:
        """Write the sidecar; with `vouch` (a close keeping the file), with the sha256 of
        the bytes hashed, which the next run holds them to (see catch_up_hash)."""
        prefix = self._hash.recorded() if vouch else None
        with self._saving:  # the periodic sync's thread saves too: one writer at a time
            self._save_now(prefix)

    def _save_now(self, prefix: tuple[int, str] | None = None) -> None:
        if self._sidecar is None:
            return
        try:
            if self._synced.failed is not None:  # a lost write: no record may vouch for it
                self._sidecar.unlink(missing_ok=True)
                return
            write_private(self._sidecar, record(
                self._key, self.validator, self.total, self._synced.size, self.spans,
                self._synced.spans, self.content_type, prefix), sync=False)
        except OSError as exc:
            raise storage_error(exc, self._archive, "record a download's progress") from exc
