"""Parallel ranges: one large file fetched over several connections at once.

The partial is split into pieces of at most 16 MiB (partial.Partial.split), and
--split connections take them in order, each piece its own request with
`Range: bytes=pos-end` and `If-Range`, retried and resumed on its own, written at
its offset. Taken in order, pieces fill the file from the front, so a hasher close
behind hashes the contiguous prefix as it grows and the commit reads nothing again.
A server that answers a range with the whole file (it ignores Range, or the file
changed), with a range of another version (another validator: it ignores
If-Range), or with 416 (the file is shorter now), makes the caller start the file
over in one stream.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

from tune_archiver.config import Settings
from tune_archiver.download.partial import Partial
from tune_archiver.errors import ArchiverError, BodyError, IntegrityError, StorageError
from tune_archiver.net.retry import call_with_retries
from tune_archiver.net.throttle import TokenBucket
from tune_archiver.net.transport import (
    asset_status_error,
    content_range,
    get,
    pump,
    refuse_encoded,
    validator_of,
)
from tune_archiver.progress import Progress
from tune_archiver.threads import in_thread
from tune_archiver.urls import redact

MIN_PIECE = 2**20  # smaller pieces cost more in requests than they win
MAX_PIECE = 16 * 2**20  # larger ones let the hash fall further behind the download
# The most pieces one file is cut into, however large its announced size: each is a
# list in memory and two in its sidecar, which must stay under sidecar.MAX_SIDECAR.
MAX_PIECES = 4096
# Bytes one connection gathers before a write: half a single stream's, since up to
# 16 connections each hold one batch gathering and one being written.
RANGE_BATCH = 2**19
HASH_STEP = 64 * 2**20  # the most one thread hop hashes, so a cancel is never kept waiting


class RangesRefused(Exception):
    """The server answered a range with something else: fetch the file in one stream."""


def piece_size(settings: Settings, total: int, on_disk: int) -> int | None:
    """The size of the pieces to fetch a file in, or None to fetch it in one stream."""
    if settings.split < 2 or total < settings.split_threshold:
        return None
    rest = total - on_disk
    piece = min(MAX_PIECE, max(MIN_PIECE, rest // (settings.split * 4)))
    piece = max(piece, -(-rest // MAX_PIECES))  # larger pieces past MAX_PIECES of them
    return piece if rest > piece else None


class RangedFetch:
    """Fills every span of a split partial, hashing as it goes."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: Settings,
        progress: Progress,
        throttle: TokenBucket | None = None,
    ) -> None:
        self._throttle = throttle
        self._session = session
        self._settings = settings
        self._progress = progress

    async def run(self, url: str, partial: Partial) -> None:
        """Fetch the pieces still open over --split connections.

        The caller holds the file's one --concurrency slot: --split counts this file's
        connections, whatever --concurrency says (as aria2c's -x and -j do).

        Raises RangesRefused, or the error of the first piece that failed for good.
        """
        filled = asyncio.Event()
        filled.set()  # the hasher looks once at what is on disk already

        async def hash_along() -> None:
            assert partial.total is not None
            while partial.hashed < partial.total:
                await filled.wait()
                filled.clear()
                while await in_thread(partial.catch_up_hash, HASH_STEP):
                    pass
                if all(pos == end for _, pos, end in partial.spans or []):
                    # Every piece is in: one last catch-up must reach the end, or we would
                    # wait here forever.
                    while await in_thread(partial.catch_up_hash, HASH_STEP):
                        pass
                    if partial.hashed < partial.total:
                        raise IntegrityError("internal error: every piece is in, not hashed")

        spans = partial.spans
        assert spans is not None
        todo = [index for index, (_, pos, end) in enumerate(spans) if pos < end]
        todo.reverse()  # popped from the end: the first piece first

        async def connection() -> None:
            while todo:
                await self._span(url, partial, todo.pop(), filled)

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(self._settings.split, len(todo))):
                    group.create_task(connection())
                group.create_task(hash_along())
        except ExceptionGroup as group:
            ours, others = group.split((RangesRefused, ArchiverError))
            if ours is None or others is not None:
                raise
            # Pieces that fail in one moment, each its own way, give one error (except*
            # would raise a group of both): a refusal first, as when it comes alone.
            if group.subgroup(RangesRefused) is not None:
                raise RangesRefused from None
            raise ours.exceptions[0] from None

    async def _span(self, url: str, partial: Partial, index: int, filled: asyncio.Event) -> None:
        shown = f"{redact(url)} (piece {index + 1} of {len(partial.spans or [])})"

        def resumable() -> int:  # where the next attempt resumes this piece from
            return partial.spans[index][1] if partial.spans else 0

        # As for one stream: retries count only the attempts that got nowhere, so a host
        # that drops every connection after a few MiB fails no piece that gets on.
        await call_with_retries(
            self._settings.retry, shown,
            lambda: self._attempt(url, shown, partial, index, filled), resumable,
        )
        # Recorded as each piece is in, so a run killed in this boot (no close to save
        # it) resumes every piece where it was; after a reboot, synced_spans count.
        with contextlib.suppress(StorageError):  # then a resume starts a little earlier
            await in_thread(partial.save)

    async def _attempt(
        self, url: str, shown: str, partial: Partial, index: int, filled: asyncio.Event
    ) -> None:
        """One request for what the span still lacks."""
        assert partial.spans is not None
        assert partial.validator is not None
        _, pos, end = partial.spans[index]
        headers = {"Range": f"bytes={pos}-{end - 1}", "If-Range": partial.validator}

        async def write(pieces: list[bytes]) -> None:
            await in_thread(partial.write_span, index, pieces)
            self._progress.advance(sum(len(piece) for piece in pieces))
            filled.set()

        async with get(
            self._session, url, headers, read_timeout=self._settings.read_timeout
        ) as response:
            # 200: Range ignored, or the file changed under If-Range; 416: the file is
            # shorter now (a host that checks Range before If-Range): it changed too.
            if response.status in (200, 416):
                raise RangesRefused
            if response.status != 206:
                raise await asset_status_error(response, shown, self._settings.stall)
            if content_range(response) != (pos, end - 1, partial.total):
                raise RangesRefused
            if validator_of(response.headers) != partial.validator:
                raise RangesRefused  # a host that ignored If-Range: the file changed
            refuse_encoded(response, shown)
            rest = await pump(response, write, self._settings.stall, self._throttle, RANGE_BATCH)
            if rest:
                await write(rest)
        if partial.spans[index][1] < end:
            raise BodyError(
                f"the body ended after {partial.spans[index][1] - pos} of {end - pos} bytes: "
                f"{shown}"
            )
