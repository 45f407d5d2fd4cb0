"""A blob's bytes, or a range of them, streamed from the bucket (for `serve`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from tune_archiver.errors import StorageError
from tune_archiver.layout import blob_key
from tune_archiver.net.transport import parse_content_range
from tune_archiver.store.s3.bucket import Bucket

CHUNK = 1 << 20


async def read_range(bucket: Bucket, sha256: str, start: int, end: int) -> AsyncIterator[bytes]:
    """Bytes `start` to `end` (inclusive) of the blob, as the bucket sends them.

    A store (or a proxy before it) that ignores Range answers with the whole object:
    the bytes before `start` are skipped then, and those past `end` never read.
    Raises StorageError (translated) when the object cannot be read, or the bucket
    sends another range or fewer bytes."""
    doing = "read a blob"
    with bucket.translated(doing):
        response = await bucket.client.get_object(
            Bucket=bucket.name, Key=bucket.key(blob_key(sha256)), Range=f"bytes={start}-{end}"
        )
        async with response["Body"] as body:
            sent = response.get("ContentRange")
            found = parse_content_range(sent) if sent else None
            first = found[0] if found else 0  # no Content-Range: the whole object
            if (sent and not found) or first > start:
                raise StorageError(f"cannot {doing} in {bucket}: asked for bytes {start}-"
                                   f"{end} of {sha256}, it sent {sent}")
            skip, left = start - first, end - start + 1
            async for piece in body.iter_chunks(CHUNK):
                if skip:
                    cut = min(skip, len(piece))
                    piece, skip = piece[cut:], skip - cut
                piece = piece[:left]
                if piece:
                    left -= len(piece)
                    yield piece
                if not left:
                    return
    raise StorageError(f"cannot {doing} in {bucket}: {sha256} ended {left} bytes short "
                       "of the range asked for")
