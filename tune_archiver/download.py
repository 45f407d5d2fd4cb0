"""Downloads: one URL to one verified blob, resuming after a dropped connection.

Each attempt holds one slot of the shared limiter; a download sleeping in backoff
holds none. The sha256 is computed from the bytes as they are written.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDictProxy

from tune_archiver.config import Settings
from tune_archiver.errors import BodyError, DataError, IntegrityError, StatusError
from tune_archiver.models import Blob
from tune_archiver.progress import Progress
from tune_archiver.retry import call_with_retries, retry_after_of
from tune_archiver.store import LocalStore, Partial
from tune_archiver.transport import get
from tune_archiver.urls import check_fetchable, redact, url_key

CHUNK_BYTES = 2**20  # bytes gathered before one thread hop that hashes and writes them
# Error pages that some hosts serve with 200; never a checkpoint or an image.
ERROR_PAGE_TYPES = frozenset({"text/html", "application/xml", "text/xml"})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


@dataclass
class Transfer:
    """What one download has learnt so far, kept across its attempts."""

    url: str
    partial: Partial
    total: int | None = None  # the file's full size, once a response told us
    validator: str | None = None  # strong ETag or Last-Modified, for If-Range
    content_type: str | None = None

    @property
    def shown(self) -> str:
        return redact(self.url)


class Downloader:
    """Fetches URLs into the store; the same URL asked for twice in a run is fetched once."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        store: LocalStore,
        limiter: asyncio.Semaphore,
        settings: Settings,
        progress: Progress,
    ) -> None:
        self._session = session
        self._store = store
        self._limiter = limiter
        self._settings = settings
        self._progress = progress
        self._downloads: dict[str, asyncio.Task[Blob]] = {}

    async def fetch(self, url: str) -> Blob:
        """The blob holding the URL's bytes, once they are verified and committed.

        Raises an ArchiverError when the download fails for good.
        """
        key = url_key(url)
        if key not in self._downloads:
            self._downloads[key] = asyncio.ensure_future(self._download(url))
        return await self._downloads[key]

    async def _download(self, url: str) -> Blob:
        check_fetchable(url)
        partial = await self._store.new_partial()
        try:
            transfer = Transfer(url, partial)
            await call_with_retries(
                self._settings.retry, transfer.shown, lambda: self._attempt(transfer)
            )
            blob = await self._store.commit(partial, transfer.content_type)
        finally:
            partial.close()
        self._progress.file_done()
        return blob

    async def _attempt(self, transfer: Transfer) -> None:
        """One request: resume from the bytes on disk when the server can, else start over."""
        headers = {}
        if transfer.partial.size and transfer.validator:
            headers = {"Range": f"bytes={transfer.partial.size}-", "If-Range": transfer.validator}
        elif transfer.partial.size:
            await self._restart(transfer)
        async with self._limiter, get(
            self._session, transfer.url, headers, read_timeout=self._settings.read_timeout
        ) as response:
            await self._accept(response, transfer)
            pending: list[bytes] = []
            held = 0
            async for piece in response.content.iter_any():
                pending.append(piece)
                held += len(piece)
                if held >= CHUNK_BYTES:
                    await self._write(transfer, b"".join(pending))
                    pending, held = [], 0
            if pending:
                await self._write(transfer, b"".join(pending))
        if transfer.total is not None and transfer.partial.size < transfer.total:
            raise BodyError(
                f"the body ended after {transfer.partial.size} of {transfer.total} bytes: "
                f"{transfer.shown}"
            )

    async def _accept(self, response: aiohttp.ClientResponse, transfer: Transfer) -> None:
        """Check the status and headers; learn the size and validator; restart if need be."""
        offset = transfer.partial.size
        if response.status == 416:
            await self._restart(transfer)
            raise BodyError(f"the server refused to resume; starting over: {transfer.shown}")
        if response.status not in (200, 206):
            retry_after = retry_after_of(response.headers.get("Retry-After"))
            raise StatusError(
                f"HTTP {response.status} from {transfer.shown}", response.status, retry_after
            )
        content_type = response.content_type if "Content-Type" in response.headers else None
        if content_type in ERROR_PAGE_TYPES:
            raise DataError(f"the server sent an error page ({content_type}): {transfer.shown}")
        if response.status == 200:
            if offset:
                await self._restart(transfer)
            total = response.content_length
        else:
            total = _resumed_total(response.headers.get("Content-Range"), offset, transfer.total)
            if total is None:
                await self._restart(transfer)
                raise BodyError(f"the server sent a range we did not ask for: {transfer.shown}")
        if transfer.total is None and total is not None:
            self._progress.add_bytes(total)
        transfer.total = total
        transfer.content_type = content_type
        transfer.validator = _validator(response.headers)

    async def _write(self, transfer: Transfer, data: bytes) -> None:
        await asyncio.to_thread(transfer.partial.append, data)
        self._progress.advance(len(data))
        if transfer.total is not None and transfer.partial.size > transfer.total:
            await self._restart(transfer)
            raise IntegrityError(
                f"the server sent more than the {transfer.total} bytes it announced: "
                f"{transfer.shown}"
            )

    async def _restart(self, transfer: Transfer) -> None:
        """Drop the bytes on disk: the next attempt starts from the first byte."""
        self._progress.advance(-transfer.partial.size)
        await asyncio.to_thread(transfer.partial.reset)


def _resumed_total(content_range: str | None, offset: int, known: int | None) -> int | None:
    """The file's size from a 206's Content-Range, if it resumes exactly at `offset`."""
    match = _CONTENT_RANGE.fullmatch((content_range or "").strip())
    if not match:
        return None
    start, end, total = (int(group) for group in match.groups())
    if start != offset or end != total - 1 or (known is not None and total != known):
        return None
    return total


def _validator(headers: CIMultiDictProxy[str]) -> str | None:
    """What If-Range can carry: a strong ETag, else Last-Modified."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified") or None
