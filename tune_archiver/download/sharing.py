"""One download per file for the whole run: tunes that list the same file (its URL less
the signature: download_key) share it, while it runs and for a bounded while after.

A download that failed because its URL expired (and was not renewed) is no failure of
another tune's URL of the file, signed apart: that one is tried on its own, once.
"""

from __future__ import annotations

import asyncio
import functools
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tune_archiver.errors import ArchiverError, ExpiredUrl
from tune_archiver.models import Blob
from tune_archiver.urls import download_key

# Downloads remembered once done, for tunes of the run that ask for the same URL (the
# images many tunes share): the least recently asked for is forgotten past this many,
# so a run of 20,000 tunes does not keep 20,000 finished tasks.
DONE_KEPT = 1024


@dataclass(frozen=True)
class Shared:
    """One download of the run, and the URL it was started with."""

    url: str
    future: asyncio.Future[Blob]


class SharedDownloads:
    """The run's downloads by download_key: in flight, and the last DONE_KEPT finished."""

    def __init__(self) -> None:
        self._running: dict[tuple[str, int], Shared] = {}
        self._done: OrderedDict[tuple[str, int], Shared] = OrderedDict()

    async def blob(
        self, url: str, download: Callable[[], Awaitable[Blob]], min_size: int = 1
    ) -> Blob:
        """The blob of the URL's file: the shared download's, else `download()`'s.

        Shared only by askers of one `min_size` (the least bytes the file may be): a
        download judged by another's (a checkpoint's, for a photo of the same URL, as
        Astria's mock tunes list) would fail or pass a file by a rule not its own."""
        key = (download_key(url), min_size)
        shared = self._done.get(key) or self._running.get(key)
        if shared is None:
            return await self._start(key, url, download).future
        if key in self._done:
            self._done.move_to_end(key)
        try:
            return await shared.future
        except ArchiverError as exc:
            # Another tune's URL of this file was refused as expired and not renewed:
            # ours is signed apart and may be good, so it is tried on its own (once:
            # ours is the one started now, or joined if another asker started it).
            if shared.url == url or not _refused_as_expired(exc):
                raise
        if self._done.get(key) is shared:
            del self._done[key]
        again = self._running.get(key) or self._start(key, url, download)
        return await again.future

    def _start(
        self, key: tuple[str, int], url: str, download: Callable[[], Awaitable[Blob]]
    ) -> Shared:
        """The download of `url`, begun and shared with whoever asks for its key."""
        shared = Shared(url, asyncio.ensure_future(download()))
        self._running[key] = shared
        shared.future.add_done_callback(functools.partial(self._finished, key, shared))
        return shared

    def _finished(self, key: tuple[str, int], shared: Shared, _: asyncio.Future[Blob]) -> None:
        """Remember a finished download (its blob, or how it failed), a bounded few."""
        del self._running[key]
        self._done[key] = shared
        if len(self._done) > DONE_KEPT:
            self._done.popitem(last=False)


def _refused_as_expired(exc: BaseException) -> bool:
    """True when a download failed for its URL: refused as expired, and not renewed (an
    error met while renewing has the refusal as its context)."""
    return isinstance(exc, ExpiredUrl) or isinstance(exc.__context__, ExpiredUrl)
