"""Live uploads: whole parts of a download go to S3 while it still downloads."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

from botocore.exceptions import ConnectionClosedError

from tests.s3server import (  # noqa: F401  (fixtures)
    Bucket,
    aio_session_fixture,
    aws_env_fixture,
    bucket_fixture,
    moto_s3_fixture,
)
from tests.test_s3store import PREFIX, count_requests, downloaded, left_over, opened
from tune_archiver.download.staging import Incoming
from tune_archiver.layout import blob_key
from tune_archiver.store.s3.intake import S3Intake
from tune_archiver.store.s3.store import MIN_PART, S3Store

PART = MIN_PART


async def parts_open(bucket: Bucket) -> list[int]:
    """The number of parts of each multipart upload open in the bucket."""
    counts = []
    for upload in (await bucket.client.list_multipart_uploads(Bucket=bucket.name)).get(
        "Uploads", []
    ):
        answer = await bucket.client.list_parts(
            Bucket=bucket.name, Key=upload["Key"], UploadId=upload["UploadId"]
        )
        counts.append(len(answer.get("Parts", [])))
    return counts


async def started(store: S3Store, tmp_path: Path) -> Incoming:
    """A download of URL just begun in tmp_path/staging, its intake following it."""
    return await downloaded(store, tmp_path, b"")


async def settled(incoming: Incoming) -> None:
    """Wait until the live upload has sent every whole part on disk."""
    intake = incoming.intake
    assert isinstance(intake, S3Intake)
    await intake.live.idle()


async def test_whole_parts_are_sent_before_the_commit(bucket: Bucket, tmp_path: Path) -> None:
    """Two whole parts on disk are in the bucket before the commit, which sends only the last."""
    data = os.urandom(2 * PART + 4321)
    async with opened(bucket, tmp_path) as store:
        incoming = await started(store, tmp_path)
        partial = incoming.partial
        await asyncio.to_thread(partial.append, [data[: 2 * PART]])
        await settled(incoming)
        assert await parts_open(bucket) == [2]
        requests = count_requests(store)
        await asyncio.to_thread(partial.append, [data[2 * PART :]])
        blob = await incoming.commit(None)
        assert requests["UploadPart"] == 1
    assert blob.sha256 == hashlib.sha256(data).hexdigest()
    assert await bucket.get(f"{PREFIX}/{blob_key(blob.sha256)}") == data
    assert await left_over(bucket) == ([], [])


async def test_a_download_that_starts_over_starts_the_upload_over(
    bucket: Bucket, tmp_path: Path
) -> None:
    """After the partial is reset, the parts already sent are dropped: the blob is the new bytes."""
    old, new = os.urandom(2 * PART), os.urandom(2 * PART + 99)
    async with opened(bucket, tmp_path) as store:
        incoming = await started(store, tmp_path)
        partial = incoming.partial
        await asyncio.to_thread(partial.append, [old])
        await settled(incoming)
        await asyncio.to_thread(partial.reset)
        await asyncio.to_thread(partial.append, [new])
        blob = await incoming.commit(None)
    assert await bucket.get(f"{PREFIX}/{blob_key(blob.sha256)}") == new
    assert await left_over(bucket) == ([], [])


async def test_a_released_partial_leaves_no_upload_open(bucket: Bucket, tmp_path: Path) -> None:
    """A download that fails gives its partial back: the live upload is aborted, the file kept."""
    async with opened(bucket, tmp_path) as store:
        incoming = await started(store, tmp_path)
        partial = incoming.partial
        await asyncio.to_thread(partial.append, [os.urandom(PART)])
        partial.describe('"etag"', 3 * PART)
        await settled(incoming)
        assert await parts_open(bucket) == [1]
        await incoming.release(keep=True)
        assert partial.path.exists()
    assert await left_over(bucket) == ([], [])
    assert await bucket.keys() == []


async def test_a_live_upload_that_fails_leaves_the_commit_to_send_it_whole(
    bucket: Bucket, tmp_path: Path
) -> None:
    """A part the background cannot send only costs its head start: the commit uploads all."""
    data = os.urandom(2 * PART + 7)
    failures = []

    def fail_once(request: Any, **_: Any) -> None:
        if not failures:
            failures.append(request.url)
            raise ConnectionClosedError(endpoint_url=request.url)

    async with opened(bucket, tmp_path) as store:
        store.bucket.client.meta.events.register("before-send.s3.UploadPart", fail_once)
        incoming = await started(store, tmp_path)
        partial = incoming.partial
        await asyncio.to_thread(partial.append, [data[:PART]])
        await settled(incoming)
        assert isinstance(incoming.intake, S3Intake)
        assert incoming.intake.live.failed
        await asyncio.to_thread(partial.append, [data[PART:]])
        blob = await incoming.commit(None)
    assert failures
    assert await bucket.get(f"{PREFIX}/{blob_key(blob.sha256)}") == data
    assert await left_over(bucket) == ([], [])


async def test_a_store_closed_with_a_partial_still_open_aborts_its_upload(
    bucket: Bucket, tmp_path: Path
) -> None:
    """Leaving the store's block cleans up uploads of partials never committed nor released."""
    async with opened(bucket, tmp_path) as store:
        incoming = await started(store, tmp_path)
        partial = incoming.partial
        await asyncio.to_thread(partial.append, [os.urandom(PART)])
        await settled(incoming)
        assert await parts_open(bucket) == [1]
    partial.close(keep=False)
    assert await left_over(bucket) == ([], [])
