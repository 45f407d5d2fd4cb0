"""Parallel ranges: one large file fetched over several connections at once.

The partial is split into spans (partial.Partial.split); each span is its own
request with `Range: bytes=pos-end` and `If-Range`, retried and resumed on its own,
and written at its offset. A hasher follows behind, hashing the contiguous prefix
as spans fill, so the commit needs no second pass over the file. A server that
answers a range with the whole file (it ignores Range, or the file changed) makes
the caller fall back to one stream.
"""

from __future__ import annotations

import asyncio

import aiohttp

from tune_archiver.config import Settings
from tune_archiver.errors import ArchiverError, BodyError
from tune_archiver.partial import Partial, in_thread
from tune_archiver.progress import Progress
from tune_archiver.retry import call_with_retries
from tune_archiver.transport import asset_status_error, content_range, get, pump
from tune_archiver.urls import redact

MIN_SPAN = 4 * 2**20  # smaller spans cost more in requests than they win
HASH_STEP = 64 * 2**20  # the most one thread hop hashes, so a cancel is never kept waiting


class RangesRefused(Exception):
    """The server answered a range with something else: fetch the file in one stream."""


def span_count(settings: Settings, total: int, on_disk: int) -> int:
    """How many spans a file should be fetched in; 1 means one stream."""
    if settings.split < 2 or total < settings.split_threshold:
        return 1
    return max(1, min(settings.split, (total - on_disk) // MIN_SPAN))


class RangedFetch:
    """Fills every span of a split partial, hashing as it goes."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        limiter: asyncio.Semaphore,
        settings: Settings,
        progress: Progress,
    ) -> None:
        self._session = session
        self._limiter = limiter
        self._settings = settings
        self._progress = progress

    async def run(self, url: str, partial: Partial) -> None:
        """Fetch the spans still open; raises RangesRefused, or the first span's error."""
        filled = asyncio.Event()
        filled.set()  # the hasher looks once at what is on disk already

        async def hash_along() -> None:
            assert partial.total is not None
            while partial.hashed < partial.total:
                await filled.wait()
                filled.clear()
                while await in_thread(partial.catch_up_hash, HASH_STEP):
                    pass

        assert partial.spans is not None
        try:
            async with asyncio.TaskGroup() as group:
                for index, (_, pos, end) in enumerate(partial.spans):
                    if pos < end:
                        group.create_task(self._span(url, partial, index, filled))
                group.create_task(hash_along())
        except* RangesRefused:
            raise RangesRefused from None
        except* ArchiverError as errors:
            raise errors.exceptions[0] from None

    async def _span(self, url: str, partial: Partial, index: int, filled: asyncio.Event) -> None:
        shown = f"{redact(url)} (range {index + 1} of {len(partial.spans or [])})"
        await call_with_retries(
            self._settings.retry, shown,
            lambda: self._attempt(url, shown, partial, index, filled),
        )

    async def _attempt(
        self, url: str, shown: str, partial: Partial, index: int, filled: asyncio.Event
    ) -> None:
        """One request for what the span still lacks."""
        assert partial.spans is not None
        assert partial.validator is not None
        _, pos, end = partial.spans[index]
        headers = {"Range": f"bytes={pos}-{end - 1}", "If-Range": partial.validator}

        async def write(data: bytes) -> None:
            await in_thread(partial.write_span, index, data)
            self._progress.advance(len(data))
            filled.set()

        async with self._limiter, get(
            self._session, url, headers, read_timeout=self._settings.read_timeout
        ) as response:
            if response.status == 200:
                raise RangesRefused  # Range ignored, or the file changed under If-Range
            if response.status != 206:
                raise await asset_status_error(response, shown)
            if content_range(response) != (pos, end - 1, partial.total):
                raise RangesRefused
            await pump(response, write)
        if partial.spans[index][1] < end:
            raise BodyError(
                f"the body ended after {partial.spans[index][1] - pos} of {end - pos} bytes: "
                f"{shown}"
            )
