"""Downloads: one URL to one verified blob, resuming whenever the server allows.

Each attempt holds one slot of the shared limiter (--concurrency counts files at
once); a download sleeping in backoff holds none. A split file holds one slot for all
its --split connections. The sha256 is computed from the bytes as they are written.
A large file from a server that takes ranges is handed to ranges.py once its first
answer says so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import aiohttp

from tune_archiver.config import Settings
from tune_archiver.download.partial import Partial
from tune_archiver.download.ranges import RangedFetch, RangesRefused, piece_size
from tune_archiver.download.sharing import SharedDownloads
from tune_archiver.download.staging import Noted, Staging
from tune_archiver.errors import (
    ArchiverError,
    BodyError,
    ChangedOnDisk,
    DataError,
    DiskFull,
    ExpiredUrl,
    IntegrityError,
)
from tune_archiver.filetypes import HEAD_BYTES, error_page
from tune_archiver.models import Blob
from tune_archiver.net.retry import MOVED_ON, call_with_retries
from tune_archiver.net.throttle import TokenBucket
from tune_archiver.net.transport import (
    asset_status_error,
    content_range,
    get,
    pump,
    refuse_encoded,
    unsatisfied_length,
    validator_of,
)
from tune_archiver.progress import Progress
from tune_archiver.store import Store
from tune_archiver.threads import in_thread
from tune_archiver.urls import check_fetchable, redact

OPEN_PER_SLOT = 4  # partials open at once per --concurrency slot (some wait in backoff)
# Below this, a full disk is left to the write's own ENOSPC: one statvfs per image costs.
ROOM_CHECK_FROM = 8 * 2**20
# Error pages that some hosts serve with 200; never a checkpoint or an image.
ERROR_PAGE_TYPES = frozenset({"text/html", "application/xml", "text/xml"})

Refresh = Callable[[], Awaitable[str | None]]


class SplitHere(Exception):
    """The first answer shows a large file and a server that takes ranges: split it."""

    def __init__(self, piece: int) -> None:
        self.piece = piece


@dataclass
class Transfer:
    """One download across its attempts: where from, and the bytes so far."""

    url: str
    partial: Partial
    counted: bool = False  # its size has been added to the progress total
    may_split: bool = True  # False once the server has refused a range
    starts_over: bool = False  # the host answered its last Range with the file from its start
    min_size: int = 1  # fewer bytes is an error page or a glitch, never the file
    short_of_room: bool = False  # refused before writing the rest: what is on disk is kept
    ends_at_close: bool = False  # a body of no length: it ends where the connection closes
    takes_ranges: bool = False  # the host said it serves ranges of this file
    tail: list[bytes] = field(default_factory=list)  # the body's last bytes, not yet written

    @property
    def shown(self) -> str:
        return redact(self.url)


class Downloader:
    """Fetches URLs into the store; the same URL asked for twice in a run is fetched once."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        store: Store,
        staging: Staging,
        limiter: asyncio.Semaphore,
        settings: Settings,
        progress: Progress,
    ) -> None:
        self._session = session
        self._store = store
        self._staging = staging
        self._limiter = limiter
        self._settings = settings
        self._progress = progress
        self._shared = SharedDownloads()
        # Partials open at once: each holds a descriptor, so thousands of queued files
        # must not open theirs before they can be fetched (ulimit -n).
        self._open = asyncio.Semaphore(settings.concurrency * OPEN_PER_SLOT)
        # --limit-rate: one bucket for every connection of the run, ranges included.
        self._throttle = TokenBucket(settings.limit_rate) if settings.limit_rate else None
        self._ranged = RangedFetch(session, settings, progress, self._throttle)

    async def fetch(
        self, url: str, refresh: Refresh | None = None, min_size: int = 1,
        noted: Noted | None = None,
    ) -> Blob:
        """The blob holding the URL's bytes, once they are verified and committed.

        When the host refuses the URL as expired, `refresh` is asked for a fresh one
        and the download resumes (see _body_renewed). A body of fewer than `min_size`
        bytes (an empty 200, say) is retried, never archived. Tunes that list the same
        file, asking the same least size, share one download (see sharing.py), `noted`
        called by the one that stores it (Incoming.commit). Raises ArchiverError at last.
        """
        return await self._shared.blob(
            url, lambda: self._download(url, refresh, min_size, noted), min_size)

    async def drop_leftovers(self, urls: Iterable[str]) -> None:
        """What earlier runs left of these files, archived since, removed (Staging.drop)."""
        await self._staging.drop(urls)

    async def _download(self, url: str, refresh: Refresh | None, min_size: int,
                        noted: Noted | None) -> Blob:
        check_fetchable(url)
        async with self._open:
            return await self._download_open(url, refresh, min_size, noted)

    async def _download_open(self, url: str, refresh: Refresh | None, min_size: int,
                             noted: Noted | None) -> Blob:
        incoming = await self._staging.open(url, self._store)
        partial = incoming.partial
        transfer = Transfer(url, partial, min_size=min_size)
        keep = True  # a partial that may be resumed later is kept, unless the disk is full
        try:
            if partial.total is not None:
                self._count(transfer, partial.total)
                self._progress.resumed(partial.size)  # not speed: it was on disk
            # A partial holding every byte was received by an earlier run whose commit
            # failed: the host, which may have deleted the file meanwhile, is not asked.
            if not (partial.complete and partial.size >= min_size):
                await self._body_renewed(transfer, refresh)
            head = partial.head(HEAD_BYTES)  # the body's last pieces are not written yet
            head += b"".join(transfer.tail)[:HEAD_BYTES] if len(head) < HEAD_BYTES else b""
            page = error_page(partial.content_type, head[:HEAD_BYTES])
            if page is not None:  # a page's bytes under a type saying nothing (see _accept)
                keep = False  # never committed unasked by a later run
                raise DataError(f"the server sent an error page ({page}): {transfer.shown}")
            try:
                # The type the host served it as, recorded with the partial (see _accept).
                blob = await incoming.commit(partial.content_type, transfer.tail, noted)
            except ChangedOnDisk:
                keep = False  # bytes on disk that are not those received are never resumed
                raise
        except DiskFull:
            keep = transfer.short_of_room  # else its bytes are what filled the disk
            raise
        finally:
            await incoming.release(keep)  # does nothing once committed
        self._progress.file_done()
        return blob

    async def _body_renewed(self, transfer: Transfer, refresh: Refresh | None) -> None:
        """The body, from a fresh URL of the same asset if the host says the first expired;
        and again each time a fresh URL expires after taking the download MOVED_ON
        further (a 2 GB checkpoint may outlast several), never for one refused at once."""
        renewed_at: int | None = None  # the bytes on disk when the last fresh URL came
        while True:
            try:
                await self._body(transfer)
                return
            except ExpiredUrl:
                size = transfer.partial.size
                if renewed_at is not None and size < renewed_at + MOVED_ON:
                    raise
                fresh = await refresh() if refresh else None
                if fresh is None:
                    raise
                check_fetchable(fresh)
                transfer.url, renewed_at = fresh, size

    async def _body(self, transfer: Transfer) -> None:
        """Every byte into the partial: in one stream, or in ranges once the server allows."""
        partial = transfer.partial
        if partial.spans is None:
            try:
                await self._retried(transfer)
                return
            except SplitHere as split:
                await in_thread(partial.split, split.piece)
        try:
            async with self._limiter:
                await self._ranged.run(transfer.url, partial)
        except RangesRefused:
            await self._restart(transfer)
            transfer.may_split = False
            await self._retried(transfer)

    async def _retried(self, transfer: Transfer) -> None:
        def resumable() -> int:  # bytes the next attempt asks for the rest after
            partial = transfer.partial  # (none from a host that starts each one over)
            return partial.size if partial.validator and not transfer.starts_over else 0

        await call_with_retries(
            self._settings.retry, transfer.shown, lambda: self._attempt(transfer), resumable
        )

    async def _attempt(self, transfer: Transfer) -> None:
        try:
            await self._request(transfer)
        except Exception:
            partial = transfer.partial
            if partial.is_held and partial.size and partial.validator:
                # Bytes a retry resumes from wait on disk, not in memory (they stay
                # held if that fails).
                with contextlib.suppress(ArchiverError):
                    await in_thread(partial.spill)
            raise

    async def _request(self, transfer: Transfer) -> None:
        """One request: resume from the bytes we have when we can, else start over."""
        partial = transfer.partial
        headers = {}
        if partial.size and partial.validator:
            headers = {"Range": f"bytes={partial.size}-", "If-Range": partial.validator}
        elif partial.size:
            await self._restart(transfer)
        transfer.tail = []
        async with self._limiter, get(
            self._session, transfer.url, headers, read_timeout=self._settings.read_timeout
        ) as response:
            if headers and _ends_here(response, partial):
                tail: list[bytes] = []  # the bytes held are the file: nothing lies past them
                transfer.ends_at_close = False  # as the 416 of _confirm_end says
            else:
                await self._accept(response, transfer)
                tail = await pump(response, lambda pieces: self._write(transfer, pieces),
                                  self._settings.stall, self._throttle)
        received = partial.size + sum(len(piece) for piece in tail)
        if partial.total is not None and received != partial.total:
            await self._write(transfer, tail)  # good bytes for the resume; or too many
            raise BodyError(
                f"the body ended after {partial.size} of {partial.total} bytes: {transfer.shown}"
            )
        if received < transfer.min_size:
            await self._restart(transfer)
            raise IntegrityError(
                f"the server sent {received} bytes, too few for this file: {transfer.shown}"
            )
        if transfer.ends_at_close:
            await self._confirm_end(transfer, tail, received)
        transfer.tail = tail  # written by the commit, in the same thread hop
        self._progress.advance(received - partial.size)

    async def _confirm_end(self, transfer: Transfer, tail: list[bytes], received: int) -> None:
        """A body of no length ends where the connection closed, and so does one a
        dropped connection cut: a host that serves ranges is asked for what lies past
        it. A range there, or any answer giving the file another size, means the body
        was cut: its bytes are kept, and the retry resumes. An error (a busy host's 429
        or 5xx, an expired URL's 403, a 404) has not said: it is the download's, retried
        or renewed as any other, the bytes kept. The whole file under another
        validator: it changed, and starts over. 416 of no other length (nothing past it)
        or any other answer is the file's end, as every downloader takes it from a host
        that cannot say."""
        partial = transfer.partial
        if not (partial.validator and transfer.takes_ranges):
            return
        headers = {"Range": f"bytes={received}-", "If-Range": partial.validator}
        failed: ArchiverError | None = None
        async with self._limiter, get(
            self._session, transfer.url, headers, read_timeout=self._settings.read_timeout
        ) as answer:
            # A size other than the bytes received, however said (a range's total, asked or
            # not; a 200's length; a 416's `*/N`), or a range of no size (`.../*`): cut.
            found = content_range(answer) if answer.status == 206 else None
            said = found[2] if found else answer.content_length if answer.status == 200 else (
                unsatisfied_length(answer) if answer.status == 416 else None)
            more = (said is not None and said != received) or (answer.status == 206 and not found)
            # 200 under another validator: the file changed since (If-Range), so the body
            # may be a cut one of a version no longer there. The same validator and no
            # length: the host ignores Range now, and cannot say.
            changed = answer.status == 200 and validator_of(answer.headers) not in (
                None, partial.validator)
            if answer.status >= 400 and answer.status != 416:
                failed = await asset_status_error(answer, transfer.shown, self._settings.stall)
        if changed:
            await self._restart(transfer)
            raise BodyError(f"the file changed on the server; starting over: {transfer.shown}")
        if more or failed:
            await self._write(transfer, tail)
            raise failed or BodyError(f"the connection closed after {received} bytes, "
                                      f"before the file's end: {transfer.shown}")

    async def _accept(self, response: aiohttp.ClientResponse, transfer: Transfer) -> None:
        """Check the status and headers; learn the size and validator; restart if need be."""
        partial = transfer.partial
        if response.status == 416:
            await self._restart(transfer)
            raise BodyError(f"the server refused to resume; starting over: {transfer.shown}")
        if response.status not in (200, 206):
            raise await asset_status_error(response, transfer.shown, self._settings.stall)
        content_type = response.content_type if "Content-Type" in response.headers else None
        if content_type in ERROR_PAGE_TYPES:
            raise DataError(f"the server sent an error page ({content_type}): {transfer.shown}")
        refuse_encoded(response, transfer.shown)
        if response.status == 200:
            if partial.size:  # a Range was asked for
                transfer.starts_over = True
                await self._restart(transfer)
            total = response.content_length
        else:
            total = _resumed_total(response, partial)
            if total is None:
                await self._restart(transfer)
                raise BodyError(f"the server sent a range we did not ask for: {transfer.shown}")
            if partial.size and validator_of(response.headers) != partial.validator:
                # A host that ignores If-Range sends a range of the file as it is now:
                # spliced onto the bytes we have, it would make a blob of two versions.
                # (Unasked, a 206 of the whole file is the file, as a 200 would be.)
                await self._restart(transfer)
                raise BodyError(f"the file changed on the server; starting over: {transfer.shown}")
            transfer.starts_over = False  # it resumes again: what it resumed after is progress
        if total is not None:
            self._count(transfer, total)
            await self._staging.check_size(total)  # --force or not: it would fail at the limit
            if not self._settings.force and total - partial.size >= ROOM_CHECK_FROM:
                try:
                    await self._staging.check_room(total - partial.size)
                except DiskFull:
                    transfer.short_of_room = True  # no byte of the rest was written
                    raise
        # Kept in the partial's record: a file left whole is later committed unasked.
        partial.content_type = content_type
        validator = validator_of(response.headers)
        if partial.describe(validator, total):
            await in_thread(partial.save)
        takes_ranges = response.status == 206 or response.headers.get("Accept-Ranges") == "bytes"
        transfer.takes_ranges = takes_ranges
        # No length and not chunked (whose last chunk marks the end): the close is the end.
        transfer.ends_at_close = total is None and "chunked" not in response.headers.get(
            "Transfer-Encoding", "").lower()
        if total is not None and validator and takes_ranges and transfer.may_split:
            piece = piece_size(self._settings, total, partial.size)
            if piece is not None:
                raise SplitHere(piece)  # this answer's body is left unread

    async def _write(self, transfer: Transfer, pieces: list[bytes]) -> None:
        partial = transfer.partial
        before = partial.size
        if not partial.hold(pieces):  # a small file's bytes wait in memory for its commit
            await in_thread(partial.append, pieces)
        self._progress.advance(partial.size - before)
        if partial.total is not None and partial.size > partial.total:
            await self._restart(transfer)
            raise IntegrityError(
                f"the server sent more than the {partial.total} bytes it announced: "
                f"{transfer.shown}"
            )

    async def _restart(self, transfer: Transfer) -> None:
        """Drop the bytes on disk: the next attempt starts from the first byte."""
        self._progress.advance(-transfer.partial.size)
        await in_thread(transfer.partial.reset)

    def _count(self, transfer: Transfer, total: int) -> None:
        if not transfer.counted:
            transfer.counted = True
            self._progress.add_bytes(total)


def _ends_here(response: aiohttp.ClientResponse, partial: Partial) -> bool:
    """A resume answered 416 with the length of the bytes held (`bytes */N`), under our
    validator if it names one: nothing lies past them. A body of no length whose end was
    not confirmed (an expired URL, a run stopped) is whole; starting over would download
    it all again, and fail each time the download outlasts a fresh URL's life."""
    return (response.status == 416 and unsatisfied_length(response) == partial.size
            and partial.total in (None, partial.size)
            and validator_of(response.headers) in (None, partial.validator))


def _resumed_total(response: aiohttp.ClientResponse, partial: Partial) -> int | None:
    """The file's size from a 206's Content-Range, if it resumes exactly where we are."""
    found = content_range(response)
    if found is None:
        return None
    start, end, total = found
    if start != partial.size or end != total - 1:
        return None
    if partial.size and partial.total is not None and total != partial.total:
        return None  # (a 206 from byte 0, unasked, says the file's size now, as a 200 does)
    return total
