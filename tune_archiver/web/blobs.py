"""A blob as an HTTP response: its type from its first bytes, and Range honoured.

A local archive's blob is read from the descriptor opened without following a link; a
bucket's blob is streamed from get_object with the asked range. A whole blob is never
sent complete unless its bytes hash to its name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import sys
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Protocol, runtime_checkable

from aiohttp import web

from tune_archiver.errors import ArchiverError, IntegrityError, StorageError
from tune_archiver.filetypes import content_type_of
from tune_archiver.layout import OBJECTS, blob_key
from tune_archiver.safefs import NOFOLLOW, refuse_links
from tune_archiver.store import Store
from tune_archiver.store.local import LocalStore
from tune_archiver.threads import in_thread

HEAD_BYTES = 64
CHUNK = 1 << 20
CACHED = "private, max-age=31536000, immutable"  # a blob's name is its content's hash
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
log = logging.getLogger("tune_archiver.serve")
EMPTY = hashlib.sha256(b"").hexdigest()
MISMATCH = "its bytes do not match its sha256 (run verify)"


@runtime_checkable
class RangeReader(Protocol):
    """A store that streams part of a blob (the S3 store)."""

    def read_blob(self, sha256: str, start: int, end: int) -> AsyncIterator[bytes]: ...


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end) inclusive of one `bytes=` range; None for the whole blob (no header, or
    several ranges). Raises web.HTTPRequestRangeNotSatisfiable when it is past the end."""
    match = _RANGE.fullmatch((header or "").strip())
    if match is None or match.group(0) == "bytes=-":
        return None
    first, last = match.groups()
    if first:
        start, end = _number(first), min(_number(last), size - 1) if last else size - 1
    else:
        start, end = max(0, size - _number(last)), size - 1
    if start > end or start >= size:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    return start, end


def _number(digits: str) -> int:
    """The number the digits say; one longer than any size (int() refuses over 4,300
    digits, a 500 for any client's one header) is past every blob's end."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 19 else sys.maxsize


async def blob_response(store: Store, sha256: str, request: web.Request) -> web.StreamResponse:
    """The blob, whole or the asked range; 404 when the archive does not hold it."""
    if isinstance(store, LocalStore):
        return await _file_response(store, sha256, request)
    if not isinstance(store, RangeReader):
        raise web.HTTPNotImplemented(text="this store cannot stream a blob")
    size = await store.blob_size(sha256)
    if size is None:
        raise web.HTTPNotFound(text="no such blob in the archive")
    # No further than its end: a bucket answers a range past it with the bytes it holds,
    # which read_blob takes for an object cut short.
    end = min(HEAD_BYTES, size) - 1
    try:
        head = (b"".join([piece async for piece in store.read_blob(sha256, 0, end)])
                if size else b"")
    except ArchiverError:
        # Removed since it was found (gc, verify --repair): a bucket that answers a
        # missing key 403 had it said 'access denied'. Looked up again, as fetch does.
        if await store.blob_size(sha256) is None:
            raise web.HTTPNotFound(text="no such blob in the archive") from None
        raise
    return await _send(request, sha256, size, head, partial(store.read_blob, sha256))


async def _file_response(store: LocalStore, sha256: str, request: web.Request
                         ) -> web.StreamResponse:
    """A local blob, read from the one descriptor opened without following a link. Not
    aiohttp's FileResponse: given the path, it opens it again (a link swapped in
    meanwhile is followed), and sends a <sha256>.gz or .br beside it in its place to a
    client that accepts gzip or br, as every browser does: bytes verify never reads."""
    # blob_size would only call the blob missing (404) through a link at objects/ or
    # objects/sha256: refused first, the answer says why (verify and gc refuse it too).
    await in_thread(refuse_links, [store.path(OBJECTS).parent, store.path(OBJECTS)],
                    "the archive's folder")
    if await store.blob_size(sha256) is None:
        raise web.HTTPNotFound(text="no such blob in the archive")
    path = str(store.path(blob_key(sha256)))
    fd = await in_thread(_open, path)
    try:
        head = await in_thread(_read, fd, 0, HEAD_BYTES, path)

        async def pieces(start: int, end: int) -> AsyncIterator[bytes]:
            while start <= end:
                piece = await in_thread(_read, fd, start, min(CHUNK, end - start + 1), path)
                if not piece:
                    raise StorageError(f"{path} was cut short while it was sent")
                yield piece
                start += len(piece)

        return await _send(request, sha256, os.fstat(fd).st_size, head, pieces)
    finally:
        os.close(fd)


async def _send(
    request: web.Request, sha256: str, size: int, head: bytes,
    read: Callable[[int, int], AsyncIterator[bytes]],
) -> web.StreamResponse:
    """The blob of `size` bytes whose first are `head`: whole, or the asked range of what
    `read(start, end)` (inclusive) yields; headers alone for HEAD.

    A whole blob is hashed as it is sent, and its last piece held back until the hash
    is known: a blob rotted on the disk (or changed in the bucket) is never sent
    complete. The connection is cut instead, so the client sees a download that
    failed rather than other bytes under the blob's name. A range that covers the
    whole blob (a video player asks bytes=0-) is the whole blob; a smaller one is
    sent unhashed: checking it would mean reading the whole blob for each one."""
    # The sha256 names the bytes, as a strong ETag does: without one (or a Last-Modified)
    # a browser restarts an interrupted download from its first byte instead of resuming
    # it with a Range. A Range sent If-Range another validator is for other bytes: the
    # whole blob is the answer (RFC 9110 13.1.5).
    etag = f'"{sha256}"'
    if_range = request.headers.get("If-Range")
    ranged = size > 0 and (if_range is None or if_range.strip() == etag)
    span = byte_range(request.headers.get("Range"), size) if ranged else None
    start, end = span or (0, size - 1)
    if not size and sha256 != EMPTY:  # emptied by a crash: no body to cut, refused here
        log.error("serve: blob %s: %s", sha256[:12], MISMATCH)
        raise web.HTTPInternalServerError(text=f"the blob: {MISMATCH}")
    response = web.StreamResponse(status=206 if span else 200, headers={
        "Content-Type": content_type_of(None, head), "Cache-Control": CACHED,
        "Accept-Ranges": "bytes", "ETag": etag})
    response.content_length = end - start + 1 if size else 0
    if span:
        response.headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    # A browser resumes a download serve cut (a rotted blob's) with the rest of it to its
    # end, If-Range its ETag: sent unhashed, it completed the file with other bytes. The
    # bytes before it are hashed with it, unsent (a video player's range has no If-Range).
    before = 0 if span is None or end < size - 1 or if_range is None else start
    await response.prepare(request)
    if size and request.method != "HEAD":
        try:
            await _stream(response, read(start, end),
                          sha256 if (start - before, end) == (0, size - 1) else None,
                          read(0, before - 1) if before else None)
        except ArchiverError as exc:
            # Past the headers no 500 can be said (aiohttp would write its status line
            # into the body): the line goes to the log, and the cut connection tells
            # the client its download failed.
            log.error("serve: blob %s: %s; the connection was cut", sha256[:12], exc)
            if request.transport is not None:
                request.transport.close()
            return response
    await response.write_eof()
    return response


async def _stream(response: web.StreamResponse, pieces: AsyncIterator[bytes],
                  sha256: str | None, unsent: AsyncIterator[bytes] | None = None) -> None:
    """Send the pieces; given the sha256, hash them (after the `unsent` ones before them)
    and hold the last one back until it is known that they are the blob's
    (IntegrityError when not)."""
    if sha256 is None:
        async for piece in pieces:
            await response.write(piece)
        return
    hashed, held = hashlib.sha256(), b""
    if unsent is not None:
        async for piece in unsent:
            hashed.update(piece)
    async for piece in pieces:
        if held:
            await response.write(held)
        hashed.update(piece)
        held = piece
    if hashed.hexdigest() != sha256:
        raise IntegrityError(MISMATCH)
    await response.write(held)


def _open(path: str) -> int:
    """The blob's descriptor; refused (404) when it is a link, a FIFO or anything but a
    regular file, as export refuses to read through one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | NOFOLLOW)
    except OSError as exc:
        raise web.HTTPNotFound(text="the blob is not a regular file") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise web.HTTPNotFound(text="the blob is not a regular file")
    return fd


def _read(fd: int, offset: int, count: int, path: str) -> bytes:
    """Up to `count` bytes of the blob from `offset`; StorageError when the disk fails."""
    try:
        return os.pread(fd, count, offset)
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc
