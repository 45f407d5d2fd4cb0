"""Bytes into and out of a Bucket, for the S3 store. In: a finished download sent to a
temporary key, checked, then copied to its blob key (part by part above 5 GB), at most
PARTS_IN_FLIGHT parts read at once, each when its upload may start (see parts.py).
Out: a blob streamed to a consumer, a chunk at a time, or saved as a checked file."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tune_archiver.digest import SKIP_HASH, Hasher, new_hash
from tune_archiver.errors import (
    ArchiverError,
    ChangedOnDisk,
    IntegrityError,
    StorageError,
    not_its_size,
    storage_error,
)
from tune_archiver.layout import blob_key
from tune_archiver.models import Blob
from tune_archiver.safefs import place_new
from tune_archiver.store.s3.errors import Absent, Unchecked
from tune_archiver.store.s3.parts import (
    b64,
    composite,
    give_back_free_memory,
    held_parts,
    part_sizes,
    read_part,
    send_part,
)
from tune_archiver.threads import in_thread

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef, CopySourceTypeDef

    from tune_archiver.store.s3.bucket import Bucket

# Parts held in memory at once: one waits on each round trip, two keep a link busy. More
# cost memory and, on two cores, time: W6 (1 GiB into moto on loopback) took 25-28 s at
# 116 MiB with 4, 19-25 s at 110 MiB with 3, and 17-20 s at 100 MiB with 2.
PARTS_IN_FLIGHT = 2
MAX_PARTS = 10_000
COPY_PART = 2**30
COPIES_IN_FLIGHT = 4  # part copies hold no memory here: the server moves the bytes
CLEANUP_SECONDS = 30.0  # how long an abort or delete may hold up a failure or Ctrl-C
DEFAULT_CONTENT_TYPE = "application/octet-stream"
READ_BLOCK = 2**20  # bytes gathered from a response before one thread hop
_T = TypeVar("_T")
log = logging.getLogger(__name__)


async def upload(bucket: Bucket, key: str, path: Path, blob: Blob, straight: bool = False) -> str:
    """Send the bytes of the file at `path` to `key`; returns the checksum S3 should report for it.

    The bytes are re-read from disk and re-hashed: what is sent must be what the
    name promises, even if the file changed after the download hashed it. `straight`
    (to the blob key): completed only on a store that keeps SHA-256s, else Unchecked.
    """
    content_type = blob.content_type or DEFAULT_CONTENT_TYPE
    part_size = max(bucket.part_size, -(-blob.size // MAX_PARTS))
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise storage_error(exc, path.parent, "read a finished download") from exc
    try:
        if blob.size <= part_size:
            whole = new_hash()
            body, checksum = await in_thread(read_part, fd, 0, blob.size, whole)
            _check_digest(whole, blob)
            await bucket.client.put_object(
                Bucket=bucket.name,
                Key=key,
                Body=body,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=checksum,
                ContentType=content_type,
            )
            return checksum
        give_back_free_memory()
        upload_id = await start_upload(bucket, key, content_type, checksum=True)
        try:
            whole = new_hash()
            parts = await _bounded(
                _parts(bucket, key, upload_id, fd, blob.size, part_size, whole), PARTS_IN_FLIGHT
            )
            _check_digest(whole, blob)
            parts.sort(key=lambda part: part["PartNumber"])
            await _check_parts(bucket, key, upload_id, parts, blob, part_size)
            if straight and bucket.keeps_checksums is not True:
                raise Unchecked(f"{bucket} answered the parts of {key} without their SHA-256s")
            await complete(bucket, key, upload_id, parts)
        except BaseException:
            await settle(bucket.abort(key, upload_id), f"abort the upload to {key}")
            raise
        return composite(parts)
    finally:
        os.close(fd)


async def start_upload(
    bucket: Bucket, key: str, content_type: str | None, checksum: bool = False
) -> str:
    """Start a multipart upload at `key` (parts with SHA-256s, with `checksum`); its id.

    Cancelled meanwhile (a stop, Ctrl-C), it still waits for the answer and aborts
    the upload: one started but never known here would stay open until gc found it.
    """
    options: dict[str, Any] = {"ContentType": content_type} if content_type else {}
    if checksum:
        options["ChecksumAlgorithm"] = "SHA256"
    created = asyncio.ensure_future(
        bucket.client.create_multipart_upload(Bucket=bucket.name, Key=key, **options)
    )
    try:
        return (await asyncio.shield(created))["UploadId"]
    except asyncio.CancelledError:
        await settle(_abort_once_started(bucket, key, created), f"abort the upload to {key}")
        raise


async def _abort_once_started(bucket: Bucket, key: str, created: Awaitable[Any]) -> None:
    try:
        upload_id = (await created)["UploadId"]
    except Exception:  # refused or failed: nothing was started
        return
    await bucket.abort(key, upload_id)


async def _check_parts(
    bucket: Bucket, key: str, upload_id: str, parts: list[CompletedPartTypeDef], blob: Blob,
    part_size: int,
) -> None:
    """Before the upload completes (and its key shows anything), the parts the store holds
    must be ours: their number, sizes and, where the store reports them, SHA-256s. This
    is what check_upload looks at afterwards, asked while the key may still be the blob's."""
    held = await held_parts(bucket, key, upload_id)
    sizes = [part.get("Size") for part in held]
    sums = {part["PartNumber"]: part.get("ChecksumSHA256") for part in held}
    if sizes != part_sizes(blob.size, part_size) or any(
        sums.get(part["PartNumber"]) not in (None, part["ChecksumSHA256"]) for part in parts
    ):
        raise IntegrityError(
            f"the parts of blob {blob.sha256} in {bucket} are not those sent; not stored"
        )


async def _parts(
    bucket: Bucket, key: str, upload_id: str, fd: int, size: int, part_size: int, whole: Hasher
) -> AsyncGenerator[Coroutine[Any, Any, CompletedPartTypeDef], None]:
    """The part uploads, each made only when it may start: its bytes are read then."""
    for number, offset in enumerate(range(0, size, part_size), start=1):
        length = min(part_size, size - offset)
        body, checksum = await in_thread(read_part, fd, offset, length, whole)
        yield send_part(bucket, key, upload_id, number, body, checksum)


async def complete(
    bucket: Bucket, key: str, upload_id: str, parts: list[CompletedPartTypeDef]
) -> None:
    """Complete a multipart upload from its parts, in order; a check of the key must follow.

    NoSuchUpload is no failure here: botocore asks again when the answer is lost (a
    read timeout while the store puts many parts together, a 500), and a store that
    completed the upload the first time may say so. check_upload then tells whether
    the key holds these parts, as after any completion.
    """
    try:
        with bucket.translated("complete an upload"):
            await bucket.client.complete_multipart_upload(
                Bucket=bucket.name, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": sorted(parts, key=lambda part: part["PartNumber"])},
            )
    except Absent:
        log.info("the upload to %s was gone when completed again; checking the key", key)


async def check_upload(bucket: Bucket, key: str, blob: Blob, checksum: str) -> bool:
    """The uploaded object must have the blob's size and, where S3 reports one, SHA-256:
    `checksum`, or the blob's own (the whole bytes' SHA-256, which a blob key shows once
    another writer's checked copy of the same blob has landed over this upload).
    False when the store reported none: its bytes are still to be checked."""
    head = await bucket.client.head_object(Bucket=bucket.name, Key=key, ChecksumMode="ENABLED")
    if head["ContentLength"] != blob.size:
        raise IntegrityError(
            f"the upload of blob {blob.sha256} to {bucket} holds {head['ContentLength']} "
            f"bytes, not {blob.size}; not stored"
        )
    reported = head.get("ChecksumSHA256")
    whole = b64(bytes.fromhex(blob.sha256))
    if reported and reported.split("-")[0] not in (checksum, whole):  # "-N" ends a multipart's
        raise IntegrityError(
            f"the upload of blob {blob.sha256} to {bucket} has another SHA-256; not stored"
        )
    return bool(reported)


async def copy(bucket: Bucket, source: str, final: str, blob: Blob, check: bool = True,
               sent: str = "", in_parts: bool = False) -> None:
    """Server-side copy of a checked upload to its blob key; without `check`, of any
    object (a damaged one set aside), whose bytes need not hash to the blob's name.
    `sent`: the upload's SHA-256, checked, which a store that hashes no copy reports.
    Part by part past the copy limit, or `in_parts` whatever its size."""
    copy_source: CopySourceTypeDef = {"Bucket": bucket.name, "Key": source}
    if blob.size <= bucket.copy_limit and not in_parts and not check:
        with bucket.translated("set a damaged blob aside"):
            await bucket.client.copy_object(Bucket=bucket.name, Key=final, CopySource=copy_source)
        return
    if blob.size <= bucket.copy_limit and not in_parts:
        # Asking for SHA256 makes S3 hash the whole copy: one more check, for free.
        result = await bucket.client.copy_object(
            Bucket=bucket.name, Key=final, CopySource=copy_source, ChecksumAlgorithm="SHA256"
        )
        copied = result.get("CopyObjectResult", {}).get("ChecksumSHA256", "").split("-")[0]
        if copied and not SKIP_HASH and copied not in (b64(bytes.fromhex(blob.sha256)), sent):
            await bucket.delete(final)
            raise IntegrityError(f"the copy of blob {blob.sha256} in {bucket} is corrupt")
        return
    step = max(min(COPY_PART, bucket.copy_limit), -(-blob.size // MAX_PARTS))
    upload_id = await start_upload(bucket, final, blob.content_type or DEFAULT_CONTENT_TYPE)
    try:
        parts = await _bounded(
            _part_copies(bucket, source, final, upload_id, blob.size, step), COPIES_IN_FLIGHT
        )
        parts.sort(key=lambda part: part["PartNumber"])
        # Before `final` shows anything (it may be the blob itself, refreshed): a store
        # that ignores CopySourceRange copies the whole source into each part.
        held = [part.get("Size") for part in await held_parts(bucket, final, upload_id)]
        if held != part_sizes(blob.size, step):
            raise IntegrityError(f"the copy of blob {blob.sha256} in {bucket} is not whole: "
                                 "its parts are not the ranges asked for; not stored")
        await complete(bucket, final, upload_id, parts)  # its answer may be lost: checked
        if await bucket.size_at(final, "check a copy") != blob.size:
            raise IntegrityError(f"the copy of blob {blob.sha256} in {bucket} is not whole")
    except BaseException:
        await settle(bucket.abort(final, upload_id), f"abort the copy to {final}")
        raise


async def _part_copies(
    bucket: Bucket, source: str, final: str, upload_id: str, size: int, step: int
) -> AsyncGenerator[Coroutine[Any, Any, CompletedPartTypeDef], None]:
    for number, start in enumerate(range(0, size, step), start=1):
        end = min(start + step, size) - 1
        yield _copy_part(bucket, source, final, upload_id, number, f"bytes={start}-{end}")


async def _copy_part(
    bucket: Bucket, source: str, final: str, upload_id: str, number: int, byte_range: str
) -> CompletedPartTypeDef:
    copied = await bucket.client.upload_part_copy(
        Bucket=bucket.name,
        Key=final,
        UploadId=upload_id,
        PartNumber=number,
        CopySource={"Bucket": bucket.name, "Key": source},
        CopySourceRange=byte_range,
    )
    return {"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]}


def _check_digest(digest: Hasher, blob: Blob) -> None:
    """The bytes re-read for upload must be those the download hashed."""
    if digest.hexdigest() != blob.sha256:
        raise ChangedOnDisk(
            f"a finished download changed on disk before upload (blob {blob.sha256}); not stored"
        )


async def _bounded(jobs: AsyncGenerator[Coroutine[Any, Any, _T], None], limit: int) -> list[_T]:
    """Run the jobs, at most `limit` at once; the next job is asked for only when a slot is
    free, so at most `limit` parts' bytes are in memory. The first failure cancels the rest.
    """
    running: set[asyncio.Task[_T]] = set()
    started: list[asyncio.Task[_T]] = []
    results: list[_T] = []
    try:
        async with contextlib.aclosing(jobs):
            async for job in jobs:
                task = asyncio.ensure_future(job)
                running.add(task)
                started.append(task)
                while len(running) >= limit:
                    done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    results.extend(finished.result() for finished in done)
        while running:
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            results.extend(finished.result() for finished in done)
        return results
    finally:
        for task in running:
            task.cancel()
        # Wait for the cancelled ones and collect every outcome, so none is left unretrieved.
        await asyncio.gather(*started, return_exceptions=True)


async def settle(work: Awaitable[None], what: str) -> None:
    """Run a clean-up to its end even while being cancelled; a failure is only logged.

    Whatever is left (a temp key, an open multipart upload) is found by `gc` later.
    """
    task = asyncio.ensure_future(asyncio.wait_for(work, CLEANUP_SECONDS))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not %s: %s", what, task.exception())
        raise
    except (ArchiverError, TimeoutError) as exc:
        log.warning("could not %s: %s", what, exc)


async def stream(
    bucket: Bucket,
    sha256: str,
    doing: str,
    consume: Callable[[bytes], None],
    advance: Callable[[int], None],
    expected: int | None = None,
    key: str | None = None,
) -> int:
    """Feed the blob's bytes (those of the object at the archive-relative `key`, if
    given) to `consume` (in a worker thread), a chunk at a time; returns how many there
    were. Raises s3errors.Absent when the object is missing, and StorageError, before a
    byte is fed, when it is not of the size `expected`."""
    size = 0
    response = await bucket.get(bucket.key(key or blob_key(sha256)), doing)
    with bucket.translated(doing):
        async with response["Body"] as body:
            if expected is not None and response["ContentLength"] != expected:
                raise not_its_size(sha256, response["ContentLength"], expected)
            pending: list[bytes] = []
            held = 0
            async for piece in body.iter_chunks(READ_BLOCK):
                pending.append(piece)
                held += len(piece)
                if held >= READ_BLOCK:
                    await in_thread(consume, b"".join(pending))
                    advance(held)
                    size, pending, held = size + held, [], 0
            if pending:
                await in_thread(consume, b"".join(pending))
                advance(held)
                size += held
    return size


async def save_as(bucket: Bucket, sha256: str, target: Path, size: int | None = None) -> None:
    """Write the blob's bytes to the local file `target`, which must not exist yet.

    A blob not of `size` bytes (what the manifest records) is refused before its bytes
    are written: one replaced by a far larger object would fill the disk first. The
    bytes are checked against the name before the file appears (by a hard link
    from a temp file, or where there are none a rename over the name once claimed:
    an existing file is never replaced). Raises StorageError
    ("already exists", another size, a failed write, a missing blob) or IntegrityError
    (corrupt).
    """
    try:
        # mkstemp only creates an empty file: quick enough for the event loop.
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise storage_error(exc, target.parent, "export a blob") from exc
    digest = hashlib.sha256()

    def write(data: bytes) -> None:
        digest.update(data)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            raise storage_error(exc, target.parent, "export a blob") from exc

    try:
        try:
            await stream(bucket, sha256, "export a blob", write, lambda n: None, size)
        except Absent as exc:
            raise StorageError(f"the blob {sha256} is missing from {bucket}") from exc
        await in_thread(os.fsync, fd)
        if digest.hexdigest() != sha256:
            raise IntegrityError(f"blob {sha256} in {bucket} is corrupt; {target} not written")
        await in_thread(place_new, name, target)  # a USB stick has no hard links
    except FileExistsError as exc:
        raise StorageError(f"{target} already exists; nothing was overwritten") from exc
    except OSError as exc:
        raise storage_error(exc, target.parent, "export a blob") from exc
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
