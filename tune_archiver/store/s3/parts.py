"""One part of a staged file on its way to a multipart upload: read into a buffer of
its own, hashed (its SHA-256, which S3 checks it against, and the whole file's running
hash), and sent. Shared by the commit's upload (transfer.py) and the live one (live.py).

A part is read into an io.BytesIO that owns its buffer: botocore would wrap plain
bytes in a BytesIO sharing them, and aiohttp's getbuffer() on that copies the whole
part, so each part in flight would cost twice its size.

Those buffers must go back to the system once their part is answered: glibc raises its
mmap threshold each time a large block is freed, so from the second part on they come
from the heap, which keeps what they used (about 200 MiB of peak RSS for a 1 GiB
fetch where 125 do). keep_big_blocks_apart() pins the threshold, and
give_back_free_memory() returns what a download freed before a large upload begins.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import io
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from tune_archiver.digest import Hasher
from tune_archiver.errors import StorageError

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef, PartTypeDef

    from tune_archiver.store.s3.bucket import Bucket


M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h
MMAP_THRESHOLD = 2**20  # blocks from this size on are mapped on their own


def keep_big_blocks_apart() -> None:
    """Have malloc map each block of MMAP_THRESHOLD bytes or more on its own (and unmap
    it when freed), for the whole process; nothing happens without glibc's mallopt."""
    mallopt = _glibc("mallopt")
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def give_back_free_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim), before a
    large upload makes its part buffers: what the download freed would otherwise stay
    in the process (about 10 MiB of W6's peak RSS); nothing happens without glibc."""
    malloc_trim = _glibc("malloc_trim")
    if malloc_trim is not None:
        malloc_trim(0)


def _glibc(name: str) -> Callable[..., int] | None:
    """The C library's function `name`, or None where it has none (not glibc)."""
    try:
        function: Callable[..., int] = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    return function


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def read_part(fd: int, offset: int, length: int, whole: Hasher | None) -> tuple[io.BytesIO, str]:
    """Exactly `length` bytes at `offset`, and their base64 SHA-256; also fed to `whole`.

    Blocking: run it in a worker thread (hashlib lets go of the GIL meanwhile).
    """
    body = io.BytesIO()
    if length:
        body.seek(length - 1)
        body.write(b"\0")  # sizes the buffer once; the bytes are read straight into it
        body.seek(0)
    with body.getbuffer() as view:
        got = 0
        while got < length:
            count = os.preadv(fd, [view[got:]], offset + got)
            if not count:
                raise StorageError("a finished download is shorter than it was; not stored")
            got += count
        if whole is not None:
            whole.update(view)
        checksum = b64(hashlib.sha256(view).digest())
    return body, checksum


async def send_part(
    bucket: Bucket, key: str, upload_id: str, number: int, body: io.BytesIO, checksum: str
) -> CompletedPartTypeDef:
    """Send a part read by read_part; S3 refuses it unless its bytes have that SHA-256."""
    sent = await bucket.client.upload_part(
        Bucket=bucket.name,
        Key=key,
        UploadId=upload_id,
        PartNumber=number,
        Body=body,
        ChecksumAlgorithm="SHA256",
        ChecksumSHA256=checksum,
    )
    # Its buffer freed now, not when the last reference goes (botocore's and aiohttp's
    # request objects, at times in cycles only the collector frees): else the next
    # part is read beside it, W6's peak RSS about 3 MiB higher. After a failure it is
    # left alone: aiohttp may still be writing a body the host answered early. A view
    # of it still held somewhere (BufferError) keeps it till then, as before.
    with contextlib.suppress(BufferError):
        body.close()
    if sent.get("ChecksumSHA256") != checksum:  # once is enough (a node behind a balancer)
        bucket.keeps_checksums = False
    elif bucket.keeps_checksums is None:
        bucket.keeps_checksums = True
    return {"PartNumber": number, "ETag": sent["ETag"], "ChecksumSHA256": checksum}


async def held_parts(bucket: Bucket, key: str, upload_id: str) -> list[PartTypeDef]:
    """The parts the store holds for an unfinished upload, by part number."""
    held: list[PartTypeDef] = []
    pages = bucket.client.get_paginator("list_parts").paginate(
        Bucket=bucket.name, Key=key, UploadId=upload_id
    )
    async for page in pages:
        held.extend(page.get("Parts", []))
    return sorted(held, key=lambda part: part["PartNumber"])


def part_sizes(size: int, part_size: int) -> list[int]:
    """The sizes of the parts of `size` bytes cut every `part_size`."""
    return [min(part_size, size - offset) for offset in range(0, size, part_size)]


def composite(parts: list[CompletedPartTypeDef]) -> str:
    """The SHA-256 S3 reports for a multipart upload of these parts: of their digests,
    in part order."""
    ordered = sorted(parts, key=lambda part: part["PartNumber"])
    return b64(hashlib.sha256(b"".join(base64.b64decode(part["ChecksumSHA256"])
                                      for part in ordered)).digest())
