"""Parts of a download sent to S3 while it is still downloading.

A LiveUpload watches a growing file's hashed prefix (the bytes on disk from the first,
hashed): each time a whole part is there, the part is read back (from the page
cache, as a rule) and sent to a multipart upload at a temporary key. Up to
PARTS_IN_FLIGHT parts go up at once, each read only when it may start, so at most that
many parts' bytes are held. The commit then sends only what is left and completes the
upload. If the download starts over, the upload does too; if anything fails, or it
cannot keep up with the download (KEEPS_UP), the upload is aborted and the commit sends
the whole file itself (transfer.upload, straight to its blob key when it is larger than
a part), so this is only ever a head start.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import uuid
from typing import TYPE_CHECKING, Any

from tune_archiver.digest import Hasher, new_hash
from tune_archiver.errors import ArchiverError
from tune_archiver.layout import TMP
from tune_archiver.store.s3.parts import composite, read_part, send_part
from tune_archiver.store.s3.transfer import PARTS_IN_FLIGHT, start_upload
from tune_archiver.threads import in_thread

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

    from tune_archiver.store import Growing
    from tune_archiver.store.s3.bucket import Bucket

log = logging.getLogger(__name__)

# A live upload at a temporary key costs a server-side copy of the whole blob at the
# end; sending the blob to its own key instead costs sending again what the live
# upload already has. So the live upload goes on only while the store has taken at
# least this share of the bytes on disk: a copy seldom runs much faster than an upload
# (on moto, about as fast), and parts sent by one that cannot keep up are thrown away.
KEEPS_UP = 0.5
JUDGED_FROM = 16  # parts on disk before it is judged (the first answers take a while)


class LiveUpload:
    """A multipart upload that follows one download as it grows."""

    def __init__(self, bucket: Bucket, file: Growing, in_flight: int = PARTS_IN_FLIGHT) -> None:
        self._bucket = bucket
        self._file = file
        self._in_flight = in_flight
        self.key = bucket.key(f"{TMP}/upload-live-{uuid.uuid4().hex}")
        self.upload_id: str | None = None
        self.parts: list[CompletedPartTypeDef] = []  # sent, in the order they were answered
        self.sent = 0  # bytes of the file read and handed to a part upload, in whole parts
        self.whole: Hasher = new_hash()  # of the bytes sent, to check against the blob's name
        self.failed = False  # or gave up: the commit sends the file itself
        self._sending: set[asyncio.Task[CompletedPartTypeDef]] = set()
        self._loop = asyncio.get_running_loop()
        self._more = asyncio.Event()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._draining = False

    def start(self) -> None:
        """Follow the file from now on (it may already hold bytes from an earlier run)."""
        self._file.on_hashed = self._notify
        self._more.set()
        self._task = asyncio.create_task(self._follow())

    async def idle(self) -> None:
        """Wait until every whole part on disk so far is sent (or the upload gave up)."""
        await self._idle.wait()

    async def stop(self, drain: bool = False) -> None:
        """Stop following: the commit (or an abort) takes over.

        With `drain` (a commit), the whole parts on disk are sent first rather than cut
        off mid-request, which would only send them again.
        """
        self._file.on_hashed = None
        task = self._task
        if task is None:
            return
        if drain and not task.done():
            self._draining = True
            self._more.set()
            try:
                await asyncio.shield(task)
                return
            except asyncio.CancelledError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def send_rest(self, size: int) -> bool:
        """Send what the background has not (the last part may be short) of the file of
        `size` bytes; False when this upload cannot be finished and it must be sent whole."""
        if self.failed or self.upload_id is None:
            return False
        try:
            try:
                await self._send_ready(final=True)
                await self._wait(everything=True)
            finally:
                await self._cancel_sending()
        except ArchiverError as exc:
            log.info("live upload of %s failed, sending it whole: %s", self.key, exc)
            return False
        return self.sent == size

    @property
    def done(self) -> int:
        """Bytes of the file the store has taken (answered parts)."""
        size = self._bucket.part_size
        return sum(min(size, self._file.hashed - (part["PartNumber"] - 1) * size)
                   for part in self.parts)

    def behind(self, size: int | None = None) -> bool:
        """True when the store has taken less than KEEPS_UP of the `size` bytes (of the
        bytes received so far, by default: a split download runs ahead of its hashed
        prefix, which alone would hide how far behind the upload is): the commit had
        better send the file to its own key."""
        if size is None:
            size = self._file.size
            if size < JUDGED_FROM * self._bucket.part_size:
                return False
        return self.done < size * KEEPS_UP

    def checksum(self) -> str:
        """The composite SHA-256 S3 reports for the completed upload."""
        return composite(self.parts)

    def _notify(self) -> None:  # called from a writer thread
        self._loop.call_soon_threadsafe(self._more.set)

    async def _follow(self) -> None:
        try:
            while True:
                self._more.clear()  # before looking at the file: no growth goes unseen
                if self.behind():
                    log.info("live upload of %s cannot keep up with the download; the "
                             "commit will send it to its blob key", self.key)
                    await self._give_up()
                    return
                await self._send_ready(final=False)
                if not self._sending:
                    self._idle.set()
                    if self._draining:
                        return
                    await self._more.wait()
                    self._idle.clear()
                else:  # until a part is answered or the file grows
                    await self._wait(everything=False)
        except ArchiverError as exc:
            log.info("live upload of %s failed, the commit will send it whole: %s",
                     self.key, exc)
            self.failed = True
            self._idle.set()
        finally:
            await self._cancel_sending()

    async def _send_ready(self, final: bool) -> None:
        """Start sending each whole part now on disk (waiting for a free slot before
        reading each); with `final`, the short last one too."""
        size = self._bucket.part_size
        while True:
            ready = self._file.hashed
            if ready < self.sent:  # the download started over: so does the upload
                await self._cancel_sending()
                await self.abort()
                self.upload_id, self.parts, self.sent, self.whole = None, [], 0, new_hash()
            length = min(size, ready - self.sent)
            if length <= 0 or (length < size and not final):
                return
            while len(self._sending) >= self._in_flight:
                await self._wait(everything=False, more=False)
            await self._start_part(self.sent, length)

    async def _start_part(self, offset: int, length: int) -> None:
        bucket = self._bucket
        with bucket.translated("upload a blob", self._file.path.parent):
            if self.upload_id is None:
                self.upload_id = await start_upload(bucket, self.key, None, checksum=True)
            fd = os.open(self._file.path, os.O_RDONLY)
            try:
                # Parts are read one after another, so `whole` sees the bytes in order.
                body, checksum = await in_thread(read_part, fd, offset, length, self.whole)
            finally:
                os.close(fd)
        number = offset // bucket.part_size + 1
        self._sending.add(asyncio.create_task(self._send(number, body, checksum)))
        self.sent = offset + length

    async def _send(self, number: int, body: io.BytesIO, checksum: str) -> CompletedPartTypeDef:
        bucket = self._bucket
        with bucket.translated("upload a blob", self._file.path.parent):
            return await send_part(bucket, self.key, self.upload_id or "", number, body,
                                   checksum)

    async def _wait(self, everything: bool, more: bool = True) -> None:
        """Wait for one part to be answered (or, with `more`, for the file to grow), or with
        `everything` for all of them; raises the first failure."""
        while self._sending:
            waiting: set[asyncio.Future[Any]] = set(self._sending)
            grown = asyncio.ensure_future(self._more.wait()) if more and not everything else None
            if grown is not None:
                waiting.add(grown)
            try:
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if grown is not None:
                    grown.cancel()
            for task in done & self._sending:
                self._sending.discard(task)
                self.parts.append(task.result())
            if not everything:
                return

    async def _give_up(self) -> None:
        """Stop for good: the parts in flight are cancelled, the upload aborted."""
        self.failed = True
        try:
            await self._cancel_sending()
            await self.abort()
        finally:
            self._idle.set()

    async def _cancel_sending(self) -> None:
        """Cancel the part uploads under way and wait until they are gone."""
        for task in self._sending:
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)
        self._sending.clear()

    async def abort(self) -> None:
        """Abort the multipart upload, if one was started."""
        if self.upload_id is not None:
            await self._bucket.abort(self.key, self.upload_id)
            self.upload_id = None
