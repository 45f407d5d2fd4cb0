"""A blob's bytes, or a range of them, streamed from the bucket (for `serve`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from tune_archiver.layout import blob_key
from tune_archiver.store.s3.bucket import Bucket

CHUNK = 1 << 20


async def read_range(bucket: Bucket, sha256: str, start: int, end: int) -> AsyncIterator[bytes]:
    """Bytes `start` to `end` (inclusive) of the blob, as the bucket sends them.

    Raises StorageError (translated) when the object cannot be read."""
    with bucket.translated("read a blob"):
        response = await bucket.client.get_object(
            Bucket=bucket.name, Key=bucket.key(blob_key(sha256)), Range=f"bytes={start}-{end}"
        )
        async with response["Body"] as body:
            async for piece in body.iter_chunks(CHUNK):
                yield piece
