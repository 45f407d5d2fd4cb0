"""What runs leave behind in a bucket: temporary keys, unfinished multipart uploads to
the store's own keys and the copy at a wrong place a killed put-back left of a blob whole
at its place (gc removes them after a day), and blobs verify --repair sets aside (kept)."""

from __future__ import annotations

import hashlib
from datetime import datetime

from tune_archiver.layout import DAMAGED_BLOBS, OBJECTS, TMP, blob_key, is_sha256
from tune_archiver.store.s3.bucket import Bucket, utc
from tune_archiver.store.s3.errors import Absent
from tune_archiver.store.s3.transfer import stream


async def stale(bucket: Bucket, older_than: datetime, remove: bool,
                found: list[tuple[str, int]] | None = None) -> list[tuple[str, int]]:
    """(description, bytes) of each temporary object, and unfinished multipart upload to
    a key of the store's, started before `older_than`; with `remove`, each is removed
    (deleted, or aborted) as it is listed, and added to `found` once removed (what a
    sweep failing part way removed is known). tmp/damaged/ is never touched."""
    found = [] if found is None else found
    async for key, item in bucket.list(TMP):
        if item["LastModified"] < older_than and not key.startswith(f"{DAMAGED_BLOBS}/"):
            if remove:
                await bucket.delete(bucket.key(key))
            found.append((f"s3://{bucket.name}/{bucket.key(key)}", item["Size"]))
    for key, upload_id in await _old_uploads(bucket, older_than):
        size = await _uploaded(bucket, key, upload_id)
        if remove:
            await bucket.abort(key, upload_id)
        found.append((f"unfinished multipart upload to s3://{bucket.name}/{key}", size))
    async for key, item in bucket.list(OBJECTS):
        name = key.rsplit("/", 1)[-1]
        if is_sha256(name) and key != blob_key(name) and item["LastModified"] < older_than \
                and await _whole_at_its_place(bucket, name, item["Size"]):
            if remove:
                await bucket.delete(bucket.key(key))
            found.append((f"s3://{bucket.name}/{bucket.key(key)}", item["Size"]))
    return found


async def _whole_at_its_place(bucket: Bucket, sha256: str, size: int) -> bool:
    """Whether the blob's place holds its bytes, `size` of them: a copy of it at a wrong
    place is then one a put-back killed before its delete left (a bucket has no rename),
    no copy of anything else, kept for good else (verify says nothing of it, and gc
    took the blob once its tune was forgotten: the photo stayed). One at its place of
    another size, or not whole, may be the damaged one: the copy is kept."""
    if await bucket.size_at(bucket.key(blob_key(sha256)), "look up a blob") != size:
        return False
    digest = hashlib.sha256()
    try:
        await stream(bucket, sha256, "read a blob", digest.update, lambda n: None,
                     expected=size)
    except Absent:
        return False
    return digest.hexdigest() == sha256


async def _old_uploads(bucket: Bucket, older_than: datetime) -> list[tuple[str, str]]:
    """(key, upload id) of the multipart uploads to the store's own keys (tmp/, blobs)
    started before then. Another tool's upload under the prefix (or, for an archive at
    the bucket's root, anywhere in the bucket), or a nested archive's, is not ours."""
    ours = (bucket.key(f"{TMP}/"), bucket.key(f"{OBJECTS}/"))
    uploads = []
    with bucket.translated("list unfinished uploads"):
        for prefix in ours:
            pages = bucket.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=bucket.name, Prefix=prefix
            )
            async for page in pages:
                for upload in page.get("Uploads", []):
                    if utc(upload["Initiated"]) < older_than:
                        uploads.append((upload["Key"], upload["UploadId"]))
    return uploads


async def _uploaded(bucket: Bucket, key: str, upload_id: str) -> int:
    """Bytes already sent to an unfinished multipart upload."""
    try:
        with bucket.translated("list the parts of an upload"):
            pages = bucket.client.get_paginator("list_parts").paginate(
                Bucket=bucket.name, Key=key, UploadId=upload_id
            )
            return sum([part["Size"] async for page in pages for part in page.get("Parts", [])])
    except Absent:
        return 0  # finished or aborted since it was listed
